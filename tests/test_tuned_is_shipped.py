"""Promise equals delivery, end to end on synthetic data: an ensemble of two segmenters of different
architectures and a classifier, trained on folds 0 and 1; `steel-seg manifest`, `steel-seg oof
--weights-dir`, `steel-seg tune`; then, for each fold, the kernel built from a manifest holding only that
fold's members, run on exactly that fold's validation images, scores the Dice that thresholds.json records for
those images (to 1e-4)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny_experiment import MODELS

from steel_seg import bundle
from steel_seg.cli import main as cli_main
from steel_seg.competition import IMAGE_ID, SAMPLE_SUBMISSION, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES, Layout
from steel_seg.formats import metric
from steel_seg.formats.folds import random_folds, write_folds
from steel_seg.formats.labels import Labels
from steel_seg.formats.submission import read_predictions
from steel_seg.postprocess.rules import Rules
from steel_seg.train.config import TrainConfig
from steel_seg.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "kernel" / "bootstrap.py.tmpl"
FLAGS = ["--device", "cpu", "--workers", "0", "--batch-size", "4", "--no-progress"]
GRID = ["--pixel-thresholds", "0.3,0.5,0.7", "--min-components", "0,20", "--min-areas", "0,200",
        "--gates", "0,0.3,0.6", "--seg-gates", "0,0.5,0.8"]  # fmt: skip


def config(data: Path, folds_csv: Path, model: dict, fold: int) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "data": {"train_csv": str(data / TRAIN_CSV), "images_dir": str(data / TRAIN_IMAGES),
                     "folds_csv": str(folds_csv), "fold": fold, "crop": [64, 256], "defect_crop_p": 0.8,
                     "batch_size": 4, "val_batch_size": 4, "workers": 0, "batches_per_epoch": 4},
            "model": model,
            "optim": {"lr": 0.003},
            "schedule": {"epochs": 2, "warmup_steps": 1},
            "train": {"seed": 5, "device": "cpu", "progress": False},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(synthetic_set, tmp_path_factory) -> dict:
    """Six runs (three models x folds 0 and 1 of a 2-fold folds.csv), the full weights dir, and its OOF."""
    root = tmp_path_factory.mktemp("shipped")
    data = synthetic_set.out_dir
    folds_csv = root / "folds.csv"
    write_folds(
        random_folds(synthetic_set.train_ids, 2, seed=0).rename_axis(IMAGE_ID).reset_index(), folds_csv
    )
    runs = {}
    for name, model in MODELS.items():
        for fold in (0, 1):
            runs[name, fold] = train(
                config(data, folds_csv, model, fold), root / "runs" / f"{name}-f{fold}"
            ).run_dir
    weights = root / "weights"
    pairs = [f"{name}-f{fold}={runs[name, fold] / 'best'}" for name, fold in runs]
    assert cli_main(["manifest", "--weights-dir", str(weights), *_models(pairs), "--tta", "none,h"]) == 0
    oof = root / "oof"
    assert cli_main(["oof", "--weights-dir", str(weights), "--out", str(oof), *FLAGS]) == 0
    assert cli_main(["tune", "--oof", str(oof), "--out", str(weights / "thresholds.json"), *GRID]) == 0
    return {"root": root, "data": data, "folds_csv": folds_csv, "runs": runs, "weights": weights, "oof": oof}


def _models(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--model", pair)]


@pytest.mark.slow
@pytest.mark.parametrize("fold", [0, 1])
def test_the_kernel_of_one_fold_scores_what_tune_recorded(trained, fold, tmp_path):
    rules = Rules.load(trained["weights"] / "thresholds.json")
    tuning = rules.tuning
    assert tuning["folds"] == {"sha256": tuning["recipe"]["folds_sha256"], "n_folds": 2, "tuned": [0, 1]}
    assert tuning["gate_source"] == "classifier probability (cls.csv)"
    assert [m["name"] for m in tuning["recipe"]["members"]] == ["cls", "fpn", "unet"]
    weights = tmp_path / "weights"  # only this fold's members, the same views, the tuned rules
    pairs = [f"{name}-f{fold}={trained['runs'][name, fold] / 'best'}" for name in MODELS]
    assert cli_main(["manifest", "--weights-dir", str(weights), *_models(pairs), "--tta", "none,h"]) == 0
    shutil.copy(trained["weights"] / "thresholds.json", weights / "thresholds.json")
    result = bundle.build(weights, tmp_path / "kernel", TEMPLATE)
    assert f"this manifest ships folds [{fold}]" in result.recipe
    ids = pd.read_csv(trained["folds_csv"]).query("fold == @fold")[IMAGE_ID].tolist()
    data = tmp_path / "data"
    (data / TEST_IMAGES).mkdir(parents=True)
    for image_id in ids:
        shutil.copy(trained["data"] / TRAIN_IMAGES / image_id, data / TEST_IMAGES / image_id)
    rows = [f"{i}_{c},1 1" for i in ids for c in range(1, 5)]
    (data / SAMPLE_SUBMISSION).write_text("\n".join([Layout.ORIGINAL.header, *rows]) + "\n")
    out = tmp_path / "submission.csv"
    args = [str(result.script), "--data-dir", str(data), "--weights-dir", str(weights), "--out", str(out)]
    run = subprocess.run(
        [sys.executable, *args, *FLAGS, "--strict"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    truth = Labels.from_csv(trained["data"] / TRAIN_CSV, trained["data"] / TRAIN_IMAGES).table
    scored = metric.score(truth, read_predictions(out), ids)
    recorded = tuning["dice_after_per_fold"][str(fold)]
    assert recorded["n_images"] == len(ids)
    assert scored.mean_dice == pytest.approx(recorded["mean"], abs=1e-4)


@pytest.mark.slow
def test_the_oof_dir_records_each_folds_members(trained):
    meta = json.loads((trained["oof"] / "meta.json").read_text())
    folds = pd.read_csv(trained["folds_csv"]).set_index(IMAGE_ID)["fold"]
    assert meta["image_folds"] == [int(folds[i]) for i in meta["image_ids"]]
    assert meta["n_folds"] == 2 and meta["has_cls"]
    runs = meta["recipe"]["runs"]
    assert sorted(runs) == ["cls", "fpn", "unet"] and all(sorted(r) == ["0", "1"] for r in runs.values())
