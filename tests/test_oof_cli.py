"""`steel-seg oof`: a training run's held-out fold predicted through the engine into an OOF directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pandas as pd
import pytest
from tiny_models import TINY_UNET, write_run

from steel_seg import fileio
from steel_seg.cli import main as cli_main
from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.predict import iter_probs
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats.oof import quantise, read_oof
from steel_seg.models import factory

SPEC = dataclasses.replace(TINY_UNET, aux_head=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def heldout(synthetic_labels) -> list[str]:
    """Fold 1, sorted: the first synthetic image with one defect class and the first with two."""
    per_image = synthetic_labels.presence().sum(axis=1)
    return sorted([per_image.index[per_image == 1][0], per_image.index[per_image == 2][0]])


@pytest.fixture
def run_dir(synthetic_set, heldout, tmp_path) -> Path:
    """A run dir as `steel-seg train` writes it: run.json, folds.csv and best/ (a real saved smp model)."""
    data = synthetic_set.out_dir
    ids = sorted(p.name for p in (data / "train_images").glob("*.jpg"))
    folds = pd.DataFrame({"ImageId": ids, "fold": [1 if i in heldout else 0 for i in ids]})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    info = {
        "name": "unet-f1",
        "fold": 1,
        "folds_csv": str(tmp_path / "folds.csv"),
        "train_csv": str(data / "train.csv"),
        "images_dir": str(data / "train_images"),
        "model_dir": "best",
        "inputs": {
            role: {"path": str(path), "sha256": fileio.sha256_file(path)}
            for role, path in (
                ("data.folds_csv", tmp_path / "folds.csv"),
                ("data.train_csv", data / "train.csv"),
            )
        },
    }
    return write_run(tmp_path / "runs" / "unet-f1", SPEC, info)


def oof(*args: str | Path) -> int:
    return cli_main(["oof", *map(str, args), "--device", "cpu", "--workers", "0", "--no-progress"])


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_oof_never_writes_over_the_run_or_a_folder_that_is_no_oof_dir(run_dir, tmp_path, capsys):
    """`--out` naming the run dir (or a folder above it, or one holding a user's files) is refused, even with
    --overwrite; nothing in it is touched."""
    before = contents(tmp_path)
    for out in (run_dir, tmp_path / "runs"):
        assert oof("--run", run_dir, "--out", out, "--overwrite") == 2
        assert f"{out}: " in capsys.readouterr().err
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert oof("--run", run_dir, "--out", notes, "--overwrite") == 2
    assert "not an OOF dir's (todo.txt)" in capsys.readouterr().err
    assert contents(tmp_path) == before | {"notes/todo.txt": b"mine"}
    assert not list(tmp_path.rglob(".*partial"))


def test_oof_refuses_a_run_whose_folds_csv_changed(run_dir, tmp_path, capsys):
    """Regenerated folds behind the run's unchanged path: the run's validation images would be other ones."""
    recorded = fileio.sha256_file(tmp_path / "folds.csv")
    folds = pd.read_csv(tmp_path / "folds.csv")
    folds["fold"] = 1 - folds["fold"]
    folds.to_csv(tmp_path / "folds.csv", index=False)
    out = tmp_path / "oof" / "f1"
    assert oof("--run", run_dir, "--out", out) == 2
    err = capsys.readouterr().err
    now = fileio.sha256_file(tmp_path / "folds.csv")
    assert f"data.folds_csv {tmp_path / 'folds.csv'}: sha256 {now}, recorded {recorded}" in err
    assert "--allow-changed-inputs" in err and not (tmp_path / "oof").exists()
    assert oof("--run", run_dir, "--out", out, "--limit", "1", "--allow-changed-inputs") == 0
    assert len(read_oof(out).image_ids) == 1


@pytest.mark.slow
def test_oof_writes_the_heldout_fold(run_dir, heldout, synthetic_labels, tmp_path, capsys):
    out = tmp_path / "oof" / "unet-f1"
    code = cli_main(
        [
            "oof",
            "--run",
            str(run_dir),
            "--out",
            str(out),
            "--tta",
            "none,h",
            "--device",
            "cpu",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    assert str(out) in capsys.readouterr().out
    oof = read_oof(out)
    assert oof.image_ids == heldout
    assert oof.has_cls and oof.cls is not None
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["fold"], meta["source"]) == (1, str(run_dir))
    truth, labels = oof.truth.table, synthetic_labels.table
    expected = labels[labels["ImageId"].isin(heldout)]
    assert len(expected) == 3  # one class on one image, two on the other
    assert sorted(zip(truth["ImageId"], truth["ClassId"], strict=True)) == sorted(
        zip(expected["ImageId"], expected["ClassId"], strict=True)
    )
    pd.testing.assert_frame_equal(truth.reset_index(drop=True), expected.reset_index(drop=True))
    # The stored probabilities are the engine's, through the same TTA: checked on one image.
    model, spec = factory.load(run_dir / "best")
    ensemble = Ensemble([Member("unet-f1", "seg", model, spec, views=("none", "h"))])
    settings = PredictSettings(workers=0, progress=False)
    [(image_id, probs, cls)] = iter_probs(
        ensemble, [Path(json.loads((run_dir / "run.json").read_text())["images_dir"]) / heldout[1]], settings
    )
    np.testing.assert_array_equal(oof.probs_u8(heldout[1]), quantise(probs))
    np.testing.assert_allclose(oof.cls_of(heldout[1]), cls, rtol=1e-6)


@pytest.mark.slow
def test_oof_limit_and_default_out(run_dir, heldout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["oof", "--run", str(run_dir), "--device", "cpu", "--workers", "0", "--limit", "1"]) == 0
    assert read_oof(tmp_path / "oof" / "unet-f1").image_ids == heldout[:1]


def test_oof_reports_a_bad_run(run_dir, capsys):
    info = json.loads((run_dir / "run.json").read_text())
    del info["folds_csv"]
    (run_dir / "run.json").write_text(json.dumps(info))
    assert cli_main(["oof", "--run", str(run_dir), "--device", "cpu"]) == 2
    assert f"{run_dir / 'run.json'}: missing keys ['folds_csv']" in capsys.readouterr().err


def test_oof_reports_an_empty_fold(run_dir, capsys):
    info = json.loads((run_dir / "run.json").read_text())
    info["fold"] = 7
    (run_dir / "run.json").write_text(json.dumps(info))
    assert cli_main(["oof", "--run", str(run_dir), "--device", "cpu"]) == 2
    assert "no image in fold 7" in capsys.readouterr().err


def test_oof_rejects_unknown_views(run_dir):
    with pytest.raises(SystemExit):
        cli_main(["oof", "--run", str(run_dir), "--tta", "none,diagonal"])


def test_oof_of_a_weights_dir_predicts_each_members_fold(run_dir, heldout, tmp_path):
    weights, out = tmp_path / "weights", tmp_path / "oof" / "ensemble"
    assert cli_main(["manifest", "--weights-dir", str(weights), "--model", f"unet-f1={run_dir / 'best'}",
                     "--tta", "none,h"]) == 0  # fmt: skip
    assert (
        cli_main(
            ["oof", "--weights-dir", str(weights), "--out", str(out), "--device", "cpu", "--workers", "0"]
        )
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["image_ids"] == heldout and meta["image_folds"] == [1, 1] and meta["n_folds"] == 2
    [member] = meta["recipe"]["members"]
    assert (member["name"], member["tta"], meta["recipe"]["runs"]) == (
        "unet",
        ["none", "h"],
        {"unet": {"1": ANY}},
    )
    # the same probabilities as the run's own OOF through the same views
    single = tmp_path / "oof" / "single"
    assert cli_main(["oof", "--run", str(run_dir), "--out", str(single), "--tta", "none,h", "--device", "cpu",
                     "--workers", "0"]) == 0  # fmt: skip
    for image_id in heldout:
        np.testing.assert_array_equal(read_oof(out).probs_u8(image_id), read_oof(single).probs_u8(image_id))


def test_oof_of_a_weights_dir_refuses_what_has_no_held_out_fold(run_dir, tmp_path, capsys):
    weights = tmp_path / "weights"
    factory.save(factory.build_model(SPEC), SPEC, tmp_path / "bare")  # a model dir outside any run
    assert cli_main(["manifest", "--weights-dir", str(weights), "--model", f"bare={tmp_path / 'bare'}"]) == 0
    assert "bare not from a training run" in capsys.readouterr().out
    assert cli_main(["oof", "--weights-dir", str(weights), "--device", "cpu"]) == 2
    assert "bare: no provenance" in capsys.readouterr().err


def test_oof_of_a_weights_dir_refuses_folds_changed_since_training(run_dir, tmp_path, capsys):
    weights = tmp_path / "weights"
    assert (
        cli_main(["manifest", "--weights-dir", str(weights), "--model", f"unet-f1={run_dir / 'best'}"]) == 0
    )
    folds = tmp_path / "folds.csv"
    folds.write_text(folds.read_text().replace(",1\n", ",0\n", 1))
    assert cli_main(["oof", "--weights-dir", str(weights), "--device", "cpu", "--workers", "0"]) == 2
    assert f"{folds}: sha256" in capsys.readouterr().err
    assert cli_main(["oof", "--weights-dir", str(weights), "--tta", "none,h", "--device", "cpu"]) == 2
    assert "--tta: the ensemble's OOF predictions use each model's manifest views" in capsys.readouterr().err
