"""steel_seg.workflow.experiment.steps: an experiment is the kit's own commands, each after what it reads,
with the `--set` values `steel-seg train` reads back as given; pseudo-label rounds and fine-tune stages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_experiment import write_configs, write_experiment

from steel_seg.train.config import parse_override
from steel_seg.workflow.experiment import schema
from steel_seg.workflow.experiment.checks import check_runnable
from steel_seg.workflow.experiment.scheduler import ALL
from steel_seg.workflow.experiment.steps import Command, build_steps, with_devices

ROOT = Path(__file__).resolve().parents[1]


def steps_of(exp: schema.Experiment) -> dict:
    steps = {s.id: s for s in build_steps(exp)}
    order = list(steps)
    for i, step in enumerate(steps.values()):  # every step after the steps it reads
        assert all(order.index(dep) < i for dep in step.deps), step.id
    return steps


def test_the_gold_recipe_is_its_24_commands():
    exp = schema.load(ROOT / "experiments" / "example.yaml")
    steps = steps_of(exp)
    trains = [s for s in steps.values() if s.kind == "train"]
    assert len(trains) == 15 and len(steps) == 24
    manifest = steps["manifest"].command.args
    assert manifest.count("--model") == 15 and "unet-f0=experiments/gold/runs/unet-f0/best" in manifest
    assert manifest[-2:] == ("--tta", "none,h,v") and set(steps["manifest"].deps) == {s.id for s in trains}
    assert "--allow-partial-folds" not in steps["tune"].command.args
    build = steps["build"].command.shown()
    assert build.startswith("python build_kernel.py --weights-dir experiments/gold/weights")
    assert "--budget-s 3100" in build and "--kaggle-user" not in build
    dry = steps["dry-run"]
    assert dry.command.program == "experiments/gold/kernel/kernel.py" and "--limit" in dry.command.args
    assert dry.gpus == ALL and trains[0].gpus == 1 and steps["tune"].gpus == 0
    assert steps["validate"].deps == ("dry-run",)


def test_the_demo_tunes_one_fold_of_five_and_dry_runs_every_test_image():
    steps = steps_of(schema.load(ROOT / "experiments" / "demo.yaml"))
    assert [s for s in steps if s.startswith("train/")] == ["train/demo-f0"]
    assert steps["tune"].command.args[-1] == "--allow-partial-folds"
    assert "--limit" not in steps["dry-run"].command.args and steps["dry-run"].gpus == ALL
    assert "--kaggle-user your-kaggle-user" in steps["build"].command.shown()
    assert set(steps) >= {"report/eda", "report/eval"}


def test_set_values_reach_train_as_given(tmp_path, synthetic_set):
    configs = write_configs(tmp_path)
    given = {"optim.lr": 2.0e-4, "data.crop": [64, 128], "train.select": "last", "loss.pos_weight": None,
             "train.amp": "off", "model.encoder_weights_path": "/w/b3 #1: x.safetensors"}  # fmt: skip
    spec = {"unet": {"config": str(configs["unet"]), "set": given}}
    exp = schema.load(write_experiment(tmp_path / "exp.yaml", synthetic_set.out_dir, spec))
    step = steps_of(exp)["train/unet-f1"]
    words = step.command.args
    sets = dict(parse_override(words[i + 1]) for i, w in enumerate(words) if w == "--set")
    assert {k: sets[k] for k in given} == given
    assert sets["data.folds_csv"] == str(tmp_path / "out" / "folds.csv") and words[4] == "1"
    assert dict(step.overrides) == sets


def test_every_training_config_loads_with_its_overrides_before_anything_runs(shipped_encoders, monkeypatch):
    monkeypatch.chdir(ROOT)
    exp = schema.load(ROOT / "experiments" / "example.yaml")
    check_runnable(exp, build_steps(exp), ())  # no exception: 15 configs, views, build_kernel.py


def test_pseudo_label_rounds_label_with_the_round_before_then_retrain_everything(tmp_path, synthetic_set):
    configs = write_configs(tmp_path)
    spec = {"unet": {"config": str(configs["unet"])}, "cls": {"config": str(configs["cls"])}}
    pseudo = {"rounds": 2, "positive": 0.8, "weight": 0.5, "share": 0.25}
    exp = schema.load(write_experiment(tmp_path / "exp.yaml", synthetic_set.out_dir, spec, pseudo=pseudo))
    steps = steps_of(exp)
    out = tmp_path / "out"
    first = steps["r1/pseudo"]
    assert first.deps == ("tune",) and first.command.args[:3] == (
        "pseudo",
        "--weights-dir",
        str(out / "weights"),
    )
    assert "--positive" in first.command.args and "--negative" not in first.command.args
    retrain = steps["r1/train/unet-f0"]
    assert "r1/pseudo" in retrain.deps and retrain.target == str(out / "round1" / "runs" / "unet-f0")
    source = dict(retrain.overrides)["data.extra_sources"][0]
    assert source == {"train_csv": str(out / "round1" / "labels" / "train.csv"),
                      "images_dir": exp.data.test_images, "weight": 0.5}  # fmt: skip
    assert dict(retrain.overrides)["data.extra_share"] == 0.25
    assert steps["r2/pseudo"].command.args[2] == str(out / "round1" / "weights")
    assert steps["build"].command.args[1] == str(out / "round2" / "weights")
    assert steps["build"].deps == ("r2/manifest", "r2/tune")


def test_a_fine_tune_stage_starts_from_its_models_run_of_the_same_fold(tmp_path, synthetic_set):
    configs = write_configs(tmp_path)
    spec = {
        "full": {"config": str(configs["unet"]), "init": "unet"},
        "unet": {"config": str(configs["unet"])},
    }
    steps = steps_of(schema.load(write_experiment(tmp_path / "exp.yaml", synthetic_set.out_dir, spec)))
    assert [s for s in steps if s.startswith("train/")] == ["train/unet-f0", "train/unet-f1", "train/full-f0",
                                                           "train/full-f1"]  # fmt: skip
    full = steps["train/full-f1"]
    assert "train/unet-f1" in full.deps
    assert dict(full.overrides)["model.init_weights"] == str(tmp_path / "out" / "runs" / "unet-f1")


def test_commands_run_this_interpreter_and_torchrun_for_several_gpus():
    train = Command(program="steel-seg", args=("train", "--fold", "0"), nproc=2)
    assert train.shown().startswith("torchrun --standalone --nproc_per_node 2 -m steel_seg.cli train")
    assert train.argv()[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert train.argv()[-5:] == ["-m", "steel_seg.cli", "train", "--fold", "0"]
    oof = with_devices(Command(program="steel-seg", args=("oof",), where=("--workers", "2")), "cuda")
    assert oof.shown() == "steel-seg oof --devices cuda --workers 2" and oof.key == ["steel-seg", "oof"]
    build = Command(program="build_kernel.py", args=("--out", "k"))
    assert build.argv() == [sys.executable, str(ROOT / "build_kernel.py"), "--out", "k"]


@pytest.mark.parametrize("gpus_per_job", [2])
def test_a_job_needing_more_gpus_than_given_is_refused(tmp_path, synthetic_set, gpus_per_job):
    configs = write_configs(tmp_path)
    spec = {"unet": {"config": str(configs["unet"]), "gpus_per_job": gpus_per_job}}
    exp = schema.load(write_experiment(tmp_path / "exp.yaml", synthetic_set.out_dir, spec))
    with pytest.raises(ValueError, match=r"models\.unet\.gpus_per_job 2: only 1 GPU\(s\) given \(3\)"):
        check_runnable(exp, build_steps(exp), ("3",))
    check_runnable(exp, build_steps(exp), ("3", "5"))
