"""formats.runs: run.json's record of the input files a run read, and the one check that compares them."""

from __future__ import annotations

import hashlib
import json

import pytest

from steel_seg.formats.runs import FOLDS_CSV, TRAIN_CSV, InputFile, RunInfo, check_inputs, fingerprint


@pytest.fixture
def run(tmp_path) -> RunInfo:
    """A run.json as `train` writes it, with its folds.csv and train.csv fingerprinted."""
    for name, text in (("folds.csv", "ImageId,fold\na.jpg,0\nb.jpg,1\n"), ("train.csv", "ImageId,ClassId,"
                       "EncodedPixels\n")):  # fmt: skip
        (tmp_path / name).write_text(text)
    (tmp_path / "images").mkdir()
    (tmp_path / "run" / "best").mkdir(parents=True)
    inputs = fingerprint({FOLDS_CSV: tmp_path / "folds.csv", TRAIN_CSV: tmp_path / "train.csv"})
    info = RunInfo(tmp_path / "run", "run", 1, tmp_path / "folds.csv", tmp_path / "train.csv",
                   tmp_path / "images", inputs=inputs, extra={"spec": {"arch": "Unet"}})  # fmt: skip
    info.save()
    return info


def test_inputs_round_trip_and_the_folds_hash_is_one_attribute(run, tmp_path):
    loaded = RunInfo.load(run.run_dir)
    assert loaded.inputs == run.inputs and loaded.extra == {"spec": {"arch": "Unet"}}
    expected = hashlib.sha256((tmp_path / "folds.csv").read_bytes()).hexdigest()
    assert loaded.folds_sha256 == expected
    saved = json.loads((run.run_dir / "run.json").read_text())["inputs"][FOLDS_CSV]
    assert saved == {"path": str((tmp_path / "folds.csv").resolve()), "sha256": expected}
    assert loaded.check_inputs() == []


def test_a_changed_or_missing_input_names_the_file_and_both_hashes(run, tmp_path):
    before = run.folds_sha256
    (tmp_path / "folds.csv").write_text("ImageId,fold\na.jpg,1\nb.jpg,0\n")
    after = hashlib.sha256((tmp_path / "folds.csv").read_bytes()).hexdigest()
    (tmp_path / "train.csv").unlink()
    with pytest.raises(ValueError) as caught:
        RunInfo.load(run.run_dir, check_paths=False).check_inputs()
    message = str(caught.value)
    assert str(run.run_dir / "run.json") in message and "--allow-changed-inputs" in message
    assert f"{FOLDS_CSV} {(tmp_path / 'folds.csv').resolve()}: sha256 {after}, recorded {before}" in message
    assert f"{TRAIN_CSV} {(tmp_path / 'train.csv').resolve()}: missing" in message
    assert len(check_inputs(run.inputs, "run.json", allow=True)) == 2  # allowed: the changes, for a warning


def test_a_run_recorded_before_fingerprints_loads_with_none(run):
    d = json.loads((run.run_dir / "run.json").read_text())
    del d["inputs"]
    (run.run_dir / "run.json").write_text(json.dumps(d))
    loaded = RunInfo.load(run.run_dir)
    assert loaded.inputs == {} and loaded.folds_sha256 is None and loaded.check_inputs() == []


def test_input_file_of_hashes_the_content(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert InputFile.of(tmp_path / "x").sha256 == hashlib.sha256(b"abc").hexdigest()
