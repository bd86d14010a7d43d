"""Submission: layouts of the real samples, the streaming writer's order, reading and validating.

The behaviour runs on the synthetic set's samples (Kaggle's two layouts, made by the repo); only the checks of
the real Kaggle files need `../shared`.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from steel_seg.competition import SAMPLE_LAYOUTS, Layout
from steel_seg.formats.submission import (
    Sample,
    SubmissionWriter,
    detect_layout,
    read_predictions,
    read_sample,
    validate,
)

IMAGES = ["c.jpg", "a.jpg", "b.jpg"]


def test_real_sample_layouts(sample_dir, tmp_path):
    """The real Kaggle files: both sample submission layouts, both train.csv layouts."""
    final = read_sample(sample_dir / "sample_submission.csv")
    assert final.layout is Layout.FINAL and len(final.image_ids) == 5506
    assert final.image_ids[:2] == ["0000f269f.jpg", "000ccc2ac.jpg"]
    stage1 = read_sample(sample_dir / "sample_submission_stage1.csv")
    assert stage1.layout is Layout.ORIGINAL and len(stage1.image_ids) == 1801
    assert set(stage1.image_ids) <= set(final.image_ids)
    # Kaggle's final sample holds one placeholder row an image (`1 409600`, ClassId 0): no class at all.
    assert read_predictions(sample_dir / "sample_submission.csv").empty
    # The real train.csv in both layouts reads as the same 13 defect rows.
    shutil.copy(sample_dir / "train.csv", tmp_path / "train.csv")
    original = read_predictions(tmp_path / "train.csv")
    pd.testing.assert_frame_equal(original, read_predictions(sample_dir / "train_new_format.csv"))
    assert len(original) == 13


@pytest.fixture(scope="module")
def samples(synthetic_set, synthetic_original) -> dict[str, Path]:
    """The synthetic set's two sample submissions, by the real samples' file names: final and stage 1."""
    return {
        "sample_submission.csv": synthetic_set.out_dir / "sample_submission.csv",
        "sample_submission_stage1.csv": synthetic_original.out_dir / "sample_submission.csv",
    }


def test_detect_layout_rejects_train_csv(synthetic_set):
    with pytest.raises(ValueError, match="train.csv: header 'ImageId,ClassId,EncodedPixels'"):
        detect_layout(synthetic_set.out_dir / "train.csv")


def images_in_partial(writer: SubmissionWriter) -> int:
    """Images whose rows the writer has already put into its `.partial` file (4 rows each)."""
    writer._file.flush()
    partial = writer.path.with_name(writer.path.name + ".partial")
    return (len(partial.read_text().splitlines()) - 1) // 4


@pytest.mark.parametrize("layout", list(SAMPLE_LAYOUTS))
def test_writer_keeps_sample_order_and_fills_missing(tmp_path, layout):
    path = tmp_path / "submission.csv"
    writer = SubmissionWriter(path, Sample(layout, IMAGES))
    writer.write("b.jpg", ["", "1 2", "", ""])
    assert images_in_partial(writer) == 0 and not path.exists()
    writer.write("c.jpg", ["3 1", "", "", "5 2"])
    assert images_in_partial(writer) == 1
    assert writer.close() == ["a.jpg"]
    lines = path.read_text().splitlines()
    assert lines[0] == layout.header and len(lines) == 1 + 4 * 3
    if layout is Layout.ORIGINAL:
        assert lines[1:5] == ["c.jpg_1,3 1", "c.jpg_2,", "c.jpg_3,", "c.jpg_4,5 2"]
        assert lines[10] == "b.jpg_2,1 2"
    else:
        assert lines[1:5] == ["c.jpg,3 1,1", "c.jpg,,2", "c.jpg,,3", "c.jpg,5 2,4"]
        assert lines[5:9] == [f"a.jpg,,{c}" for c in range(1, 5)]
        assert lines[10] == "b.jpg,1 2,2"
    table = read_predictions(path)
    assert table.to_dict("records") == [
        {"ImageId": "b.jpg", "ClassId": 2, "EncodedPixels": "1 2"},
        {"ImageId": "c.jpg", "ClassId": 1, "EncodedPixels": "3 1"},
        {"ImageId": "c.jpg", "ClassId": 4, "EncodedPixels": "5 2"},
    ]


def test_writer_rejects_unknown_twice_and_bad_rows(tmp_path):
    with SubmissionWriter(tmp_path / "s.csv", Sample(Layout.FINAL, IMAGES)) as writer:
        writer.write("a.jpg", [""] * 4)
        with pytest.raises(ValueError, match="z.jpg is not in the sample"):
            writer.write("z.jpg", [""] * 4)
        with pytest.raises(ValueError, match="a.jpg written twice"):
            writer.write("a.jpg", [""] * 4)
        with pytest.raises(ValueError, match="expected 4 RLE strings"):
            writer.write("b.jpg", [""] * 3)
        with pytest.raises(ValueError, match="b.jpg class 2: RLE has an odd number"):
            writer.write("b.jpg", ["", "1", "", ""])
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 13
    assert writer.close() == ["c.jpg", "b.jpg"]


def test_writer_exception_leaves_no_file(tmp_path):
    path = tmp_path / "s.csv"
    with pytest.raises(RuntimeError), SubmissionWriter(path, Sample(Layout.ORIGINAL, IMAGES)) as writer:
        writer.write("c.jpg", [""] * 4)
        raise RuntimeError("inference failed")
    assert list(tmp_path.iterdir()) == []


def write_full(path, sample: Sample):
    with SubmissionWriter(path, sample) as writer:
        for image_id in sample.image_ids:
            writer.write(image_id, ["1 10", "", "", "300 5"])


@pytest.mark.parametrize("name", ["sample_submission.csv", "sample_submission_stage1.csv"])
def test_complete_submission_is_valid(tmp_path, samples, name):
    path = tmp_path / "submission.csv"
    sample = read_sample(samples[name])
    assert sample.layout is (Layout.FINAL if name == "sample_submission.csv" else Layout.ORIGINAL)
    write_full(path, sample)
    assert validate(path, samples[name]) == []


def test_final_sample_placeholders_read_as_no_class_and_are_reported(samples, synthetic_set):
    sample = samples["sample_submission.csv"]
    first = synthetic_set.test_ids[0]
    assert read_predictions(sample).empty
    problems = validate(sample, sample)
    placeholder = f"line 2: ClassId '0' (the sample's placeholder) of {first} is not one of 1, 2, 3, 4"
    assert problems[0] == placeholder
    assert f"image {first} has no row for ClassId 1, 2, 3, 4" in problems


def test_validate_lists_every_problem(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 409600,0\n" for i in IMAGES))
    rows = [("c.jpg", "", c) for c in (1, 2, 3, 4)] + [("a.jpg", "", c) for c in (1, 2, 3)]
    rows += [("a.jpg", "1 2", 3), ("a.jpg", "1 2 3", 4), ("x.jpg", "", 1), ("c.jpg", "", 5)]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "ClassId"]).to_csv(
        tmp_path / "s.csv", index=False
    )
    assert validate(tmp_path / "s.csv", sample) == [
        "line 9: a.jpg class 3 given twice (first on line 8)",
        "line 10: a.jpg class 4: RLE has an odd number of values (3); expected start/length pairs",
        "line 12: ClassId '5' of c.jpg is not one of 1, 2, 3, 4",
        "line 11: image x.jpg is not in the sample",
        "image b.jpg is missing",
    ]


def test_validate_reports_header_of_another_layout(tmp_path, samples):
    stage1 = tmp_path / "stage1.csv"
    write_full(stage1, Sample(Layout.ORIGINAL, read_sample(samples["sample_submission.csv"]).image_ids))
    problems = validate(stage1, samples["sample_submission.csv"])
    assert problems == [
        "header is the original layout; the sample's is FINAL ('ImageId,EncodedPixels,ClassId')"
    ]


def test_validate_raises_on_unreadable_submission(tmp_path, samples):
    bad = tmp_path / "s.csv"
    bad.write_text("Image,Pixels\n")
    with pytest.raises(ValueError, match="s.csv: unknown columns Image,Pixels"):
        validate(bad, samples["sample_submission.csv"])


def test_read_predictions_reads_train_layouts(tmp_path, synthetic_set, synthetic_original):
    """Both train.csv layouts read as the same defect rows, whatever order the file's rows come in."""
    lines = (synthetic_original.out_dir / "train.csv").read_text().splitlines()
    body = lines[1:]
    random.Random(0).shuffle(body)
    (tmp_path / "train.csv").write_text("\n".join([lines[0], *body]) + "\n")
    original = read_predictions(tmp_path / "train.csv")
    pd.testing.assert_frame_equal(original, read_predictions(synthetic_set.out_dir / "train.csv"))
    assert len(original) == sum(synthetic_set.class_counts.values())


def test_writer_without_rle_check_trusts_encoded_strings(tmp_path):
    """`check_rle=False` (for the engine's own `rle.encode` output) skips the parse; `validate` does not."""
    sample_csv = tmp_path / "sample.csv"
    with SubmissionWriter(sample_csv, Sample(Layout.FINAL, IMAGES)):
        pass
    path = tmp_path / "s.csv"
    with SubmissionWriter(path, Sample(Layout.FINAL, IMAGES), check_rle=False) as writer:
        writer.write("a.jpg", ["", "1", "", ""])
        with pytest.raises(ValueError, match="a.jpg written twice"):
            writer.write("a.jpg", [""] * 4)
    assert any("a.jpg class 2" in problem for problem in validate(path, sample_csv))
