"""steel_seg.train.data: one normalisation, crops, the Dataset on synthetic JPEGs, its batches on the device,
balanced weights."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from steel_seg.formats.labels import Labels
from steel_seg.models.factory import ModelSpec
from steel_seg.train.augment import AugmentConfig, build_pipeline, pack_masks, unpack_masks
from steel_seg.train.data import (
    BatchShare,
    EpochSampler,
    SteelDataset,
    balanced_weights,
    choose_crop,
    draw_weights,
    raise_image_errors,
    to_device,
    to_tensor,
)

SPEC1 = ModelSpec("Unet", "resnet18", in_channels=1, mean=0.4, std=0.2)
SPEC3 = ModelSpec("Unet", "resnet18", in_channels=3, mean=0.4, std=0.2)


def test_to_tensor_normalises_and_repeats_channels():
    grey = np.array([[[0, 102, 255]]], np.uint8)
    x1 = to_tensor(grey, SPEC1)
    assert x1.shape == (1, 1, 1, 3) and x1.dtype == torch.float32
    torch.testing.assert_close(x1[0, 0, 0], torch.tensor([-2.0, 0.0, 3.0]))
    x3 = to_tensor(torch.from_numpy(grey), SPEC3)
    assert x3.shape == (1, 3, 1, 3)
    torch.testing.assert_close(x3[:, 1], x1[:, 0])
    with pytest.raises(ValueError, match="expects"):
        to_tensor(grey[0], SPEC1)


def test_defect_biased_crops_contain_a_defect_and_stay_inside():
    masks = np.zeros((4, 64, 400), np.uint8)
    masks[3, 10:12, 380:390] = 1
    rng = np.random.default_rng(0)
    for _ in range(50):
        y0, x0 = choose_crop(masks, (32, 64), 1.0, rng)
        assert 0 <= y0 <= 32 and 0 <= x0 <= 336
        assert masks[:, y0 : y0 + 32, x0 : x0 + 64].any()
    uniform = [choose_crop(masks, (32, 64), 0.0, rng)[1] for _ in range(50)]
    assert min(uniform) < 300
    with pytest.raises(ValueError, match="larger than the image"):
        choose_crop(masks, (65, 64), 0.0, rng)


@pytest.fixture(scope="module")
def labels(synthetic_labels) -> Labels:
    return synthetic_labels


def test_dataset_items_on_synthetic_jpegs(synthetic_set, labels):
    """Workers ship the uint8 grey image and the packed masks; `to_device` turns a batch into exactly the
    float input and masks the dataset itself used to ship (`to_tensor` per image, float 0/1 masks)."""
    ids = labels.image_ids
    images = synthetic_set.out_dir / "train_images"
    full = SteelDataset(images, ids, labels)
    presence = labels.presence()
    image_id = next(i for i in ids if presence.loc[i, 2] and presence.loc[i].sum() == 1)  # class 2 only
    item = full[ids.index(image_id)]
    assert item["image"].shape == (256, 1600) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (256, 1600) and item["mask"].dtype == torch.uint8
    grey = cv2.imread(str(images / image_id), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(item["image"].numpy(), grey)
    np.testing.assert_array_equal(item["mask"].numpy(), pack_masks(labels.masks(image_id)))
    torch.testing.assert_close(item["presence"], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    x, mask, present = to_device(default_collate([item, full[0]]), SPEC3, torch.device("cpu"))
    assert x.shape == (2, 3, 256, 1600) and mask.shape == (2, 4, 256, 1600) and mask.dtype == torch.float32
    for channel in x[0]:
        torch.testing.assert_close(channel, to_tensor(grey[None], SPEC1)[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(mask[0], torch.from_numpy(labels.masks(image_id)).float(), rtol=0, atol=0)
    torch.testing.assert_close(mask[1], torch.from_numpy(labels.masks(ids[0])).float(), rtol=0, atol=0)
    torch.testing.assert_close(present, mask.flatten(2).amax(2))

    pipeline = build_pipeline(AugmentConfig(affine=0.5, mask_dropout=0.2), seed=0)
    crops = SteelDataset(images, ids, labels, (256, 512), 1.0, pipeline)
    a, b = crops[(3, 1234)], crops[(3, 1234)]
    assert a["image"].shape == (256, 512) and a["mask"].shape == (256, 512)
    torch.testing.assert_close(a["image"], b["image"])
    np.testing.assert_array_equal(a["presence"].numpy(), unpack_masks(a["mask"].numpy(), 4).max(axis=(1, 2)))


def test_dataset_reads_each_image_from_its_own_folder(synthetic_set, labels, tmp_path):
    """`folders` (the extra sources' images) wins over `images_dir`; each path is resolved once."""
    ids = labels.image_ids[:2]
    copy = tmp_path / ids[1]
    copy.write_bytes((synthetic_set.out_dir / "train_images" / ids[1]).read_bytes())
    dataset = SteelDataset(synthetic_set.out_dir / "train_images", ids, labels, folders={ids[1]: tmp_path})
    assert dataset.paths == [synthetic_set.out_dir / "train_images" / ids[0], copy]
    np.testing.assert_array_equal(dataset[1]["mask"].numpy(), pack_masks(labels.masks(ids[1])))
    copy.write_bytes(b"not a jpeg")
    assert dataset[1]["error"].startswith(str(copy))


def test_dataset_names_an_unreadable_image(tmp_path, labels):
    """The item carries the reason (a DataLoader worker never raises it); the batch raises it, plainly."""
    ids = labels.image_ids[:1]
    (tmp_path / ids[0]).write_bytes(b"not a jpeg")
    item = SteelDataset(tmp_path, ids, labels)[0]
    assert item["error"].endswith(f"{ids[0]}: not a decodable image") and not item["mask"].any()
    with pytest.raises(ValueError, match=ids[0]):
        raise_image_errors(default_collate([item]))


def test_balanced_weights_favour_rare_classes():
    presence = np.zeros((10, 4), bool)
    presence[0, 1] = True
    presence[1:7, 2] = True
    w = balanced_weights(presence)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] > w[1] and w[0] > w[9]
    groups_total = [w[0], w[1:7].sum(), w[7:].sum()]
    np.testing.assert_allclose(groups_total, groups_total[0])


def test_draw_weights_combine_class_balance_and_source_weights():
    presence = np.zeros((4, 4), bool)
    presence[0, 0] = presence[1, 0] = presence[2, 0] = True  # three class-1 images and one defect-free image
    assert draw_weights(presence, np.ones(4), balanced=False) is None  # a plain shuffle, as without sources
    np.testing.assert_allclose(
        draw_weights(presence, np.array([1.0, 1.0, 2.0, 4.0]), False), np.array([1, 1, 2, 4]) / 8
    )
    balanced = balanced_weights(presence)
    np.testing.assert_allclose(draw_weights(presence, np.ones(4), True), balanced)
    weighted = draw_weights(presence, np.array([1.0, 1.0, 3.0, 1.0]), True)
    assert weighted.sum() == pytest.approx(1.0)
    assert weighted[2] == pytest.approx(3 * weighted[0]) and weighted[3] == pytest.approx(3 * weighted[0])


def test_epoch_sampler_is_deterministic_and_shards_by_rank():
    one = EpochSampler(11, seed=5)
    first = list(one)
    assert list(one) == first and len(first) == 11
    assert sorted(i for i, _ in first) == list(range(11))
    one.set_epoch(1)
    assert list(one) != first
    one.set_epoch(0, start=4)
    assert list(one) == first[4:] and len(one) == 7
    ranks = [EpochSampler(11, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [list(s) for s in ranks]
    assert [len(s) for s in shares] == [6, 6]
    assert {i for i, _ in shares[0] + shares[1]} == set(range(11))
    weighted = EpochSampler(4, seed=0, weights=np.array([0.0, 0.0, 1.0, 0.0]))
    assert [i for i, _ in weighted] == [2, 2, 2, 2]


def test_a_fixed_share_puts_the_same_number_of_extra_items_in_every_batch_of_every_rank():
    """khornlund's pseudo-label batches: 12% of a batch of 16 = 2 extra items in each, whatever the ranks."""
    extra = np.zeros(30, bool)
    extra[24:] = True  # 24 train images, 6 extra
    for world in (1, 2):
        share = BatchShare(extra, round(0.12 * 16), 16)
        samplers = [EpochSampler(30, seed=1, num_replicas=world, rank=r, share=share) for r in range(world)]
        for sampler in samplers:
            items = [i for i, _ in sampler]
            assert len(items) == len(sampler) and len(items) % 16 == 0
            batches = np.array(items).reshape(-1, 16)
            assert (extra[batches].sum(axis=1) == 2).all()
            assert [i for i, _ in sampler] == items  # deterministic
        primary = {i for s in samplers for i, _ in s if not extra[i]}
        assert primary == set(range(24))  # every train image once an epoch (padded to whole batches)
    weights = np.r_[np.ones(24), np.zeros(5), 1.0]
    only = EpochSampler(30, seed=1, weights=weights / weights.sum(), share=BatchShare(extra, 2, 16))
    assert {i for i, _ in only if extra[i]} == {29}  # extra items drawn by their weights
    with pytest.raises(ValueError, match="per batch"):
        BatchShare(extra, 0, 16)
