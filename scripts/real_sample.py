"""The real Severstal sample in ../shared as a Kaggle test folder (for demo.py and kaggle_check.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from steel_seg import competition

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal_sample"


def available() -> bool:
    """Whether the real sample is on this machine."""
    return (REAL_SAMPLE / competition.TRAIN_CSV).is_file()


def real_sample_test_dir(out: Path) -> Path:
    """`out` holding the real sample's 27 JPEGs (symlinks) as a Kaggle test folder and a stage-1 sample."""
    source, images = REAL_SAMPLE / competition.TRAIN_IMAGES, out / competition.TEST_IMAGES
    images.mkdir(parents=True, exist_ok=True)
    ids = sorted(p.name for p in source.glob("*" + competition.IMAGE_SUFFIX))
    for image_id in ids:
        link = images / image_id
        if not link.exists():
            link.symlink_to(source / image_id)
    rows = [(f"{i}_{c}", "1 1") for i in ids for c in competition.CLASSES]
    columns = list(competition.Layout.ORIGINAL.columns)
    pd.DataFrame(rows, columns=columns).to_csv(out / competition.SAMPLE_SUBMISSION, index=False)
    return out
