"""Kaggle vs local roots: the one module that reads the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steel_seg.competition import SLUG
from steel_seg.locations import Locations, default_device, locate


def test_kaggle_when_the_run_type_is_set():
    where = locate({"KAGGLE_KERNEL_RUN_TYPE": "Batch"})
    assert where.on_kaggle
    assert where.test_images == Path("/kaggle/input") / SLUG / "test_images"
    assert where.sample_submission == Path(f"/kaggle/input/{SLUG}/sample_submission.csv")
    assert where.submission_csv == Path("/kaggle/working/submission.csv")
    assert where.dataset_dir("w") == Path("/kaggle/input/w")


def test_kaggle_when_the_input_folder_exists(tmp_path):
    assert locate({}, kaggle_input=tmp_path).on_kaggle


def test_local_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = locate({}, kaggle_input=tmp_path / "absent")
    assert where == Locations(False, Path("data"), tmp_path)
    assert locate({"STEEL_SEG_INPUT": "/data/in"}, kaggle_input=tmp_path / "absent").input_root == Path(
        "/data/in"
    )


def test_find_input(tmp_path):
    where = Locations(True, tmp_path, tmp_path / "out")
    (tmp_path / SLUG).mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected one folder holding manifest.json, found \[\]"):
        where.find_input("manifest.json")
    (tmp_path / "weights-v1").mkdir()
    (tmp_path / "weights-v1" / "manifest.json").write_text("{}")
    assert where.find_input("manifest.json") == tmp_path / "weights-v1"
    assert where.find_input("manifest.json", "weights-v1") == tmp_path / "weights-v1"
    assert where.find_input("manifest.json", "other") == tmp_path / "weights-v1"  # found by its marker
    (tmp_path / "nested" / "inner").mkdir(parents=True)
    (tmp_path / "nested" / "inner" / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"other/manifest.json not found; .*inner"):
        where.find_input("manifest.json", "other")


def test_default_device():
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
