"""Training losses: pure tensor functions, each wrapped by a thin `nn.Module`, and one builder from a config.

Shapes: segmentation logits and targets `(N, C, H, W)`, classification logits and presence `(N, C)`;
targets are float 0/1. Per-class `pos_weight` is a length-C sequence (the 1st place used BCE with pos_weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def as_float(t: Tensor | None) -> Tensor | None:
    """Model outputs (half under autocast) in float32, where losses and metrics are computed; None stays."""
    return None if t is None else t.float()


def _class_weight(pos_weight: Sequence[float] | None, logits: Tensor) -> Tensor | None:
    if pos_weight is None:
        return None
    w = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return w.view(1, -1, *([1] * (logits.ndim - 2)))


def bce(logits: Tensor, target: Tensor, pos_weight: Sequence[float] | None = None) -> Tensor:
    """Mean binary cross-entropy on logits `(N, C, ...)`, positives of class c weighted by `pos_weight[c]`."""
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=_class_weight(pos_weight, logits))


def soft_dice(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice over each (image, class) pair, averaged: `(N, C, H, W)` logits and targets -> scalar.

    `smooth` keeps empty pairs defined (an empty prediction on an empty truth costs ~0).
    """
    probs = logits.float().sigmoid().flatten(2)
    target = target.float().flatten(2)
    inter = (probs * target).sum(-1)
    total = probs.sum(-1) + target.sum(-1)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def focal(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = 0.25) -> Tensor:
    """Mean focal loss (Lin et al. 2017) on logits: BCE times `(1 - p_t) ** gamma`, `alpha` on positives."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


@dataclass(frozen=True)
class LossConfig:
    """Segmentation loss = `bce_weight * BCE + dice_weight * Dice + focal_weight * focal`; the classification
    head (aux head or classifier) uses BCE on class presence, scaled by `cls_weight`."""

    bce_weight: float = 0.75
    dice_weight: float = 0.25
    focal_weight: float = 0.0
    pos_weight: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    cls_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.pos_weight is not None:
            object.__setattr__(self, "pos_weight", tuple(float(w) for w in self.pos_weight))


class SegLoss(nn.Module):
    """The weighted sum of BCE (with per-class pos_weight), soft Dice and focal on segmentation logits."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        c = self.cfg
        total = logits.new_zeros((), dtype=torch.float32)
        if c.bce_weight:
            total = total + c.bce_weight * bce(logits, target, c.pos_weight)
        if c.dice_weight:
            total = total + c.dice_weight * soft_dice(logits, target)
        if c.focal_weight:
            total = total + c.focal_weight * focal(logits, target, c.focal_gamma)
        return total


class ClsLoss(nn.Module):
    """BCE of image-level logits `(N, C)` against class presence `(N, C)`."""

    def forward(self, logits: Tensor, presence: Tensor) -> Tensor:
        return bce(logits, presence)


class ModelLoss(nn.Module):
    """The loss of one model's outputs: seg loss when it segments, plus (or only) the cls loss.

    For a segmenter with an aux head the cls loss is scaled by `cls_weight`; a classifier's loss is its BCE.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.seg = SegLoss(cfg)
        self.cls = ClsLoss()

    def forward(self, seg: Tensor | None, cls: Tensor | None, mask: Tensor, presence: Tensor) -> Tensor:
        if seg is None:
            return self.cls(cls, presence)
        loss = self.seg(seg, mask)
        if cls is not None:
            loss = loss + self.cfg.cls_weight * self.cls(cls, presence)
        return loss
