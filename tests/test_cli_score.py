"""`steel-seg score` and `steel-seg validate`, through `main` and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_UNET

from steel_seg.cli import main
from steel_seg.formats.submission import SubmissionWriter, read_sample
from steel_seg.models import factory
from steel_seg.models.manifest import write_manifest
from steel_seg.postprocess.rules import ClassRule, Rules


def final_sample(path: Path, image_ids: list[str]) -> Path:
    """A final-layout sample_submission.csv in Kaggle's own style: `ImageId,1 409600,0` an image."""
    path.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 409600,0\n" for i in image_ids))
    return path


def test_score_json_on_mixed_layouts(synthetic_set, synthetic_original, capsys):
    truth, pred = synthetic_original.out_dir / "train.csv", synthetic_set.out_dir / "train.csv"
    assert main(["score", "--truth", str(truth), "--pred", str(pred), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    assert out.count("\n") == 1
    assert result["mean_dice"] == 1.0 and result["n_pairs"] == 4 * len(synthetic_set.train_ids) == 108
    assert result["per_class"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}


def test_score_table_of_an_empty_submission(synthetic_set, tmp_path, capsys):
    empty = tmp_path / "submission.csv"
    empty.write_text("ImageId,EncodedPixels,ClassId\n")
    data = synthetic_set.out_dir
    args = ["--truth", str(data / "train.csv"), "--pred", str(empty)]
    assert main(["score", *args, "--images", str(data / "train_images")]) == 0
    out = capsys.readouterr().out
    n_masks = sum(synthetic_set.class_counts.values())
    n_pairs = 4 * len(synthetic_set.train_ids)
    mean = (n_pairs - n_masks) / n_pairs
    assert 0 < n_masks < n_pairs
    assert out.splitlines()[0] == f"mean Dice {mean:.5f} over {n_pairs} pairs ({n_pairs // 4} images)"
    assert f"  all  {mean:.5f}  1.00000 ({n_pairs - n_masks:7d})  0.00000 ({n_masks:7d})" in out


def test_score_reports_bad_input(synthetic_original, tmp_path, capsys):
    bad = tmp_path / "pred.csv"
    bad.write_text("ImageId,ClassId,EncodedPixels\na.jpg,7,1 2\n")
    truth = synthetic_original.out_dir / "train.csv"
    assert main(["score", "--truth", str(truth), "--pred", str(bad)]) == 2
    assert f"{bad}: line 2: ClassId '7'" in capsys.readouterr().err


def test_validate_exit_codes(synthetic_set, synthetic_original, tmp_path, capsys):
    sample = synthetic_original.out_dir / "sample_submission.csv"  # stage 1 (original) layout
    good = tmp_path / "submission.csv"
    with SubmissionWriter(good, read_sample(sample)):
        pass
    assert main(["validate", "--sample", str(sample), "--pred", str(good)]) == 0
    assert "valid submission" in capsys.readouterr().out
    # Like Kaggle's final sample: the stage-1 images and more, so the stage-1 submission misses images.
    extra = synthetic_set.train_ids
    final = final_sample(tmp_path / "final.csv", sorted(synthetic_original.test_ids + extra))
    assert main(["validate", "--sample", str(final), "--pred", str(good), "--max-problems", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(
        "header is the original layout; the sample's is FINAL ('ImageId,EncodedPixels,ClassId')"
    )
    assert out[-2:] == [f"... and {1 + len(extra) - 2} more", f"{good}: {1 + len(extra)} problem(s)"]
    assert main(["validate", "--sample", str(final), "--pred", str(tmp_path / "absent.csv")]) == 2


@pytest.mark.slow
def test_score_as_a_subprocess(synthetic_original):
    exe = Path(sys.executable).parent / "steel-seg"
    if not exe.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    truth = synthetic_original.out_dir / "train.csv"
    args = ["score", "--truth", str(truth), "--pred", str(truth), "--json"]
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout)["mean_dice"] == 1.0


def test_a_prediction_whose_images_do_not_match_is_refused(synthetic_set, tmp_path, capsys):
    """Ids without .jpg, or images left out, used to be scored over whatever overlapped, exit 0."""
    sample, truth, images = (
        synthetic_set.out_dir / "sample_submission.csv",
        synthetic_set.out_dir / "test_truth.csv",
        synthetic_set.out_dir / "test_images",
    )
    ids = read_sample(sample).image_ids
    complete = tmp_path / "complete.csv"
    SubmissionWriter(complete, read_sample(sample), final_format="pairs").close()
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


def test_score_says_which_images_a_limited_run_did_not_predict(synthetic_set, tmp_path, capsys):
    """A `--limit 2` dry run used to be scored as if the model had predicted "no defect" everywhere else."""
    weights, data = tmp_path / "weights", synthetic_set.out_dir
    torch.manual_seed(0)
    factory.save(factory.build_model(TINY_UNET), TINY_UNET, weights / "tiny")
    write_manifest(weights, ["tiny"], tta=("none",))
    Rules(tuple(ClassRule(k, 0.0) for k in range(1, 5))).save(weights / "thresholds.json")
    out = tmp_path / "submission.csv"
    assert main(["predict", "--weights-dir", str(weights), "--images", str(data / "test_images"), "--sample",
                 str(data / "sample_submission.csv"), "--out", str(out), "--device", "cpu", "--workers", "0",
                 "--limit", "2", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    base = ["score", "--truth", str(data / "test_truth.csv"), "--images", str(data / "test_images")]
    assert main([*base, "--pred", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rest = len(synthetic_set.test_ids) - 2
    assert printed[-2] == (
        f"note: the run that wrote {out} did not predict {rest} of these images (limit: {rest}): they are "
        "scored above as empty predictions"
    )
    assert printed[-1].startswith("mean Dice ") and printed[-1].endswith(
        " over the 2 predicted images (8 pairs)"
    )
    assert main([*base, "--pred", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["not_predicted"] == {"limit": rest} and result["predicted_only"]["n_images"] == 2
    SubmissionWriter(out, read_sample(data / "sample_submission.csv")).close()  # another file, same name
    assert main([*base, "--pred", str(out)]) == 0
    captured = capsys.readouterr()
    assert "note: the run" not in captured.out
    assert (
        "submission.run.json: ignored, it describes another submission.csv (sha256 differs)" in captured.err
    )
