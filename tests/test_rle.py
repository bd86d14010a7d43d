"""RLE: exact Kaggle convention, round trips on real and generated masks, every malformed case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steel_seg.formats import rle


def real_masks(sample_dir):
    """(ImageId, ClassId, RLE) of the 13 real masks, with the index's pixel area of each."""
    table = pd.read_csv(sample_dir / "train_new_format.csv")
    index = pd.read_csv(sample_dir / "train_index_full_12568.csv").set_index("image_id")
    areas = [index.loc[i, f"area_class_{c}"] for i, c in zip(table.ImageId, table.ClassId, strict=True)]
    return list(zip(table.EncodedPixels, areas, strict=True))


def test_real_masks_round_trip_and_match_index_area(sample_dir):
    masks = real_masks(sample_dir)
    assert len(masks) == 13
    for encoded, area in masks:
        mask = rle.decode(encoded)
        assert mask.shape == (256, 1600) and mask.dtype == np.uint8 and mask.flags.c_contiguous
        assert int(mask.sum()) == area
        assert rle.encode(mask) == encoded


def test_convention_is_one_based_column_major():
    mask = np.zeros((4, 3), np.uint8)
    mask[0, 0] = 1  # pixel 1
    mask[2:4, 0] = 1  # pixels 3, 4
    mask[0, 1] = 1  # pixel 5: continues the run 3 4 down into the next column
    mask[3, 2] = 1  # pixel 12, the last
    assert rle.encode(mask) == "1 1 3 3 12 1"
    np.testing.assert_array_equal(rle.decode("1 1 3 3 12 1", (4, 3)), mask)


def test_empty_full_first_last_single_column():
    shape = (256, 1600)
    empty = np.zeros(shape, np.uint8)
    assert rle.encode(empty) == ""
    np.testing.assert_array_equal(rle.decode("", shape), empty)
    np.testing.assert_array_equal(rle.decode("  ", shape), empty)
    for blank in ["", " ", "   ", "\t"]:
        assert all(part.size == 0 for part in rle.runs(blank))
        assert all(part.size == 0 for part in rle.runs_many([blank, blank]))
    assert rle.encode(np.ones(shape, bool)) == "1 409600"
    assert rle.decode("1 409600").all()
    corners = empty.copy()
    corners[0, 0] = corners[-1, -1] = 1
    assert rle.encode(corners) == "1 1 409600 1"
    column = empty.copy()
    column[:, 7] = 1
    assert rle.encode(column) == f"{7 * 256 + 1} 256"


def test_non_binary_values_count_as_on():
    mask = np.array([[0, 255], [3, 0]], np.uint8)
    assert rle.encode(mask) == "2 2"
    assert rle.encode(mask.astype(np.float32)) == "2 2"


def test_many_round_trip():
    rng = np.random.default_rng(0)
    masks = (rng.random((4, 16, 20)) < 0.3).astype(np.uint8)
    masks[2] = 0
    encoded = rle.encode_many(masks)
    assert len(encoded) == 4 and encoded[2] == ""
    np.testing.assert_array_equal(rle.decode_many(encoded, (16, 20)), masks)


def test_decode_many_names_the_bad_string():
    with pytest.raises(ValueError, match="RLE #1: .*odd"):
        rle.decode_many(["1 2", "3"], (4, 4))


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="shape"):
        rle.encode(np.zeros((2, 3, 4)))


@pytest.mark.parametrize(
    ("encoded", "problem"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "not a non-negative integer"),
        ("1 2.5", "not a non-negative integer"),
        ("1 -2", "negative"),
        ("0 2", "1-based"),
        ("1 0", "zero length"),
        ("5 2 1 2", "out of order"),
        ("1 5 3 2", "overlapping"),
        ("15 3", "past the image"),
        ("1 99999999999999999999", "99999999999999999999 is larger than the image"),
    ],
)
def test_malformed_rle_raises_naming_the_problem(encoded, problem):
    with pytest.raises(ValueError, match=problem):
        rle.decode(encoded, (4, 4))


MALFORMED = ["1 2 3", "1 x", "1 -2", "0 2", "1 0", "5 2 1 2", "1 5 3 2", "15 3", "1 99999999999999999999"]


def test_batch_finds_every_malformed_string_with_the_single_message():
    good = ["", "1 2", "3 1 16 1", " 2\t3 ", "   "]
    mixed = [s for pair in zip(good * 2, MALFORMED, strict=False) for s in pair] + MALFORMED[len(good) :]
    problems = rle.parse_many(mixed, (4, 4)).problems
    assert sorted(problems) == [i for i, s in enumerate(mixed) if s in MALFORMED]
    for i, problem in problems.items():
        with pytest.raises(ValueError) as err:
            rle.runs(mixed[i], (4, 4))
        assert str(err.value) == problem
    with pytest.raises(ValueError, match="RLE #1: RLE has an odd number"):
        rle.runs_many(mixed, (4, 4))


rle_lists = st.lists(st.sampled_from(["", "1 2", "3 1 16 1", " 2\t3 ", "4 4 9 1", *MALFORMED]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(rle_lists)
def test_batch_parse_equals_one_by_one(texts):
    owner, starts, lengths = rle.parse_many(texts, (4, 4))[:3]
    expected = []
    for k, text in enumerate(texts):
        try:
            s, n = rle.runs(text, (4, 4))
        except ValueError:
            continue
        expected += [(k, a, b) for a, b in zip(s.tolist(), n.tolist(), strict=True)]
    assert list(zip(owner.tolist(), starts.tolist(), lengths.tolist(), strict=True)) == expected


def test_touching_runs_decode_as_one():
    np.testing.assert_array_equal(rle.decode("1 2 3 2", (2, 2)), np.ones((2, 2), np.uint8))


def textbook_encode(mask: np.ndarray) -> str:
    """The common Kaggle kernel's mask2rle, the reference the fast version must agree with."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    changes = np.where(pixels[1:] != pixels[:-1])[0] + 1
    changes[1::2] -= changes[::2]
    return " ".join(str(x) for x in changes)


masks_2d = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
)


@settings(max_examples=300, deadline=None)
@given(masks_2d)
def test_round_trip_matches_textbook(mask):
    encoded = rle.encode(mask)
    assert encoded == textbook_encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded, mask.shape), mask)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 256), st.integers(0, 1599), st.integers(1, 2000))
def test_round_trip_one_run_on_full_size(start, column, length):
    """A single run anywhere, crossing column boundaries, up to the last pixel."""
    begin = column * 256 + start - 1
    length = min(length, 256 * 1600 - begin)
    encoded = f"{begin + 1} {length}"
    mask = rle.decode(encoded)
    assert int(mask.sum()) == length
    assert rle.encode(mask) == encoded
