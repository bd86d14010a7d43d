"""Labels: both train.csv layouts of the real sample agree; bad files fail naming file and line.

Behaviour runs on the synthetic set (both layouts, made by the repo); the real sample's facts need ../shared.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from steel_seg.competition import Layout
from steel_seg.formats import rle
from steel_seg.formats.labels import Labels, read_label_file, read_train_csv


def test_both_layouts_of_the_sample_agree(sample_dir):
    original = Labels.from_csv(sample_dir / "train.csv")
    rereleased = Labels.from_csv(sample_dir / "train_new_format.csv", images_dir=sample_dir / "train_images")
    assert len(original.table) == 13
    assert list(original.table.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    pd.testing.assert_frame_equal(original.table, rereleased.table)
    assert original.image_ids == rereleased.image_ids
    assert len(original.image_ids) == 27 and original.image_ids == sorted(original.image_ids)
    for image_id in original.image_ids:
        np.testing.assert_array_equal(original.masks(image_id), rereleased.masks(image_id))
    # Without the images folder the re-release layout knows only the 12 images with a defect.
    assert len(Labels.from_csv(sample_dir / "train_new_format.csv").image_ids) == 12


def test_rerelease_without_images_dir_knows_only_defect_images(synthetic_set):
    labels = Labels.from_csv(synthetic_set.out_dir / "train.csv")
    defect_images = sorted(set(labels.table["ImageId"]))
    assert labels.image_ids == defect_images
    assert len(defect_images) == len(synthetic_set.train_ids) - synthetic_set.n_defect_free
    assert synthetic_set.n_defect_free > 0


def test_presence_and_masks_match_the_index(sample_dir):
    labels = Labels.from_csv(sample_dir / "train.csv")
    index = pd.read_csv(sample_dir / "train_index_full_12568.csv").set_index("image_id")
    presence = labels.presence()
    assert list(presence.columns) == [1, 2, 3, 4] and presence.index.name == "ImageId"
    assert presence.sum().tolist() == [3, 1, 8, 1]
    for image_id in labels.image_ids:
        masks = labels.masks(image_id)
        assert masks.shape == (4, 256, 1600) and masks.dtype == np.uint8
        expected_area = [index.loc[image_id, f"area_class_{c}"] for c in range(1, 5)]
        assert masks.sum(axis=(1, 2)).tolist() == expected_area
        assert presence.loc[image_id].tolist() == [a > 0 for a in expected_area]


def test_unknown_image_is_a_key_error(synthetic_original):
    with pytest.raises(KeyError, match="nope.jpg"):
        Labels.from_csv(synthetic_original.out_dir / "train.csv").masks("nope.jpg")


@pytest.mark.parametrize("which", ["synthetic_set", "synthetic_original"])
def test_read_train_csv_is_the_tidy_table(tmp_path, request, which):
    """Defect rows only, sorted by image then class, whatever the layout and the file's row order."""
    made = request.getfixturevalue(which)
    header, *body = (made.out_dir / "train.csv").read_text().splitlines()
    random.Random(0).shuffle(body)
    path = tmp_path / "train.csv"
    path.write_text("\n".join([header, *body]) + "\n")
    table = read_train_csv(path)
    pairs = list(zip(table["ImageId"], table["ClassId"], strict=True))
    assert pairs == sorted(pairs) and len(pairs) == sum(made.class_counts.values())
    assert set(table["ClassId"]) == {1, 2, 3, 4}
    assert list(table.columns) == ["ImageId", "ClassId", "EncodedPixels"] and table["EncodedPixels"].all()


def test_submission_layouts_read_too(sample_dir):
    final = read_label_file(sample_dir / "sample_submission.csv", class_zero=True)
    assert final.layout is Layout.FINAL and len(final.image_ids) == 5506 and final.table.empty
    stage1 = read_label_file(sample_dir / "sample_submission_stage1.csv")
    assert (
        stage1.layout is Layout.ORIGINAL and len(stage1.image_ids) == 1801 and len(stage1.table) == 4 * 1801
    )


def write(tmp_path, text: str):
    path = tmp_path / "train.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ImageId,Class,EncodedPixels\na.jpg,1,1 2\n", "unknown columns ImageId,Class,EncodedPixels"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nb.jpg,5,1 2\n", "line 3: ClassId '5'"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,0,1 2\n", "line 2: ClassId '0'"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg,1 2\n", "line 3: ClassId ''"),
        (
            "ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_1,1 2\n",
            "line 3: a.jpg class 1 given twice .*line 2",
        ),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\n\na.jpg,2,1 2 3\n", "line 4: RLE has an odd number"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1,409600 2\n", "line 2: RLE run .* past the image"),
        ("ImageId,ClassId,EncodedPixels\n,1,1 2\n", "line 2: empty ImageId"),
        ("", "not a readable CSV"),
    ],
)
def test_bad_files_name_file_line_and_problem(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=f"{path}.*{problem}"):
        Labels.from_csv(path)


def test_missing_file_and_missing_images_dir(tmp_path, synthetic_original):
    with pytest.raises(ValueError, match="no such file"):
        read_train_csv(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="not a directory"):
        Labels.from_csv(synthetic_original.out_dir / "train.csv", images_dir=tmp_path / "absent")


def test_small_shape_and_blank_lines(tmp_path):
    path = write(tmp_path, "ImageId_ClassId,EncodedPixels\nb.jpg_2,3 2\n\nb.jpg_1,\nc.jpg_4,\n")
    labels = Labels.from_csv(path, shape=(2, 3))
    assert labels.image_ids == ["b.jpg", "c.jpg"]
    assert labels.table.to_dict("records") == [{"ImageId": "b.jpg", "ClassId": 2, "EncodedPixels": "3 2"}]
    np.testing.assert_array_equal(labels.masks("b.jpg")[1], rle.decode("3 2", (2, 3)))
    assert not labels.masks("c.jpg").any()


@pytest.mark.parametrize("layout", [Layout.ORIGINAL, Layout.RERELEASE])
def test_a_header_only_file_names_no_image(tmp_path, layout):
    """E.g. a pseudo-label selection that kept no image."""
    found = read_label_file(write(tmp_path, layout.header + "\n"))
    assert found.image_ids == [] and found.table.empty and found.layout is layout
    assert list(found.table.columns) == ["ImageId", "ClassId", "EncodedPixels"]
