"""Metric: hand-computed cases, agreement with decoded masks, the real sample's known scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steel_seg.formats import rle
from steel_seg.formats.labels import Labels
from steel_seg.formats.metric import dice, score, score_files

SHAPE = (2, 3)  # column-major pixel numbers: [[1, 3, 5], [2, 4, 6]]


def tidy(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])


def test_hand_computed_pairs():
    truth = tidy([("a.jpg", 1, "1 2"), ("a.jpg", 3, "1 3")])
    pred = tidy([("a.jpg", 1, "2 2"), ("a.jpg", 2, "1 1"), ("z.jpg", 1, "1 1")])
    result = score(truth, pred, ["a.jpg", "b.jpg"], SHAPE)
    # a: class 1 Dice 2*1/(2+2) = 0.5; class 2 false positive 0; class 3 missed 0; class 4 both empty 1.
    # b: all four pairs empty = 1. z.jpg is not among the images and is ignored.
    assert result.n_pairs == 8 and result.n_images == 2
    assert result.mean_dice == pytest.approx((0.5 + 0 + 0 + 1 + 4) / 8)
    assert result.per_class == pytest.approx({1: 0.75, 2: 0.5, 3: 0.5, 4: 1.0})
    assert result.empty_truth.n_pairs == 6 and result.empty_truth.mean_dice == pytest.approx(5 / 6)
    assert result.empty_truth.per_class == pytest.approx({1: 1.0, 2: 0.5, 3: 1.0, 4: 1.0})
    assert result.nonempty_truth.n_pairs == 2 and result.nonempty_truth.mean_dice == pytest.approx(0.25)
    assert result.nonempty_truth.per_class == {1: 0.5, 2: None, 3: 0.0, 4: None}
    assert result.nonempty_truth.n_per_class == {1: 1, 2: 0, 3: 1, 4: 0}
    first = result.pairs.iloc[0].to_dict()
    assert first == {
        "ImageId": "a.jpg",
        "ClassId": 1,
        "truth_area": 2,
        "pred_area": 2,
        "intersection": 1,
        "dice": 0.5,
    }


def test_intersection_of_several_runs():
    # truth pixels 1,2,5,6; prediction 2..5: shared 2 and 5 -> Dice 2*2/(4+4)
    result = score(tidy([("a.jpg", 2, "1 2 5 2")]), tidy([("a.jpg", 2, "2 4")]), ["a.jpg"], SHAPE)
    assert result.pairs["intersection"].tolist() == [0, 2, 0, 0]
    assert result.per_class[2] == pytest.approx(0.5)


def test_missing_cells_are_empty_masks():
    pred = pd.DataFrame({"ImageId": ["a.jpg", "a.jpg"], "ClassId": [1, 2], "EncodedPixels": [np.nan, "1 1"]})
    result = score(tidy([("a.jpg", 2, "1 1")]), pred, ["a.jpg"], SHAPE)
    assert result.mean_dice == 1.0


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        score(tidy([]), tidy([]), [], SHAPE)


def test_to_dict_is_json_ready():
    result = score(tidy([]), tidy([]), ["a.jpg"], SHAPE)
    assert result.to_dict()["mean_dice"] == 1.0
    assert result.to_dict()["per_class"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}
    assert result.to_dict()["nonempty_truth"]["mean_dice"] is None


def test_agrees_with_dice_of_decoded_masks():
    rng = np.random.default_rng(0)
    image_ids = [f"{i}.jpg" for i in range(6)]

    def random_table():
        rows = []
        for image_id in image_ids:
            for class_id in range(1, 5):
                encoded = rle.encode(rng.random((7, 5)) < rng.random() * (rng.random() < 0.6))
                if encoded:
                    rows.append((image_id, class_id, encoded))
        return tidy(rows)

    for _ in range(12):
        truth, pred = random_table(), random_table()
        expected = [
            dice(mask_of(pred, image_id, c), mask_of(truth, image_id, c))
            for image_id in image_ids
            for c in range(1, 5)
        ]
        result = score(truth, pred, image_ids, (7, 5))
        np.testing.assert_allclose(result.pairs["dice"], expected)
        assert result.mean_dice == pytest.approx(np.mean(expected))


def mask_of(table: pd.DataFrame, image_id: str, class_id: int) -> np.ndarray:
    encoded = dict(zip(zip(table.ImageId, table.ClassId, strict=True), table.EncodedPixels, strict=True))
    return rle.decode(encoded.get((image_id, class_id), ""), (7, 5))


def test_dice_of_masks():
    a = np.array([[1, 1, 0]], np.uint8)
    assert dice(a, np.array([[0, 1, 1]])) == pytest.approx(0.5)
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((3, 1)))


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([("a.jpg", 1, "1 1"), ("a.jpg", 1, "3 1")], "more than once"),
        ([("a.jpg", 5, "1 1")], "outside 1..4"),
        ([("a.jpg", 2, "4 4")], "prediction: a.jpg class 2: RLE run 4 4 .* past the image"),
    ],
)
def test_bad_tables_raise(rows, problem):
    with pytest.raises(ValueError, match=problem):
        score(tidy([]), tidy(rows), ["a.jpg"], SHAPE)


def test_truth_vs_truth_and_all_empty(synthetic_labels):
    labels = synthetic_labels
    n_pairs, n_masks = 4 * len(labels.image_ids), len(labels.table)
    assert 0 < n_masks < n_pairs
    assert score(labels.table, labels.table, labels.image_ids).mean_dice == 1.0
    empty = score(labels.table, labels.table.iloc[:0], labels.image_ids)
    assert empty.n_pairs == n_pairs and empty.mean_dice == pytest.approx((n_pairs - n_masks) / n_pairs)
    assert empty.nonempty_truth.n_pairs == n_masks and empty.nonempty_truth.mean_dice == 0.0


def test_real_sample_truth_vs_truth_and_all_empty(sample_dir):
    labels = Labels.from_csv(sample_dir / "train.csv")
    assert score(labels.table, labels.table, labels.image_ids).mean_dice == 1.0
    empty = score(labels.table, labels.table.iloc[:0], labels.image_ids)
    assert empty.n_pairs == 108 and empty.mean_dice == pytest.approx(95 / 108)
    assert empty.nonempty_truth.n_pairs == 13 and empty.nonempty_truth.mean_dice == 0.0


def shifted_by_one_pixel(labels: Labels) -> list[float]:
    """The starter-kernel bug (start off by one) on every mask, and each mask's Dice by decoding both."""
    shifted = labels.table.copy()
    shifted["EncodedPixels"] = [
        rle.encode(np.roll(rle.decode(e).T.ravel(), 1).reshape(1600, 256).T) for e in shifted.EncodedPixels
    ]
    result = score(labels.table, shifted, labels.image_ids)
    expected = [
        dice(rle.decode(p), rle.decode(t))
        for t, p in zip(labels.table.EncodedPixels, shifted.EncodedPixels, strict=True)
    ]
    nonempty = result.pairs[result.pairs.truth_area > 0]
    np.testing.assert_allclose(nonempty["dice"], expected)
    return expected


def test_masks_shifted_by_one_pixel(synthetic_labels):
    """Scored exactly as decoding and comparing the masks."""
    expected = shifted_by_one_pixel(synthetic_labels)
    assert len(expected) == len(synthetic_labels.table) and 0.0 < min(expected) < 1.0


def test_real_masks_shifted_by_one_pixel(sample_dir):
    """The real masks lose little to the bug (Dice above 0.9), yet every one loses something."""
    expected = shifted_by_one_pixel(Labels.from_csv(sample_dir / "train.csv"))
    assert 0.9 < min(expected) < 1.0


def test_score_files_image_sets(synthetic_set, synthetic_original, tmp_path):
    """Which images are scored: the truth's, the union of both files' images, or every JPEG of the images
    folder; a prediction that does not match them is refused unless `subset`."""
    train_new = synthetic_set.out_dir / "train.csv"  # re-release layout: defect images only
    stage1 = synthetic_original.out_dir / "sample_submission.csv"  # the 6 test images, `1 1` placeholders
    n_train, n_test = len(synthetic_set.train_ids), len(synthetic_set.test_ids)
    n_defect = n_train - synthetic_set.n_defect_free
    assert score_files(synthetic_original.out_dir / "train.csv", train_new).n_images == n_train
    with pytest.raises(ValueError, match=rf"the prediction has no rows for {n_defect} of the scored images"):
        score_files(train_new, stage1)  # a test-set sample against train truth
    assert score_files(train_new, stage1, subset=True).n_images == n_test
    empty = tmp_path / "empty.csv"
    empty.write_text("ImageId,EncodedPixels,ClassId\n")
    folder = score_files(train_new, empty, images_dir=synthetic_set.out_dir / "train_images")
    n_masks = sum(synthetic_set.class_counts.values())
    assert folder.n_images == n_train and folder.mean_dice == pytest.approx(1 - n_masks / (4 * n_train))
    with pytest.raises(ValueError, match="not a folder of"):
        score_files(synthetic_original.out_dir / "train.csv", stage1, images_dir=tmp_path)
