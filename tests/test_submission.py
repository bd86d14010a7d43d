"""Submission: layouts of the real samples, the streaming writer's order, reading and validating.

The behaviour runs on the synthetic set's samples (Kaggle's two layouts, made by the repo); only the checks of
the real Kaggle files need `../shared`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from steel_seg.competition import Layout
from steel_seg.formats.submission import (
    Sample,
    SubmissionWriter,
    detect_layout,
    read_predictions,
    read_record,
    read_sample,
    record_path,
    validate,
    write_best,
    write_record,
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
    """Images whose rows the writer has already put into its `.partial` file."""
    writer._file.flush()
    partial = writer.path.with_name(writer.path.name + ".partial")
    return len({line.split(",")[0].rsplit("_", 1)[0] for line in partial.read_text().splitlines()[1:]})


WRITTEN = {  # the rows of c (3 1 | - | - | 5 2), a (never written) and b (- | 1 2 | - | -), per form
    (Layout.ORIGINAL, "sample-like"): ["c.jpg_1,3 1", "c.jpg_2,", "c.jpg_3,", "c.jpg_4,5 2"]
    + [f"a.jpg_{c}," for c in range(1, 5)]
    + ["b.jpg_1,", "b.jpg_2,1 2", "b.jpg_3,", "b.jpg_4,"],
    (Layout.FINAL, "pairs"): ["c.jpg,3 1,1", "c.jpg,,2", "c.jpg,,3", "c.jpg,5 2,4"]
    + [f"a.jpg,,{c}" for c in range(1, 5)]
    + ["b.jpg,,1", "b.jpg,1 2,2", "b.jpg,,3", "b.jpg,,4"],
    (Layout.FINAL, "sample-like"): ["c.jpg,3 1,1", "c.jpg,5 2,4", "a.jpg,1 409600,0", "b.jpg,1 2,2"],
}


@pytest.mark.parametrize(("layout", "final_format"), list(WRITTEN))
def test_writer_keeps_sample_order_and_fills_missing(tmp_path, layout, final_format):
    path = tmp_path / "submission.csv"
    writer = SubmissionWriter(path, Sample(layout, IMAGES), final_format=final_format)
    writer.write("b.jpg", ["", "1 2", "", ""])
    assert images_in_partial(writer) == 0 and not path.exists()
    writer.write("c.jpg", ["3 1", "", "", "5 2"])
    assert images_in_partial(writer) == 1
    assert writer.close() == ["a.jpg"]
    lines = path.read_text().splitlines()
    assert lines == [layout.header, *WRITTEN[(layout, final_format)]]
    assert "" not in ",".join(lines[1:]).split(",") or final_format == "pairs" or layout is Layout.ORIGINAL
    table = read_predictions(path)
    assert table.to_dict("records") == [
        {"ImageId": "b.jpg", "ClassId": 2, "EncodedPixels": "1 2"},
        {"ImageId": "c.jpg", "ClassId": 1, "EncodedPixels": "3 1"},
        {"ImageId": "c.jpg", "ClassId": 4, "EncodedPixels": "5 2"},
    ]
    assert validate(path, _sample(tmp_path, layout), final_format=final_format) == []


def _sample(tmp_path: Path, layout: Layout) -> Path:
    """A Kaggle-style sample of IMAGES in `layout`."""
    path = tmp_path / f"sample_{layout.value}.csv"
    if layout is Layout.FINAL:
        rows = [f"{i},1 409600,0" for i in IMAGES]
    else:
        rows = [f"{i}_{c},1 1" for i in IMAGES for c in range(1, 5)]
    path.write_text("\n".join([layout.header, *rows]) + "\n")
    return path


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
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 1 + 3  # sample-like: one row per empty image
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


def test_final_sample_placeholders_read_as_no_class(samples, synthetic_set):
    """The final sample is itself a valid sample-like submission (all empty); the pairs form reports it."""
    sample = samples["sample_submission.csv"]
    first = synthetic_set.test_ids[0]
    assert read_predictions(sample).empty
    assert validate(sample, sample) == validate(sample, sample, final_format="sample-like") == []
    problems = validate(sample, sample, final_format="pairs")
    hint = "(the sample's placeholder, written by the sample-like form)"
    assert problems[0] == f"line 2: ClassId '0' {hint} of {first} is not one of 1, 2, 3, 4"
    assert f"image {first} has no row for ClassId 1, 2, 3, 4" in problems


def test_validate_lists_every_problem(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 409600,0\n" for i in IMAGES))
    rows = [("c.jpg", "", c) for c in (1, 2, 3, 4)] + [("a.jpg", "", c) for c in (1, 2, 3)]
    rows += [("a.jpg", "1 2", 3), ("a.jpg", "1 2 3", 4), ("x.jpg", "", 1), ("c.jpg", "", 5)]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "ClassId"]).to_csv(
        tmp_path / "s.csv", index=False
    )
    assert validate(tmp_path / "s.csv", sample, final_format="pairs") == [
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


def test_validate_sample_like_lists_its_own_problems(tmp_path):
    sample = _sample(tmp_path, Layout.FINAL)
    rows = [("c.jpg", "", 1), ("c.jpg", "3 1", 2), ("a.jpg", "1 409600", 0), ("a.jpg", "1 5", 3)]
    rows += [("b.jpg", "1 400", 0)]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "ClassId"]).to_csv(
        tmp_path / "s.csv", index=False
    )
    assert validate(tmp_path / "s.csv", sample, final_format="sample-like") == [
        "line 2: c.jpg class 1: empty EncodedPixels (the sample-like form writes defect rows only; pairs has "
        "empty cells)",
        "line 6: b.jpg class 0: '1 400', expected '1 409600' as in the sample",
        "image a.jpg has a ClassId 0 (no defect) row and defect rows",
    ]


@pytest.mark.parametrize("final_format", ["sample-like", "pairs"])
def test_both_final_forms_score_the_same(synthetic_set, tmp_path, final_format):
    """The same masks in either form read back as the same defect rows: `steel-seg score` cannot tell."""
    sample = read_sample(synthetic_set.out_dir / "sample_submission.csv")
    truth = read_predictions(synthetic_set.out_dir / "test_truth.csv")
    path = tmp_path / "s.csv"
    with SubmissionWriter(path, sample, final_format=final_format) as writer:
        for image_id in sample.image_ids:
            mine = truth[truth["ImageId"] == image_id]
            rles = ["", "", "", ""]
            for class_id, encoded in mine[["ClassId", "EncodedPixels"]].itertuples(index=False):
                rles[class_id - 1] = encoded
            writer.write(image_id, rles)
    pd.testing.assert_frame_equal(read_predictions(path), truth)
    assert validate(path, synthetic_set.out_dir / "sample_submission.csv", final_format=final_format) == []


def test_the_writer_rejects_an_unknown_final_format(tmp_path):
    with pytest.raises(ValueError, match="final format 'rows': expected one of sample-like, pairs"):
        SubmissionWriter(tmp_path / "s.csv", Sample(Layout.FINAL, IMAGES), final_format="rows")


class NoSpace:
    """A file whose writes fail as on a full disk (ENOSPC) once `limit` characters were written."""

    def __init__(self, file, limit: int):
        self.file, self.limit, self.written = file, limit, 0

    def write(self, text: str) -> int:
        self.written += len(text)
        if self.written > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.file.close()


def test_a_full_disk_leaves_no_partial_file_and_the_old_submission(tmp_path):
    """ENOSPC mid-write (injected: any user can run it; the tmpfs test below makes a real full disk)."""
    path = tmp_path / "submission.csv"
    path.write_text("an earlier submission\n")
    writer = SubmissionWriter(path, Sample(Layout.ORIGINAL, IMAGES))
    writer._file = NoSpace(writer._file, limit=60)
    writer.write("c.jpg", ["3 1", "", "", ""])
    with pytest.raises(OSError, match=rf"{path}: cannot write the submission \(No space left on device\)"):
        writer.write("a.jpg", ["1 2"] * 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]
    assert path.read_text() == "an earlier submission\n"
    with pytest.raises(OSError, match="cannot write the submission"):
        writer.close()  # the failure stays: the caller's clean-up cannot mistake it for a finished file


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs filled to the last byte, with an earlier submission on it (root only: mount)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mount / "submission.csv").write_text("an earlier submission\n")
        with open(mount / "filler", "wb", buffering=0) as filler, pytest.raises(OSError, match="No space"):
            while True:
                filler.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_leaves_no_partial_file(full_disk):
    path = full_disk / "submission.csv"
    images = [f"{i:04d}.jpg" for i in range(400)]
    no_space = rf"{path}: cannot write the submission \(No space left on device\)"
    writer = SubmissionWriter(path, Sample(Layout.FINAL, images), final_format="pairs")
    with pytest.raises(OSError, match=no_space), writer:
        for image_id in images:
            writer.write(image_id, ["1 2", "", "", ""])
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "submission.csv"]
    assert path.read_text() == "an earlier submission\n"


def test_write_best_keeps_every_good_row_and_empties_the_rest(tmp_path):
    sample = _sample(tmp_path, Layout.FINAL)
    broken = tmp_path / "broken.csv"
    rows = ["ImageId,EncodedPixels,ClassId", "c.jpg,3 1,1", "c.jpg,1 2 3,2", "x.jpg,1 2,1", "a.jpg,5 9,4"]
    rows += ["a.jpg,7 1,4", "b.jpg,1 2,9"]
    broken.write_text("\n".join(rows) + "\n")
    out = tmp_path / "submission.csv"
    assert write_best(out, sample, broken) == 2
    assert validate(out, sample) == []
    assert out.read_text().splitlines()[1:] == ["c.jpg,3 1,1", "a.jpg,5 9,4", "b.jpg,1 409600,0"]
    assert write_best(out, sample) == 0  # nothing to keep: every image empty, still valid
    assert validate(out, sample) == [] and read_predictions(out).empty
    broken.write_text("not,a,submission\n")
    assert write_best(out, sample, broken) == 0 and validate(out, sample) == []


def test_the_record_is_bound_to_the_submission_it_describes(tmp_path):
    path = tmp_path / "submission.csv"
    SubmissionWriter(path, Sample(Layout.FINAL, IMAGES)).close()
    assert read_record(path) == (None, None)
    write_record(path, 3, {"limit": ["a.jpg", "b.jpg"], "deadline": []})
    record = json.loads(record_path(path).read_text())
    assert record_path(path).name == "submission.run.json"
    assert record == {
        "submission": "submission.csv",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "images": 3,
        "not_predicted": {"limit": ["a.jpg", "b.jpg"]},
    }
    assert read_record(path) == (record, None)
    path.write_text(path.read_text() + "c.jpg,1 1,1\n")  # another file now: the record no longer applies
    none, why = read_record(path)
    assert (
        none is None
        and why == f"{record_path(path)}: ignored, it describes another submission.csv (sha256 differs)"
    )
