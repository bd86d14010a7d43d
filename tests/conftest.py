"""Shared fixtures: the real Severstal sample (skipped cleanly where `../shared` is absent), a synthetic
stand-in the repo makes itself (always there, so every module's behaviour runs in any clone), a private
Hugging Face cache and the shipped configs' encoders planted in it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network; before huggingface_hub reads it

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402
from planted_hub import IMAGENET, plant  # noqa: E402

from steel_seg.competition import CLASSES  # noqa: E402
from steel_seg.formats.labels import Labels  # noqa: E402
from steel_seg.synthetic.dataset import SyntheticSet, SyntheticStats, write_dataset  # noqa: E402

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


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[int], Path]]:
    """`small_disk(bytes)`: an empty folder on a tmpfs of that size (a full disk is real: writes fail with
    ENOSPC). Mounting needs root (or CAP_SYS_ADMIN); elsewhere the test is skipped."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                  capture_output=True, text=True)  # fmt: skip
        except FileNotFoundError:
            pytest.skip("no mount command here")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)
