"""Experiment files for the tests: training configs of the smallest real smp models (a Unet, an FPN and a
classifier on a timm mobilenet, 1 channel, one short epoch on 64x256 crops, a checkpoint after every step),
and an experiment.yaml over a synthetic set with absolute paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from steel_seg.competition import SAMPLE_SUBMISSION, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES

ENCODER = "tu-mobilenetv3_small_050"
MODELS = {
    "unet": {"arch": "Unet", "encoder": ENCODER, "in_channels": 1, "encoder_depth": 3,
             "decoder_channels": [8, 8, 8]},
    "fpn": {"arch": "FPN", "encoder": ENCODER, "in_channels": 1, "decoder_channels": [32, 32]},
    "cls": {"arch": "Classifier", "encoder": ENCODER, "in_channels": 1, "encoder_depth": 3},
}  # fmt: skip


def write_configs(folder: Path) -> dict[str, Path]:
    """`folder/<name>.yaml` for each tiny model (its data paths are the experiment's to set)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, model in MODELS.items():
        config = {
            "data": {"train_csv": "set-by-the-experiment", "images_dir": "set-by-the-experiment",
                     "crop": [64, 256], "defect_crop_p": 0.8, "batch_size": 4, "val_batch_size": 4,
                     "workers": 0, "batches_per_epoch": 3},
            "model": model,
            "optim": {"lr": 0.003},
            "schedule": {"epochs": 1, "warmup_steps": 1},
            "train": {"seed": 5, "device": "cpu", "progress": False, "checkpoint_every": 1},
        }  # fmt: skip
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def write_experiment(path: Path, data: Path, models: dict[str, dict[str, Any]], **sections: Any) -> Path:
    """An experiment file over the synthetic set in `data`: 2 folds, no reports, 2 dry-run images on the
    CPU, `out` beside the file unless `sections` say otherwise."""
    exp = {
        "out": str(path.parent / "out"),
        "data": {"train_csv": str(data / TRAIN_CSV), "train_images": str(data / TRAIN_IMAGES),
                 "test_images": str(data / TEST_IMAGES), "sample_submission": str(data / SAMPLE_SUBMISSION)},
        "folds": {"k": 2, "seed": 0},
        "models": models,
        "tta": ["none"],
        "reports": {"eda": False, "eval": False},
        "kernel": {"kaggle_user": "tester", "dry_run_images": 2},
        "inference": {"devices": "cpu", "workers": 0, "batch_size": 4},
        **sections,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path
