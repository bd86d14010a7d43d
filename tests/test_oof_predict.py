"""`steel-seg oof` never replaces or mixes OOF dirs: an existing one is refused unless --overwrite, and is
replaced only by a whole new one (synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny_models import TINY_UNET as SPEC
from tiny_models import write_run

from steel_seg.cli import main as cli_main
from steel_seg.engine.ensemble import Ensemble
from steel_seg.formats.oof import read_oof

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def run_dir(synthetic_set, tmp_path) -> Path:
    """A run dir as `steel-seg train` writes it (run.json, folds.csv, best/), its fold 1 = 3 images."""
    ids = sorted(p.name for p in (synthetic_set.out_dir / "train_images").glob("*.jpg"))
    pd.DataFrame({"ImageId": ids, "fold": [int(n < 3) for n in range(len(ids))]}).to_csv(
        tmp_path / "folds.csv", index=False
    )
    info = {"name": "unet-f1", "fold": 1, "folds_csv": str(tmp_path / "folds.csv"),
            "train_csv": str(synthetic_set.out_dir / "train.csv"),
            "images_dir": str(synthetic_set.out_dir / "train_images")}  # fmt: skip
    return write_run(tmp_path / "runs" / "unet-f1", SPEC, info)


def oof(run_dir: Path, out: Path, *flags: str) -> int:
    return cli_main(["oof", "--run", str(run_dir), "--out", str(out), "--device", "cpu", "--workers", "0",
                     "--no-progress", *flags])  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_oof_dir_is_refused_then_replaced_whole(run_dir, tmp_path, capsys):
    out = tmp_path / "oof" / "f1"
    assert oof(run_dir, out, "--limit", "2") == 0
    first = snapshot(out)
    assert oof(run_dir, out) == 2
    assert f"{out}: already holds an OOF dir; pass --overwrite" in capsys.readouterr().err
    assert snapshot(out) == first
    assert oof(run_dir, out, "--overwrite", "--limit", "1") == 0
    replaced = read_oof(out)
    assert len(replaced.image_ids) == 1 and len(list((out / "probs").iterdir())) == 1  # no stale PNG
    assert sorted(p.name for p in out.parent.iterdir()) == ["f1"]  # no staging folder left


def test_a_run_killed_midway_leaves_the_old_dir_whole(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "oof" / "f1"
    assert oof(run_dir, out, "--limit", "2") == 0
    first = snapshot(out)
    forward, calls = Ensemble.forward, []

    def dying_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between two batches
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Ensemble, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        oof(run_dir, out, "--overwrite", "--batch-size", "1")
    assert (
        snapshot(out) == first
        and read_oof(out).image_ids == json.loads((out / "meta.json").read_text())["image_ids"]
    )
