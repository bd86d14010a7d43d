"""`steel-seg score` and `steel-seg validate`, through `main` and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steel_seg.cli import main
from steel_seg.submission import SubmissionWriter, read_sample


def test_score_json_on_mixed_layouts(sample_dir, capsys):
    assert (
        main(
            [
                "score",
                "--truth",
                str(sample_dir / "train.csv"),
                "--pred",
                str(sample_dir / "train_new_format.csv"),
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    result = json.loads(out)
    assert out.count("\n") == 1
    assert result["mean_dice"] == 1.0 and result["n_pairs"] == 108
    assert result["per_class"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}


def test_score_table_of_an_empty_submission(sample_dir, tmp_path, capsys):
    empty = tmp_path / "submission.csv"
    empty.write_text("ImageId,EncodedPixels,ClassId\n")
    args = ["--truth", str(sample_dir / "train_new_format.csv"), "--pred", str(empty)]
    assert main(["score", *args, "--images", str(sample_dir / "train_images")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "mean Dice 0.87963 over 108 pairs (27 images)"
    assert "  all  0.87963  1.00000 (     95)  0.00000 (     13)" in out


def test_score_reports_bad_input(sample_dir, tmp_path, capsys):
    bad = tmp_path / "pred.csv"
    bad.write_text("ImageId,ClassId,EncodedPixels\na.jpg,7,1 2\n")
    assert main(["score", "--truth", str(sample_dir / "train.csv"), "--pred", str(bad)]) == 2
    assert f"{bad}: line 2: ClassId '7'" in capsys.readouterr().err


def test_validate_exit_codes(sample_dir, tmp_path, capsys):
    sample = sample_dir / "sample_submission_stage1.csv"
    good = tmp_path / "submission.csv"
    with SubmissionWriter(good, read_sample(sample)):
        pass
    assert main(["validate", "--sample", str(sample), "--pred", str(good)]) == 0
    assert "valid submission" in capsys.readouterr().out
    final = sample_dir / "sample_submission.csv"
    assert main(["validate", "--sample", str(final), "--pred", str(good), "--max-problems", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(
        "header is the original layout; the sample's is FINAL ('ImageId,EncodedPixels,ClassId')"
    )
    assert out[-2:] == ["... and 3704 more", f"{good}: 3706 problem(s)"]
    assert main(["validate", "--sample", str(final), "--pred", str(tmp_path / "absent.csv")]) == 2


@pytest.mark.slow
def test_score_as_a_subprocess(sample_dir):
    exe = Path(sys.executable).parent / "steel-seg"
    if not exe.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    args = [
        "score",
        "--truth",
        str(sample_dir / "train.csv"),
        "--pred",
        str(sample_dir / "train.csv"),
        "--json",
    ]
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout)["mean_dice"] == 1.0


def test_a_prediction_whose_images_do_not_match_is_refused(tiny_set, tmp_path, capsys):
    """Ids without .jpg, or images left out, used to be scored over whatever overlapped, exit 0."""
    sample, truth, images = (
        tiny_set / "sample_submission.csv",
        tiny_set / "test_truth.csv",
        tiny_set / "test_images",
    )
    ids = read_sample(sample).image_ids
    complete = tmp_path / "complete.csv"
    SubmissionWriter(complete, read_sample(sample)).close()
    lines = complete.read_text().splitlines()
    no_suffix = tmp_path / "no_suffix.csv"
    no_suffix.write_text("\n".join([lines[0], *(line.replace(".jpg", "", 1) for line in lines[1:])]) + "\n")
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-8]) + "\n")  # the last two images' rows are missing
    base = ["score", "--truth", str(truth), "--images", str(images)]
    assert main([*base, "--pred", str(complete)]) == 0
    assert main([*base, "--pred", str(no_suffix)]) == 2
    err = capsys.readouterr().err
    assert f"the prediction has {len(ids)} image id(s) without .jpg" in err and "--subset" in err
    assert main([*base, "--pred", str(short)]) == 2
    assert (
        f"the prediction has no rows for 2 of the scored images, e.g. {sorted(ids[-2:])}"
        in capsys.readouterr().err
    )
    assert main([*base, "--pred", str(short), "--subset", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == len(ids) - 2
