"""steel_seg.train.losses: smp's terms against the hand-written losses they replaced, their weighted sum,
Lovász, the classification loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steel_seg.train.losses import TERMS, LossConfig, ModelLoss, SegLoss

ALL_TERMS = {f"{name}_weight": 1.0 for name in TERMS}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 16, generator=g)
    target = (torch.rand(2, 4, 8, 16, generator=g) > 0.8).float()
    return logits, target


def term(name: str, **cfg) -> torch.nn.Module:
    return SegLoss(LossConfig(**{"bce_weight": 0.0, "dice_weight": 0.0, f"{name}_weight": 1.0, **cfg}))


# The kit's hand-written losses before issue 21, kept here as the references smp's terms are checked against.
def old_bce(logits, target, pos_weight=None):
    w = None if pos_weight is None else torch.tensor(pos_weight).view(1, -1, 1, 1)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=w)


def old_soft_dice(logits, target, smooth=1.0):
    probs, target = logits.sigmoid().flatten(2), target.flatten(2)
    inter, total = (probs * target).sum(-1), probs.sum(-1) + target.sum(-1)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def old_focal(logits, target, gamma=2.0, alpha=0.25):
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (1 - torch.exp(-ce)) ** gamma * ce
    return (loss * (alpha * target + (1 - alpha) * (1 - target))).mean()


def test_bce_and_focal_match_the_hand_written_losses_they_replace(batch):
    logits, target = batch
    weights = (2.0, 2.0, 1.0, 1.5)
    torch.testing.assert_close(
        term("bce", pos_weight=weights)(logits, target), old_bce(logits, target, weights)
    )
    torch.testing.assert_close(term("bce")(logits, target), old_bce(logits, target))
    expected = -(torch.tensor(weights).view(1, 4, 1, 1) * target * F.logsigmoid(logits)
                 + (1 - target) * F.logsigmoid(-logits)).mean()  # fmt: skip
    torch.testing.assert_close(term("bce", pos_weight=weights)(logits, target), expected)
    torch.testing.assert_close(term("focal")(logits, target), old_focal(logits, target))
    torch.testing.assert_close(
        term("focal", focal_gamma=0.0, focal_alpha=None)(logits, target), old_bce(logits, target)
    )


def test_dice_matches_the_old_per_pair_dice_where_they_coincide_and_ignores_absent_classes(batch):
    """smp's Dice is per class over the whole batch, and a class absent from the batch's truth adds 0; the old
    one was per (image, class) pair with smoothing 1. With one image holding every class and no smoothing
    they are the same number; a false-positive pixel on an absent class costs the old Dice and not smp's (BCE,
    the term Dice is always paired with in the shipped configs, still punishes it)."""
    logits, target = batch
    one, truth = logits[:1], target[:1]
    assert truth.flatten(2).amax(-1).all()
    torch.testing.assert_close(term("dice")(one, truth), old_soft_dice(one, truth, smooth=0.0))
    absent = torch.zeros(1, 4, 8, 16)
    absent[:, 0, :4] = 1
    logits = torch.where(absent > 0, 20.0, -20.0)
    logits[:, 1, 0, 0] = 20.0  # one false-positive pixel on class 2, absent from the truth
    assert term("dice")(logits, absent) < 1e-6
    assert old_soft_dice(logits, absent).item() == pytest.approx(0.5 / 4, abs=1e-6)  # that pair: 1 - 1/2


def test_lovasz_hinge_is_zero_beyond_the_margin_and_one_for_an_undecided_pixel():
    target = torch.zeros(1, 4, 4, 4)
    target[0, 2, 1:3, 1:3] = 1
    sure = torch.where(target > 0, 2.0, -2.0)
    assert term("lovasz")(sure, target) == 0
    single = term("lovasz")(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    torch.testing.assert_close(single, torch.tensor(1.0))  # hinge error 1 x Jaccard gradient 1
    assert term("lovasz")(-sure, target) > term("lovasz")(sure * 0.1, target)


def test_seg_loss_is_the_configured_weighted_sum_of_smp_terms(batch):
    logits, target = batch
    cfg = LossConfig(bce_weight=0.75, dice_weight=0.25, lovasz_weight=0.5, pos_weight=(2, 2, 1, 1.5))
    loss = SegLoss(cfg)
    assert list(loss.weights) == ["bce", "dice", "lovasz"]
    expected = (0.75 * term("bce", pos_weight=(2, 2, 1, 1.5))(logits, target)
                + 0.25 * term("dice")(logits, target) + 0.5 * term("lovasz")(logits, target))  # fmt: skip
    torch.testing.assert_close(loss(logits, target), expected)
    with pytest.raises(ValueError, match="lovasz_weight"):
        LossConfig(lovasz_weight=-1.0)


def test_model_loss_adds_the_cls_head_and_serves_a_classifier(batch):
    logits, target = batch
    cls_logits = torch.randn(2, 4)
    presence = target.flatten(2).amax(-1)
    loss = ModelLoss(LossConfig(cls_weight=0.5))
    seg_only = loss(logits, None, target, presence)
    with_cls = loss(logits, cls_logits, target, presence)
    torch.testing.assert_close(with_cls, seg_only + 0.5 * old_bce(cls_logits, presence))
    torch.testing.assert_close(loss(None, cls_logits, target, presence), old_bce(cls_logits, presence))


def test_every_term_gives_finite_gradients_and_moves_with_the_model(batch):
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    loss = ModelLoss(LossConfig(**ALL_TERMS, pos_weight=(2, 2, 1, 1.5)))
    assert list(loss.seg.weights) == list(TERMS)
    loss(logits, None, target, target.amax((2, 3))).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert loss.to(torch.float64).seg.terms["bce"].pos_weight.dtype == torch.float64  # a buffer: it moves
