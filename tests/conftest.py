"""Shared fixtures: the real Severstal sample (skipped cleanly where `../shared` is absent) and a synthetic
stand-in the repo makes itself (always there), so every module's behaviour runs in any clone."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from steel_seg.competition import CLASSES
from steel_seg.labels import Labels
from steel_seg.synthetic import SyntheticSet, SyntheticStats, write_dataset

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT.parent / "shared" / "data" / "severstal_sample"

# The synthetic stand-in: as many train images as the real sample (27), 6 test images. Its class mix is
# richer than the real train set's so that 27 images carry every class and the 3+4 pair; the real areas,
# textures and near-duplicates are the generator's own. ~1.5 s a layout, written once a session.
SYNTH_TRAIN, SYNTH_TEST, SYNTH_SEED = 27, 6, 1
SYNTH_COMBINATIONS = {"": 9, "3": 4, "1": 3, "2": 3, "4": 2, "3|4": 3, "1|3": 1, "1|2": 2}


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real competition sample: 27 train JPEGs, both train.csv and sample_submission layouts."""
    if not (SAMPLE_DIR / "train.csv").is_file():
        pytest.skip(f"real Severstal sample not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


def _synthetic(root: Path, layout: str) -> SyntheticSet:
    stats = dataclasses.replace(SyntheticStats.load(), combinations=SYNTH_COMBINATIONS)
    made = write_dataset(root, SYNTH_TRAIN, SYNTH_TEST, layout, seed=SYNTH_SEED, stats=stats, progress=False)
    presence = Labels.from_csv(root / "train.csv", root / "train_images").presence()
    # What the tests rely on; a changed generator that loses one of these needs another seed here.
    assert all(made.class_counts[c] for c in CLASSES) and made.n_defect_free, made.summary()
    assert made.clusters and (presence[3] & presence[4]).any(), made.summary()
    return made


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> SyntheticSet:
    """A synthetic Severstal set (read-only): `train.csv` in the re-release layout, a final-layout
    `sample_submission.csv`, `train_images/`, `test_images/`, `test_truth.csv`, `near_duplicates.csv`."""
    return _synthetic(tmp_path_factory.mktemp("synthetic_rerelease"), "rerelease")


@pytest.fixture(scope="session")
def synthetic_original(tmp_path_factory) -> SyntheticSet:
    """The same images and masks as `synthetic_set` (read-only), with `train.csv` in the original layout
    (`ImageId_ClassId`, 4 rows an image) and a stage-1 (original-layout) `sample_submission.csv`."""
    return _synthetic(tmp_path_factory.mktemp("synthetic_original"), "original")


@pytest.fixture(scope="session")
def synthetic_labels(synthetic_set) -> Labels:
    """The labels of `synthetic_set`'s 27 train images (defect-free ones included)."""
    return Labels.from_csv(synthetic_set.out_dir / "train.csv", synthetic_set.out_dir / "train_images")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, more threads spin against each other (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
