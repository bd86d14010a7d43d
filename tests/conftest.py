"""Shared fixtures: the real Severstal sample (skipped cleanly where `../shared` is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT.parent / "shared" / "data" / "severstal_sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real competition sample: 27 train JPEGs, both train.csv and sample_submission layouts."""
    if not (SAMPLE_DIR / "train.csv").is_file():
        pytest.skip(f"real Severstal sample not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, more threads spin against each other (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    """A small synthetic Severstal set the repo makes itself (16 train, 6 test images, re-release layout):
    train_images/, test_images/, train.csv, sample_submission.csv (final layout), test_truth.csv."""
    from steel_seg.synthetic import write_dataset

    out = tmp_path_factory.mktemp("tiny_set")
    write_dataset(out, 16, 6, "rerelease", seed=21, progress=False)
    return out

