"""steel_seg.train.loop: the run directory, exact resume, the loss falling, DDP on 2 CPU processes, configs,
extra sources, the recipe's ingredients (losses, optimiser, model selection, averaging, fine-tune, share)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from damage import truncated_jpeg
from safetensors.torch import load_file
from tiny_models import forward_probs

from steel_seg import cli
from steel_seg.competition import CLASSES, TRAIN_IMAGES, Layout
from steel_seg.formats.folds import resolve_folds
from steel_seg.formats.images import read_grey
from steel_seg.formats.labels import Labels
from steel_seg.formats.runs import RunDir, RunInfo
from steel_seg.models import factory
from steel_seg.models.manifest import load_model
from steel_seg.synthetic.dataset import write_dataset
from steel_seg.train.checkpoint import load_state
from steel_seg.train.config import TrainConfig, parse_override
from steel_seg.train.distributed import init_dist
from steel_seg.train.inputs import input_paths
from steel_seg.train.loop import Trainer, summary, train
from steel_seg.train.run_log import RunLog, read_log

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(data_dir: Path, folds_csv: Path, **sections) -> dict:
    """A seconds-long run on 6 synthetic train images (2 batches of 2 crops an epoch), validated on 2."""
    config = {
        "data": {"train_csv": str(data_dir / "train.csv"), "images_dir": str(data_dir / "train_images"),
                 "folds_csv": str(folds_csv), "fold": 0, "crop": [64, 128], "defect_crop_p": 0.8,
                 "batch_size": 2, "val_batch_size": 2, "workers": 0, "batches_per_epoch": 2,
                 "augment": {"affine": 0.3, "mask_dropout": 0.2}},
        "model": {"arch": "FPN", "encoder": "tu-mobilenetv3_small_050", "in_channels": 1,
                  "decoder_channels": [32, 32], "aux_head": True},
        "optim": {"lr": 0.003},
        "schedule": {"epochs": 2, "warmup_steps": 1},
        "train": {"seed": 3, "device": "cpu", "progress": False},
    }  # fmt: skip
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@pytest.fixture(scope="module")
def chosen(synthetic_set, synthetic_labels) -> tuple[list[str], list[str]]:
    """(validation, training) images of the tiny runs: 2 (one with a defect, one without) and 6 more."""
    presence = synthetic_labels.presence()
    ids = synthetic_set.train_ids
    val = [next(i for i in ids if presence.loc[i].any()), next(i for i in ids if not presence.loc[i].any())]
    return val, [i for i in ids if i not in val][:6]


@pytest.fixture(scope="module")
def data_dir(synthetic_set, chosen, tmp_path_factory) -> Path:
    """The 8 chosen images as a train set of their own (train.csv + train_images/): a folds.csv must cover
    its train set."""
    root = tmp_path_factory.mktemp("eight")
    (root / "train_images").mkdir()
    for image_id in chosen[0] + chosen[1]:
        (root / "train_images" / image_id).symlink_to(synthetic_set.out_dir / "train_images" / image_id)
    table = pd.read_csv(synthetic_set.out_dir / "train.csv")
    table[table["ImageId"].isin(chosen[0] + chosen[1])].to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture(scope="module")
def folds_csv(chosen, tmp_path_factory) -> Path:
    """Fold 0 (validation): 2 images, one of them with a defect; folds 1 and 2: 6 more train images."""
    val, train_ids = chosen
    path = tmp_path_factory.mktemp("folds") / "folds.csv"
    rows = [(i, 0) for i in val] + [(i, 1 + n % 2) for n, i in enumerate(train_ids)]
    pd.DataFrame(rows, columns=["ImageId", "fold"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def straight_run(data_dir, folds_csv, tmp_path_factory):
    cfg = TrainConfig.from_dict(tiny_config(data_dir, folds_csv, train={"ema_decay": 0.5}))
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    return cfg, train(cfg, run_dir)


def test_run_directory_layout(straight_run, data_dir):
    cfg, result = straight_run
    run = result.run_dir
    info = json.loads((run / "run.json").read_text())
    assert {"name", "fold", "folds_csv", "train_csv", "images_dir", "model_dir"} <= set(info)
    assert info["model_dir"] == "best" and info["fold"] == 0 and Path(info["images_dir"]).is_dir()
    assert TrainConfig.from_yaml(run / "config.yaml") == cfg
    for name in ("best", "last"):
        model, spec = factory.load(run / name)
        assert spec == cfg.model.spec
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["batch"] == 0 and state["step"] == 4
    records = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert 0.0 <= records[-1]["val_dice"] <= 1.0 and records[-1]["cls_accuracy"] is not None
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    [primary] = info["sources"]
    assert primary["role"] == "primary" and primary["train_csv"] == str((data_dir / "train.csv").resolve())
    assert (primary["train_images"], primary["val_images"], primary["weight"]) == (6, 2, 1.0)
    assert any((run / "tb").iterdir())
    last = load_file(str(run / "last" / "model.safetensors"))
    assert any(not torch.equal(last[k], v) for k, v in state["model"].items() if v.is_floating_point())


def first_epoch_then_killed(cfg: TrainConfig, run: Path) -> Path:
    """A run dir holding epoch 1 of `cfg`, trained as `train` does it, then left as a kill leaves it."""
    run.mkdir()
    trainer = Trainer(cfg, RunDir(run), init_dist("cpu"))
    log = RunLog(RunDir(run))
    trainer.end_epoch(trainer.train_epoch(), 0.0, log)
    log.close()
    return run


def test_resume_after_one_epoch_matches_the_unbroken_run(straight_run, tmp_path):
    """Epoch 1 by hand (as `train` does it), a 'kill', then `train(resume=True)`: identical weights."""
    cfg, straight = straight_run
    run = first_epoch_then_killed(cfg, tmp_path / "resumed")
    resumed = train(cfg, run, resume=True)
    assert resumed.epochs == 2
    for name in ("last/model.safetensors", "best/model.safetensors"):
        a, b = load_file(str(straight.run_dir / name)), load_file(str(run / name))
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resume"
    sa, sb = load_state(straight.run_dir / "checkpoint.pt"), load_state(run / "checkpoint.pt")
    for key, value in sa["optimizer"]["state"].items():
        torch.testing.assert_close(value, sb["optimizer"]["state"][key], rtol=0, atol=0)
    assert [r["epoch"] for r in read_log(run / "log.jsonl")] == [1, 2]


def test_resume_from_a_mid_epoch_checkpoint_matches_the_unbroken_run(straight_run, tmp_path):
    """A checkpoint after the first of two steps of epoch 1 (sampler position 1 batch), then resume."""
    cfg, straight = straight_run
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=1))
    run = tmp_path / "mid"
    run.mkdir()
    Trainer(cfg, RunDir(run), init_dist("cpu")).train_epoch()
    state = load_state(run / "checkpoint.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (0, 1, 1)
    train(cfg, run, resume=True)
    a, b = (load_file(str(d / "last" / "model.safetensors")) for d in (straight.run_dir, run))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after a mid-epoch resume"


def test_random_folds_are_written_for_the_oof_step(synthetic_labels, tmp_path):
    labels = synthetic_labels
    assert len(labels.image_ids) == 27
    folds, path = resolve_folds(None, "random 3", labels.image_ids, 0, RunDir(tmp_path).folds)
    written = pd.read_csv(path)
    assert list(written.columns) == ["ImageId", "fold"] and sorted(written["ImageId"]) == labels.image_ids
    assert sorted(folds.value_counts()) == [9, 9, 9]
    with pytest.raises(ValueError, match="random K"):
        resolve_folds(None, "stratified", labels.image_ids, 0, RunDir(tmp_path).folds)


def test_loss_falls_over_a_short_run(data_dir, folds_csv, tmp_path):
    config = tiny_config(data_dir, folds_csv, schedule={"epochs": 4}, data={"augment": {"affine": 0.0}},
                         loss={"dice_weight": 0.0}, train={"accumulate": 2})  # fmt: skip
    result = train(TrainConfig.from_dict(config), tmp_path / "run")
    losses = [r["train_loss"] for r in result.records]
    assert losses[-1] < 0.8 * losses[0], losses


def test_config_errors_name_the_file_and_key(tmp_path, data_dir, folds_csv):
    config = tiny_config(data_dir, folds_csv, optim={"learning_rate": 1.0})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"bad\.yaml.*optim.*learning_rate"):
        TrainConfig.from_yaml(path)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config(data_dir, folds_csv)))
    cfg = TrainConfig.from_yaml(good, {"optim.lr": 0.1, "data.fold": 1, "data.crop": [32, 64]})
    assert cfg.optim.lr == 0.1 and cfg.data.fold == 1 and cfg.data.crop == (32, 64)


def test_numbers_take_their_keys_type(tmp_path, data_dir, folds_csv):
    """YAML 1.1 reads `2e-4` as text: a float key takes it as a number, in a file and in `--set`."""
    path = tmp_path / "c.yaml"
    text = yaml.safe_dump(tiny_config(data_dir, folds_csv, loss={"pos_weight": ["1e-1", 2, 3, 4]}))
    path.write_text(text.replace("lr: 0.003", "lr: 2e-4") + "\n")
    overrides = dict(parse_override(t) for t in ("model.seg_prior=1e-2", "train.time_limit_min=1.5e1"))
    cfg = TrainConfig.from_yaml(path, overrides)
    assert cfg.optim.lr == 2e-4 and cfg.model.seg_prior == 0.01 and cfg.train.time_limit_min == 15.0
    assert cfg.loss.pos_weight == (0.1, 2.0, 3.0, 4.0) and isinstance(cfg.optim.lr, float)
    assert TrainConfig.from_yaml(path, dict([parse_override("optim.lr=3e-4")])).optim.lr == 3e-4


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.lr", None, "optim.lr must be a number, got null"),
        ("optim.lr", "fast", "optim.lr must be a finite number, got 'fast'"),
        ("optim.lr", float("inf"), "optim.lr must be a finite number, got inf"),
        ("schedule.epochs", 1.5, "schedule.epochs must be an integer, got 1.5"),
        ("model.seg_prior", float("nan"), "model.seg_prior must be a finite number, got nan"),
        ("data.extra_sources", [{"train_csv": "a.csv", "images_dir": "i", "weight": float("inf")}],
         r"data.extra_sources\[0\].weight must be a finite number, got inf"),
        ("data.extra_sources", [{"train_csv": "a.csv", "images_dir": "i", "weight": None}],
         r"data.extra_sources\[0\].weight must be a number, got null"),
    ],
)  # fmt: skip
def test_bad_numbers_are_named_by_key(tmp_path, data_dir, folds_csv, key, value, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(data_dir, folds_csv)))
    with pytest.raises(ValueError, match=f"c\\.yaml: {message}"):
        TrainConfig.from_yaml(path, {key: value})


def test_malformed_yaml_is_one_line_naming_the_file_or_the_key(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  crop: [256, 512\nmodel: {}\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML: line \d+, column \d+: ") as caught:
        TrainConfig.from_yaml(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"--set optim\.lr: '\[1e-3' is not valid YAML \(line 1") as caught:
        parse_override("optim.lr=[1e-3")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_override("optim.lr")


def test_bad_folds_csv_names_the_file(tmp_path, data_dir):
    folds = tmp_path / "folds.csv"
    folds.write_text("ImageId,fold\nnot_an_image.jpg,0\n")
    cfg = TrainConfig.from_dict(tiny_config(data_dir, folds))
    with pytest.raises(ValueError, match=r"folds\.csv: 1 image\(s\) not in the train labels"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse_and_build(path, shipped_encoders):
    cfg = TrainConfig.from_yaml(path)
    model = factory.build_model(cfg.model.spec)
    x = torch.zeros(1, cfg.model.spec.in_channels, 64, 64)
    seg, cls = forward_probs(model.eval(), cfg.model.spec, x)
    assert (seg is not None) == cfg.model.spec.has_seg and (cls is not None) == cfg.model.spec.has_cls


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_with_single_process(straight_run, tmp_path):
    cfg, single = straight_run
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    cli = Path(sys.executable).parent / "steel-seg"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(cli), "train", "--config", str(config_path), "--out", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ddp_model, spec = factory.load(tmp_path / "ddp" / "best")
    single_model, _ = factory.load(single.run_dir / "best")
    a, b = ddp_model.state_dict(), single_model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    x = torch.randn(1, 1, 256, 1600)
    with torch.no_grad():
        for p, q in zip(forward_probs(ddp_model, spec, x), forward_probs(single_model, spec, x),
                        strict=True):  # fmt: skip
            assert p.shape == q.shape and torch.isfinite(p).all()
    records = read_log(tmp_path / "ddp" / "log.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["step"] == 2  # 6 images over 2 ranks: one batch of 2 per rank and epoch


# --- extra sources: the training side of every fold, never the validation side ----------------------------
@pytest.fixture(scope="module")
def extra(tmp_path_factory) -> dict:
    """A synthetic extra source: 6 JPEGs in its folder, of which its original-layout CSV names 4."""
    root = tmp_path_factory.mktemp("extra")
    synth = write_dataset(root, 6, 0, "original", seed=7, progress=False)
    named = synth.train_ids[:4]
    rows = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    rows[rows["ImageId_ClassId"].str.rpartition("_")[0].isin(named)].to_csv(
        root / "selected.csv", index=False
    )
    return {"csv": root / "selected.csv", "images": root / TRAIN_IMAGES, "named": named,
            "unnamed": synth.train_ids[4:]}  # fmt: skip


def with_sources(data_dir: Path, folds_csv: Path, *sources: dict, **sections) -> TrainConfig:
    config = tiny_config(data_dir, folds_csv, **sections)
    config["data"]["extra_sources"] = [{k: str(v) if isinstance(v, Path) else v for k, v in s.items()}
                                       for s in sources]  # fmt: skip
    return TrainConfig.from_dict(config)


def test_extra_images_join_the_training_side_only(data_dir, folds_csv, chosen, extra, tmp_path):
    source = {"train_csv": extra["csv"], "images_dir": extra["images"], "weight": 3.0}
    trainer = Trainer(with_sources(data_dir, folds_csv, source), RunDir(tmp_path), init_dist("cpu"))
    dataset = trainer.data.loader.dataset
    assert sorted(dataset.image_ids) == sorted(chosen[1] + extra["named"])  # never the folder's other images
    assert trainer.data.val_loader.dataset.image_ids == sorted(chosen[0])
    path = dict(zip(dataset.image_ids, dataset.paths, strict=True))
    assert [path[i] for i in extra["named"]] == [extra["images"] / i for i in extra["named"]]
    assert {path[i].parent for i in chosen[1]} == {data_dir / "train_images"}
    grey, masks = dataset.read(dataset.image_ids.index(extra["named"][0]))
    np.testing.assert_array_equal(grey, read_grey(extra["images"] / extra["named"][0]))
    np.testing.assert_array_equal(masks, Labels.from_csv(extra["csv"]).masks(extra["named"][0]))
    weight = dict(zip(dataset.image_ids, trainer.data.sampler.weights, strict=True))
    assert weight[extra["named"][0]] == pytest.approx(3 * weight[chosen[1][0]])
    drawn = {dataset.image_ids[i] for i, _ in trainer.data.sampler}
    assert drawn & set(extra["named"]) and not drawn & set(chosen[0])
    batch = next(iter(trainer.data.loader))
    assert set(batch["index"].tolist()) <= set(range(len(dataset)))


def test_run_json_records_every_source(data_dir, folds_csv, chosen, extra, tmp_path):
    source = {"train_csv": extra["csv"], "images_dir": extra["images"]}
    cfg = with_sources(data_dir, folds_csv, source, schedule={"epochs": 1})
    result = train(cfg, tmp_path / "run")
    assert TrainConfig.from_yaml(result.run_dir / "config.yaml") == cfg  # resumable with its sources
    info = RunInfo.load(result.run_dir)
    assert {role: (f.path, f.sha256) for role, f in info.inputs.items()} == {
        role: (path.resolve(), hashlib.sha256(path.read_bytes()).hexdigest())
        for role, path in [("data.train_csv", data_dir / "train.csv"), ("data.folds_csv", folds_csv),
                           ("data.extra_sources[0].train_csv", extra["csv"])]
    }  # fmt: skip
    assert info.folds_sha256 == hashlib.sha256(folds_csv.read_bytes()).hexdigest()
    primary, added = json.loads((result.run_dir / "run.json").read_text())["sources"]
    assert (primary["role"], primary["train_images"], primary["val_images"]) == ("primary", 6, 2)
    assert added == {"role": "extra", "train_csv": str(extra["csv"].resolve()),
                     "images_dir": str(extra["images"].resolve()), "weight": 1.0,
                     "train_images": 4, "val_images": 0}  # fmt: skip


def test_an_image_in_two_sources_is_an_error_naming_both_files(data_dir, folds_csv, chosen, extra, tmp_path):
    clash = tmp_path / "clash.csv"
    clash.write_text(Layout.ORIGINAL.header + "\n" + "".join(f"{chosen[0][0]}_{c},\n" for c in CLASSES))
    with_primary = with_sources(
        data_dir, folds_csv, {"train_csv": clash, "images_dir": data_dir / "train_images"}
    )
    message = f"{re.escape(str(clash))}: 1 ImageId\\(s\\) also in {re.escape(str(data_dir / 'train.csv'))}"
    with pytest.raises(ValueError, match=message):
        train(with_primary, tmp_path / "run")
    copy = tmp_path / "copy.csv"
    copy.write_bytes(extra["csv"].read_bytes())
    twice = with_sources(data_dir, folds_csv, {"train_csv": extra["csv"], "images_dir": extra["images"]},
                         {"train_csv": copy, "images_dir": extra["images"]})  # fmt: skip
    with pytest.raises(
        ValueError, match=f"{re.escape(str(copy))}: 4 ImageId.*also in {re.escape(str(extra['csv']))}"
    ):
        train(twice, tmp_path / "run")


def test_bad_extra_sources_are_named(data_dir, folds_csv, chosen, extra, tmp_path):
    absent = tmp_path / "absent.csv"
    absent.write_text(Layout.ORIGINAL.header + "\nnot_here.jpg_1,\n")
    cfg = with_sources(data_dir, folds_csv, {"train_csv": absent, "images_dir": extra["images"]})
    with pytest.raises(ValueError, match=r"absent\.csv: 1 image\(s\) not found in .*not_here\.jpg"):
        train(cfg, tmp_path / "run")
    for source, message in [
        ({"train_csv": "a.csv"}, "needs train_csv and images_dir"),
        ({"train_csv": "a.csv", "images_dir": "i", "weight": 0}, "weight 0.0 must be a finite number > 0"),
        ({"train_csv": "a.csv", "images_dir": "i", "wieght": 2}, r"data\.extra_sources\[0\].*wieght"),
    ]:
        with pytest.raises(ValueError, match=message):
            with_sources(data_dir, folds_csv, source)
    config = tiny_config(data_dir, folds_csv, data={"extra_sources": "a.csv"})
    with pytest.raises(ValueError, match="extra_sources must be a list"):
        TrainConfig.from_dict(config)
    empty = tmp_path / "round" / "train.csv"  # a pseudo-label round that selected no image
    empty.parent.mkdir()
    empty.write_text(Layout.ORIGINAL.header + "\n")
    cfg = with_sources(data_dir, folds_csv, {"train_csv": empty, "images_dir": extra["images"]})
    with pytest.raises(ValueError, match=f"{re.escape(str(empty))}: names no image"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a run that could not start leaves no run dir


def test_an_unusable_extra_image_is_named_or_skipped(data_dir, folds_csv, chosen, extra, tmp_path):
    """The pre-flight header check covers the extra sources too, with their own CSV in the message."""
    images = tmp_path / "images"
    shutil.copytree(extra["images"], images)
    victim = extra["named"][1]
    truncated_jpeg(images / victim, extra["images"] / extra["named"][0])
    source = {"train_csv": extra["csv"], "images_dir": images}
    with pytest.raises(ValueError, match=f"1 of 4 train images cannot be used:\n.*{victim}: truncated JPEG"
                                         f".*\\({re.escape(str(extra['csv']))} line \\d+\\)"):  # fmt: skip
        Trainer(with_sources(data_dir, folds_csv, source), RunDir(tmp_path / "a"), init_dist("cpu"))
    skip = with_sources(data_dir, folds_csv, source, data={"skip_bad_images": True})
    trainer = Trainer(skip, RunDir(tmp_path / "b"), init_dist("cpu"))
    assert sorted(trainer.data.loader.dataset.image_ids) == sorted(
        chosen[1] + extra["named"][:1] + extra["named"][2:]
    )
    assert [s["train_images"] for s in trainer.data.sources] == [6, 3]


def test_init_and_encoder_weights_files_are_inputs_too(data_dir, folds_csv, straight_run, tmp_path):
    encoder = tmp_path / "encoder.safetensors"
    encoder.write_bytes(b"weights")
    model = {"init_weights": str(straight_run[1].run_dir / "best"), "encoder_weights_path": str(encoder),
             "mean": 0.4, "std": 0.2}  # fmt: skip
    cfg = TrainConfig.from_dict(tiny_config(data_dir, folds_csv, model=model))
    assert input_paths(cfg, folds_csv) == {
        "data.train_csv": data_dir / "train.csv", "data.folds_csv": folds_csv,
        "model.init_weights": straight_run[1].run_dir / "best" / "model.safetensors",
        "model.encoder_weights_path": encoder,
    }  # fmt: skip


def test_resume_refuses_input_files_that_changed_behind_their_paths(
    data_dir, folds_csv, extra, tmp_path, caplog
):
    """An extra source's train.csv replaced (4 -> 6 images) and the folds regenerated (another validation
    fold) after the run started: `--resume` stops, naming each file and both hashes, and changes nothing;
    with allow_changed_inputs it goes on and records the files as they are now."""
    folds = tmp_path / "folds.csv"
    shutil.copyfile(folds_csv, folds)
    source = tmp_path / "extra.csv"
    shutil.copyfile(extra["csv"], source)
    cfg = with_sources(
        data_dir, folds, {"train_csv": source, "images_dir": extra["images"]}, schedule={"epochs": 1}
    )
    run = train(cfg, tmp_path / "run").run_dir
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    recorded = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in (folds, source)}
    everything = pd.read_csv(extra["images"].parent / "train.csv", dtype=str, keep_default_na=False)
    everything.to_csv(source, index=False)
    table = pd.read_csv(folds)
    table["fold"] = (table["fold"] + 1) % 3
    table.to_csv(folds, index=False)
    with pytest.raises(ValueError) as caught:
        train(cfg, run, resume=True)
    message = str(caught.value)
    for role, path in (("data.folds_csv", folds), ("data.extra_sources[0].train_csv", source)):
        now = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{role} {path}: sha256 {now}, recorded {recorded[path]}" in message
    assert (
        message.startswith(f"{run / 'run.json'}: input files changed") and "--allow-changed-inputs" in message
    )
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    train(cfg, run, resume=True, allow_changed_inputs=True)
    assert "input changed, going on" in caplog.text
    info = RunInfo.load(run)
    assert info.check_inputs() == [] and info.extra["sources"][1]["train_images"] == 6


@pytest.fixture(scope="module")
def one_epoch_sizes(data_dir, folds_csv, tmp_path_factory) -> dict[str, int]:
    """Bytes of a one-epoch run of `tiny_config` on an ordinary disk: all its files, its model, its
    checkpoint."""
    run = train(TrainConfig.from_dict(tiny_config(data_dir, folds_csv, schedule={"epochs": 1})),
                tmp_path_factory.mktemp("probe") / "run").run_dir  # fmt: skip
    total = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    model, checkpoint = (
        (run / "last" / "model.safetensors").stat().st_size,
        (run / "checkpoint.pt").stat().st_size,
    )
    return {"total": total, "model": model, "checkpoint": checkpoint}


@pytest.mark.parametrize("fails", ["last/model.safetensors", "checkpoint.pt"])
def test_a_full_disk_mid_run_is_a_message_and_the_run_resumes(
    data_dir, folds_csv, one_epoch_sizes, small_disk, tmp_path, capsys, fails
):
    """The disk holds epoch 1 and then runs out in epoch 2, at the model (`last/`) or at the checkpoint (its
    free space is checked before it is written): exit 2 with one line naming the file, the space needed and
    free; the epoch-1 checkpoint stays whole, and after space is freed `--resume` finishes the run."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data_dir, folds_csv, schedule={"epochs": 2})))
    sizes = one_epoch_sizes
    room = sizes["model"] // 2 if fails.startswith("last") else (sizes["model"] + sizes["checkpoint"]) // 2
    disk = small_disk(sizes["total"] + room + (64 << 10))
    run = disk / "run"
    assert cli.main(["train", "--config", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    space = r"\([\d.]+ MB needed, [\d.]+ [kM]B free\)\n"
    assert re.fullmatch(
        f"steel-seg train: no space left on device writing {re.escape(str(run / fails))} {space}", err
    )
    assert load_state(run / "checkpoint.pt")["epoch"] == 1 and not list(run.rglob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    assert cli.main(["train", "--config", str(config), "--out", str(run), "--resume"]) == 0
    assert [r["epoch"] for r in read_log(run / "log.jsonl")] == [1, 2]


# --- the recipe's ingredients (issue 21): each trains, its config round-trips, its run is an ordinary one --
INGREDIENTS = {
    "lovasz": {"loss": {"lovasz_weight": 1.0, "pos_weight": [2.0, 2.0, 1.0, 1.5]}},
    "radam_encoder_lr": {"optim": {"name": "radam", "lr": 3e-3, "encoder_lr": 7e-5,
                                   "encoder_weight_decay": 3e-5}},
    "average": {"train": {"select": "average", "average_epochs": 2}},
    "tuned_selection": {"train": {"select": "tuned"}},
    "last_selection": {"train": {"select": "last"}},
    "augment_keys": {"data": {"augment": {"gamma": 0.5, "clahe": 0.5, "blur": 0.5, "sharpen": 0.5,
                                          "noise": 0.5}}},
}  # fmt: skip


def check_ordinary_run(cfg: TrainConfig, run: Path) -> dict:
    """The run as `oof`, `manifest` and the kernel see it: its config round-trips, run.json points at best/,
    and best/ loads exactly as the kernel loads a model (`manifest.load_model`). Returns the last record."""
    assert TrainConfig.from_yaml(run / "config.yaml") == cfg
    assert RunInfo.load(run).model_path == run / "best"
    model, spec = load_model(run / "best", run.name, "seg" if cfg.model.spec.has_seg else "cls")
    assert spec == cfg.model.spec
    x = torch.zeros(1, spec.in_channels, 64, 128)
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in forward_probs(model, spec, x) if p is not None)
    return read_log(run / "log.jsonl")[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(INGREDIENTS))
def test_each_recipe_ingredient_trains_into_an_ordinary_run(name, data_dir, folds_csv, tmp_path):
    config = tiny_config(data_dir, folds_csv, **INGREDIENTS[name])
    cfg = TrainConfig.from_dict(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert TrainConfig.from_yaml(path) == cfg
    result = train(cfg, tmp_path / name)
    last = check_ordinary_run(cfg, result.run_dir)
    assert last["epoch"] == 2 and last["step"] == 4 and math.isfinite(last["train_loss"])
    if name == "radam_encoder_lr":
        assert last["encoder_lr"] / last["lr"] == pytest.approx(7e-5 / 3e-3)
    if name == "tuned_selection":
        tuned = [r["val_dice_tuned"] for r in result.records]
        assert all(0 <= t <= 1 for t in tuned) and result.best == max(tuned)
        assert [r["is_best"] for r in result.records][tuned.index(max(tuned))]
    if name in ("last_selection", "average"):
        assert all(r["is_best"] for r in result.records)
    if name == "average":
        assert last["average"]["epochs"] == 2 and result.best == last["average"]["val_dice"]
        best, latest = (load_file(str(result.run_dir / d / "model.safetensors")) for d in ("best", "last"))
        assert any(not torch.equal(best[k], latest[k]) for k in best)


@pytest.mark.slow
def test_a_fixed_pseudo_label_share_trains_into_an_ordinary_run(data_dir, folds_csv, extra, tmp_path):
    source = {"train_csv": extra["csv"], "images_dir": extra["images"], "weight": 1.0}
    cfg = with_sources(data_dir, folds_csv, source, data={"extra_share": 0.5})
    trainer = Trainer(cfg, RunDir(tmp_path / "look"), init_dist("cpu"))
    drawn = [trainer.data.loader.dataset.image_ids[i] for i, _ in trainer.data.sampler]
    assert [sum(i in extra["named"] for i in drawn[k : k + 2]) for k in range(0, len(drawn), 2)] == [1] * 6
    check_ordinary_run(cfg, train(cfg, tmp_path / "run").run_dir)
    with pytest.raises(ValueError, match="extra_share"):
        TrainConfig.from_dict(tiny_config(data_dir, folds_csv, data={"extra_share": 0.5}))


@pytest.mark.slow
def test_a_full_size_fine_tune_starts_from_its_folds_crop_run(straight_run, data_dir, folds_csv, tmp_path):
    """`init_weights: <runs>/crop-f{fold}` (the shipped *_full.yaml configs): full 256 x 1600 images, the
    weights of the crop run of the same fold; another fold's run is refused."""
    _, crop = straight_run
    (tmp_path / "crop-f0").symlink_to(crop.run_dir)
    stage = {"data": {"crop": None, "batch_size": 1, "batches_per_epoch": 1}, "schedule": {"epochs": 1},
             "model": {"init_weights": str(tmp_path / "crop-f{fold}")}}  # fmt: skip
    cfg = TrainConfig.from_dict(tiny_config(data_dir, folds_csv, **stage))
    assert cfg.model.init_weights == str(tmp_path / "crop-f0")
    trainer = Trainer(cfg, RunDir(tmp_path / "look"), init_dist("cpu"))
    started = load_file(str(crop.run_dir / "best" / "model.safetensors"))
    assert all(torch.equal(v, started[k]) for k, v in trainer.model.state_dict().items())
    assert next(iter(trainer.data.loader))["image"].shape == (1, 256, 1600)
    check_ordinary_run(cfg, train(cfg, tmp_path / "full").run_dir)
    fold_0_run = {"init_weights": str(tmp_path / "crop-f0")}
    other = TrainConfig.from_dict(tiny_config(data_dir, folds_csv, model=fold_0_run, data={"fold": 1}))
    with pytest.raises(ValueError, match="held out fold 0; this run holds out fold 1"):
        train(other, tmp_path / "other")


@pytest.mark.slow
def test_resuming_a_finished_run_trains_nothing_and_says_so(straight_run, tmp_path):
    cfg, straight = straight_run
    assert re.match(r"trained 2 epoch\(s\) -> .*; best \d\.\d{4}; last val_dice", summary(straight))
    run = tmp_path / "finished"
    shutil.copytree(straight.run_dir, run)
    again = train(cfg, run, resume=True)
    assert again.records == [] and again.epochs == 2
    assert summary(again) == f"{run}: all 2 epoch(s) were trained already; nothing to do"
    before, after = (load_file(str(d / "best" / "model.safetensors")) for d in (straight.run_dir, run))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_killed_averaging_run_resumes_to_the_same_average(data_dir, folds_csv, tmp_path):
    """The running average is part of checkpoint.pt: epoch 1, a 'kill', resume -> the unbroken run's best/."""
    cfg = TrainConfig.from_dict(tiny_config(data_dir, folds_csv, **INGREDIENTS["average"]))
    straight = train(cfg, tmp_path / "straight")
    run = first_epoch_then_killed(cfg, tmp_path / "resumed")
    assert load_state(run / "checkpoint.pt")["average"]["n_averaged"] == 1
    train(cfg, run, resume=True)
    a, b = (load_file(str(d / "best" / "model.safetensors")) for d in (straight.run_dir, run))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
