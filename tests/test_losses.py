"""steel_seg.train.losses: BCE with pos_weight, soft Dice, focal, their weighted sum, classification loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steel_seg.train.losses import LossConfig, ModelLoss, SegLoss, bce, focal, soft_dice


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 16, generator=g)
    target = (torch.rand(2, 4, 8, 16, generator=g) > 0.8).float()
    return logits, target


def test_bce_pos_weight_scales_only_the_positive_terms(batch):
    logits, target = batch
    weights = (3.0, 1.0, 1.0, 2.0)
    w = torch.tensor(weights).view(1, 4, 1, 1)
    expected = -(w * target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
    torch.testing.assert_close(bce(logits, target, weights), expected)
    torch.testing.assert_close(bce(logits, target), F.binary_cross_entropy_with_logits(logits, target))


def test_soft_dice_is_zero_for_a_perfect_and_one_for_a_disjoint_prediction(batch):
    _, target = batch
    perfect = (target * 2 - 1) * 50
    assert soft_dice(perfect, target) < 1e-3
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4] = 1
    disjoint = torch.where(target > 0, -50.0, 50.0)
    assert soft_dice(disjoint, target, smooth=0.0) > 0.999
    empty = torch.full((1, 1, 8, 8), -50.0)
    assert soft_dice(empty, torch.zeros(1, 1, 8, 8)) < 1e-3


def test_focal_reduces_to_bce_and_down_weights_easy_pixels(batch):
    logits, target = batch
    torch.testing.assert_close(focal(logits, target, gamma=0.0, alpha=None), bce(logits, target))
    assert focal(logits, target, gamma=2.0, alpha=None) < bce(logits, target)


def test_seg_loss_is_the_configured_weighted_sum(batch):
    logits, target = batch
    cfg = LossConfig(bce_weight=0.75, dice_weight=0.25, focal_weight=0.5, pos_weight=(2, 2, 1, 1))
    expected = 0.75 * bce(logits, target, (2, 2, 1, 1)) + 0.25 * soft_dice(logits, target)
    expected = expected + 0.5 * focal(logits, target)
    torch.testing.assert_close(SegLoss(cfg)(logits, target), expected)


def test_model_loss_adds_the_cls_head_and_serves_a_classifier(batch):
    logits, target = batch
    cls_logits = torch.randn(2, 4)
    presence = target.flatten(2).amax(-1)
    loss = ModelLoss(LossConfig(cls_weight=0.5))
    seg_only = loss(logits, None, target, presence)
    with_cls = loss(logits, cls_logits, target, presence)
    torch.testing.assert_close(with_cls, seg_only + 0.5 * bce(cls_logits, presence))
    torch.testing.assert_close(loss(None, cls_logits, target, presence), bce(cls_logits, presence))


def test_losses_give_finite_gradients(batch):
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    SegLoss(LossConfig(focal_weight=1.0))(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
