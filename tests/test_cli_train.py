"""`steel-seg train` guards a user's work and input: run dirs, resume, images, folds (synthetic data)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml
from damage import copy_set, oversized_jpeg, truncated_jpeg

from steel_seg.cli import build_parser, main
from steel_seg.formats.images import ImageError
from steel_seg.train import data as data_module
from steel_seg.train.config import TrainConfig, parse_override
from steel_seg.train.loop import train
from steel_seg.train.run_log import read_log

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, images: Path, **data) -> Path:
    """A seconds-long CPU run on the synthetic set: one epoch of 2 batches of 2 crops, 3 random folds."""
    config = {
        "data": {"train_csv": str(images / "train.csv"), "images_dir": str(images / "train_images"),
                 "folds": "random 3", "crop": [64, 128], "batch_size": 2, "val_batch_size": 2, "workers": 0,
                 "batches_per_epoch": 2, **data},
        "model": {"arch": "FPN", "encoder": "tu-mobilenetv3_small_050", "in_channels": 1,
                  "decoder_channels": [32, 32]},
        "schedule": {"epochs": 1},
        "train": {"seed": 1, "device": "cpu", "progress": False},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(config: Path, out: Path, *flags: str) -> int:
    return main(["train", "--config", str(config), "--out", str(out), *flags])


def test_an_existing_run_is_never_replaced_by_accident(synthetic_set, tmp_path, capsys):
    config, out = write_config(tmp_path, synthetic_set.out_dir), tmp_path / "run"
    assert run_cli(config, out) == 0
    (out / "notes.txt").write_text("my notes")
    before = {p.name: p.read_bytes() for p in (out / "best").iterdir()} | {
        "log": (out / "log.jsonl").read_bytes()
    }
    assert run_cli(config, out) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds a run" in err and "--resume" in err and "--overwrite" in err
    after = {p.name: p.read_bytes() for p in (out / "best").iterdir()} | {
        "log": (out / "log.jsonl").read_bytes()
    }
    assert after == before  # nothing emptied, nothing overwritten
    assert run_cli(config, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "my notes"  # only the run's own files were replaced
    assert [r["epoch"] for r in read_log(out / "log.jsonl")] == [1]


def test_resume_with_a_changed_config_names_the_keys(synthetic_set, tmp_path, capsys):
    config, out = write_config(tmp_path, synthetic_set.out_dir), tmp_path / "run"
    assert run_cli(config, out) == 0
    code = run_cli(config, out, "--resume", "--set", "model.encoder=tu-mobilenetv3_small_100",
                   "--set", "data.workers=1")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no longer matches" in err
    assert "model.encoder: 'tu-mobilenetv3_small_050' -> 'tu-mobilenetv3_small_100'" in err
    assert "data.workers" not in err  # how a run is executed may change on resume
    assert "Traceback" not in err


def test_unusable_images_are_all_listed_before_the_first_step(synthetic_set, tmp_path, capsys, caplog):
    images = copy_set(synthetic_set.out_dir, tmp_path / "set")
    truth = pd.read_csv(images / "train.csv")
    ids = sorted(p.name for p in (images / "train_images").glob("*.jpg"))
    with_defect, defect_free = (
        truth["ImageId"].iloc[0],
        next(i for i in ids if i not in set(truth["ImageId"])),
    )
    source = images / "train_images" / ids[-1]
    oversized_jpeg(images / "train_images" / with_defect, source)
    truncated_jpeg(images / "train_images" / defect_free, source)
    config, out = write_config(tmp_path, images), tmp_path / "run"
    assert run_cli(config, out) == 2
    err = capsys.readouterr().err
    assert "2 of 27 train images cannot be used" in err
    csv = images / "train.csv"
    assert f"{with_defect}: size 65000x65000, expected 1600x256 ({csv} line 2)" in err
    assert f"{defect_free}: truncated JPEG (no end-of-image marker) (not in {csv}" in err
    assert not (out / "checkpoint.pt").exists()
    skip = write_config(tmp_path, images, skip_bad_images=True)
    assert run_cli(skip, out) == 0
    assert "skipping 2 unusable train image(s)" in caplog.text


def test_an_image_failing_inside_a_loader_worker_gives_the_plain_message(
    synthetic_set, tmp_path, monkeypatch
):
    """An image that passes the header check but fails to decode, read in a DataLoader worker process."""
    victim = sorted(p.name for p in (synthetic_set.out_dir / "train_images").glob("*.jpg"))
    read = data_module.read_grey

    def failing_read(path, *args, **kwargs):
        if Path(path).name in victim[:-1]:
            raise ImageError(path, "corrupt JPEG data (injected)")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "read_grey", failing_read)
    cfg = TrainConfig.from_yaml(write_config(tmp_path, synthetic_set.out_dir, workers=1))
    with pytest.raises(
        ValueError, match=r"\.jpg: corrupt JPEG data \(injected\) \(\d+ unusable image"
    ) as err:
        train(cfg, tmp_path / "run")
    assert "Traceback" not in str(err.value) and "worker" not in str(err.value)


def test_a_folds_csv_must_cover_the_train_set(synthetic_set, tmp_path, capsys):
    ids = sorted(p.name for p in (synthetic_set.out_dir / "train_images").glob("*.jpg"))
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"ImageId": ids[:4], "fold": [0, 1, 0, 1]}).to_csv(folds, index=False)
    config = write_config(tmp_path, synthetic_set.out_dir, folds=None, folds_csv=str(folds))
    assert run_cli(config, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"{folds}: covers 4 of the 27 train images; 23 missing, e.g. {ids[4:7]}" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_malformed_yaml_in_set_or_a_config_is_one_line(synthetic_set, tmp_path, capsys):
    config, out = write_config(tmp_path, synthetic_set.out_dir), tmp_path / "run"
    assert run_cli(config, out, "--set", "optim.lr=[1e-3") == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("steel-seg train: --set optim.lr: '[1e-3' is not valid YAML") and err.count("\n") == 1
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(config.read_text().replace("crop:", "crop: [64,"))
    assert run_cli(broken, out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"steel-seg train: {broken}: not valid YAML: line ") and err.count("\n") == 1
    assert run_cli(config, out, "--set", "optim.lr=null") == 2
    assert "optim.lr must be a number, got null" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_set_examples_in_config_headers_parse(path):
    """What a config's header tells the user to type is accepted by the parser, key by key."""
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    for example in re.findall(r"`(--set [^`]*)`", header):
        args = build_parser("train").parse_args(["train", "--config", str(path), *shlex.split(example)])
        assert all(parse_override(text)[0].count(".") == 1 for text in args.set), example
