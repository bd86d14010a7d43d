"""Shared fixtures: the real Severstal sample (skipped cleanly where `../shared` is absent), a private
Hugging Face cache, and the shipped configs' encoders planted in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network; before huggingface_hub reads it

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402
from planted_hub import IMAGENET, plant  # noqa: E402

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


@pytest.fixture(scope="session", autouse=True)
def hf_home(tmp_path_factory) -> Iterator[Path]:
    """A private, empty Hugging Face home for the whole session: in-process hub look-ups read `hf_home/hub`
    (what `HF_HOME=hf_home` gives a subprocess), so a developer's own cache never leaks into a test."""
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
        yield home


@pytest.fixture(scope="session")
def shipped_encoders(hf_home) -> Path:
    """The shipped configs' ImageNet encoders (efficientnet-b3, resnet34), random tensors with ImageNet's
    mean / std, planted where smp's loader reads them."""
    for encoder in ("efficientnet-b3", "resnet34"):
        plant(hf_home, encoder, "imagenet", *IMAGENET)
    return hf_home


def offline_env(hf_home: Path) -> dict[str, str]:
    """A subprocess environment that reads the Hugging Face cache of `hf_home` and never goes online."""
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
