"""steel_seg.train.augment: bit-packed masks, the pipeline from the config, seeding, the defect blackout, the
intensity augmentations."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steel_seg.train.augment import AugmentConfig, augment, build_pipeline, pack_masks, unpack_masks

OFF = {"hflip": 0.0, "vflip": 0.0, "brightness_contrast": 0.0, "affine": 0.0, "mask_dropout": 0.0}


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, (4, 6, 9), elements=st.integers(0, 1)))
def test_pack_unpack_round_trip(masks):
    packed = pack_masks(masks)
    assert packed.shape == (6, 9) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_masks(packed, 4), masks)


def _sample():
    grey = np.arange(32 * 64, dtype=np.uint32).reshape(32, 64).astype(np.uint8)
    masks = np.zeros((4, 32, 64), np.uint8)
    masks[0, 2:8, 3:10] = 1
    masks[2, 20:30, 40:60] = 1
    return grey, masks


def test_flips_move_image_and_masks_together():
    grey, masks = _sample()
    pipeline = build_pipeline(AugmentConfig(**{**OFF, "hflip": 1.0, "vflip": 1.0}), seed=0)
    out_grey, out_masks = augment(pipeline, grey, masks)
    np.testing.assert_array_equal(out_grey, grey[::-1, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, ::-1, ::-1])


def test_mask_dropout_blacks_out_a_whole_defect():
    grey, masks = _sample()
    grey = np.full_like(grey, 200)
    pipeline = build_pipeline(AugmentConfig(**{**OFF, "mask_dropout": 1.0}), seed=0)
    out_grey, out_masks = augment(pipeline, grey, masks)
    dropped = [k for k in (0, 2) if not out_masks[k].any()]
    assert len(dropped) == 1
    k = dropped[0]
    assert (out_grey[masks[k] == 1] == 0).all() and (out_grey[masks[k] == 0] == 200).all()
    kept = 2 - k
    np.testing.assert_array_equal(out_masks[kept], masks[kept])


def test_same_seed_same_augmentation_and_masks_stay_binary():
    grey, masks = _sample()
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, brightness_contrast=1.0, affine=1.0, mask_dropout=0.5)
    a, b = build_pipeline(cfg, seed=7), build_pipeline(cfg, seed=7)
    runs = [(augment(a, grey, masks), augment(b, grey, masks)) for _ in range(5)]
    for (ga, ma), (gb, mb) in runs:
        np.testing.assert_array_equal(ga, gb)
        np.testing.assert_array_equal(ma, mb)
        assert set(np.unique(ma)) <= {0, 1}
    a.set_random_seed(3)
    first = augment(a, grey, masks)[0]
    a.set_random_seed(3)
    np.testing.assert_array_equal(augment(a, grey, masks)[0], first)


def test_config_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="augment.hflip"):
        AugmentConfig(hflip=1.5)


@pytest.mark.parametrize(
    "key, transform",
    [("gamma", A.RandomGamma), ("clahe", A.CLAHE), ("blur", A.GaussianBlur), ("sharpen", A.Sharpen),
     ("noise", A.GaussNoise)],
)  # fmt: skip
def test_intensity_keys_change_the_image_and_never_the_masks(key, transform):
    """The top teams' intensity augmentations (khornlund: CLAHE, blur, sharpen) as albumentations 2.x
    transforms on the grey uint8 crop; the class masks pass through untouched."""
    grey, masks = _sample()
    pipeline = build_pipeline(AugmentConfig(**{**OFF, key: 1.0}), seed=0)
    assert [type(t) for t in pipeline.transforms] == [transform]
    out_grey, out_masks = augment(pipeline, grey, masks)
    assert out_grey.dtype == np.uint8 and out_grey.shape == grey.shape and (out_grey != grey).any()
    np.testing.assert_array_equal(out_masks, masks)
    with pytest.raises(ValueError, match=f"augment.{key}"):
        AugmentConfig(**{key: 2.0})
