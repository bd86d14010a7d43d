"""Kaggle vs local roots: the one module that reads the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steel_seg.competition import SLUG
from steel_seg.engine.locations import Locations, default_device, files_named, listing, locate


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
    with pytest.raises(FileNotFoundError, match=r"expected one folder holding manifest.json up to 6 levels"):
        where.find_input("manifest.json")
    (tmp_path / "weights-v1").mkdir()
    (tmp_path / "weights-v1" / "manifest.json").write_text("{}")
    assert where.find_input("manifest.json") == tmp_path / "weights-v1"
    assert where.find_input("manifest.json", "weights-v1") == tmp_path / "weights-v1"
    assert where.find_input("manifest.json", "other") == tmp_path / "weights-v1"  # found by its marker
    (tmp_path / "nested" / "inner").mkdir(parents=True)
    (tmp_path / "nested" / "inner" / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no folder named other holds manifest.json; .*inner"):
        where.find_input("manifest.json", "other")
    assert where.find_input("manifest.json", "inner") == tmp_path / "nested" / "inner"  # by its folder's name
    v1 = (lambda d: d.name == "weights-v1", "the first version")
    assert where.find_input("manifest.json", prefer=v1) == tmp_path / "weights-v1"


def test_six_levels_are_searched_and_image_folders_are_not_entered(tmp_path):
    where = Locations(True, tmp_path, tmp_path / "out")
    deep = tmp_path / "a" / "b" / "c" / "d" / "e" / "f"  # level 6: datasets/<owner>/<slug>/<zip>/<model>/...
    (deep / "test_images").mkdir(parents=True)
    (tmp_path / "decoy").mkdir()
    for folder in (deep, tmp_path / "decoy"):  # the decoy has a sample but no test images
        (folder / "sample_submission.csv").write_text("")
    assert where.find_competition_dir() == deep
    (deep / "g").mkdir()
    (deep / "test_images" / "model").mkdir()
    for folder in (deep, deep / "g", deep / "test_images" / "model"):
        (folder / "model.safetensors").write_bytes(b"")
    assert files_named(tmp_path, "model.safetensors") == [deep / "model.safetensors"]  # level 7: too deep
    assert files_named(tmp_path, "model.safetensors", depth=7) == [
        deep / "model.safetensors",
        deep / "g" / "model.safetensors",
    ]


def kaggle_competition(folder: Path) -> Path:
    (folder / "test_images").mkdir(parents=True)
    (folder / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n")
    return folder


def test_the_competitions_folder_wins_and_the_others_are_logged(tmp_path, caplog):
    """A copy at <input>/<slug> used to win silently over the real data in competitions/<slug>, and a
    mirror dataset named like the competition made start-up fail ("expected one folder")."""
    where = Locations(True, tmp_path, tmp_path / "out")
    real = kaggle_competition(tmp_path / "competitions" / SLUG)
    copy = kaggle_competition(tmp_path / SLUG)
    mirror = kaggle_competition(tmp_path / "datasets" / "someone" / SLUG)
    assert where.find_competition_dir() == real
    area = tmp_path / "competitions"
    for other in (copy, mirror):
        assert (
            f"{other} also holds sample_submission.csv + test_images; not taken (not under {area}): "
            f"using {real}" in caplog.text
        )
    assert Locations(True, tmp_path / "datasets", tmp_path / "out").find_competition_dir() == mirror


def test_the_run_and_kaggle_variables(tmp_path):
    kaggle = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_URL_BASE": "https://www.kaggle.com"}
    secrets = {"KAGGLE_USER_SECRETS_TOKEN": "abcdef", "KAGGLE_DATA_PROXY_TOKEN": "xyz", "KAGGLE_KEY": "k"}
    push = locate({**kaggle, **secrets, "HOME": "/root"}, kaggle_input=tmp_path / "absent")
    assert (push.on_kaggle, push.rerun, push.run) == (True, False, "push run")
    assert dict(push.kaggle_env) == {
        **kaggle,
        "KAGGLE_DATA_PROXY_TOKEN": "<set, 3 characters, not shown>",
        "KAGGLE_KEY": "<set, 1 characters, not shown>",
        "KAGGLE_USER_SECRETS_TOKEN": "<set, 6 characters, not shown>",
    }
    rerun = locate({**kaggle, "KAGGLE_IS_COMPETITION_RERUN": "1"}, kaggle_input=tmp_path / "absent")
    assert (rerun.rerun, rerun.run) == (True, "scoring re-run")
    assert locate({"KAGGLE_IS_COMPETITION_RERUN": ""}, kaggle_input=tmp_path / "absent").run == "local run"


def test_listing_shows_two_levels_and_cuts_long_folders(tmp_path):
    (tmp_path / "comp" / "test_images").mkdir(parents=True)
    for i in range(12):
        (tmp_path / "comp" / "test_images" / f"{i:02d}.jpg").write_bytes(b"")
    (tmp_path / "comp" / "sample_submission.csv").write_text("")
    (tmp_path / "my-weights").mkdir()
    assert listing(tmp_path).splitlines() == [
        f"{tmp_path} holds:",
        "  comp/",
        "    sample_submission.csv",
        "    test_images/",
        "  my-weights/",
    ]
    assert listing(tmp_path / "comp" / "test_images").splitlines()[-1] == "  ... and 4 more"
    assert listing(tmp_path / "absent") == f"{tmp_path / 'absent'} does not exist."
    assert listing(tmp_path / "my-weights") == f"{tmp_path / 'my-weights'} is empty."


def test_default_device():
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
