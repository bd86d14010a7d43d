"""Training losses: the segmentation loss as a weighted sum of `smp.losses` terms; the classification loss.

Shapes: segmentation logits and targets `(N, C, H, W)`, classification logits and presence `(N, C)`;
targets are float 0/1. Every term is smp's own module in multilabel mode (one sigmoid per class):

| key | smp module | notes |
|---|---|---|
| `bce_weight` | `SoftBCEWithLogitsLoss` | class c's positives weigh `pos_weight[c]` (the 1st place's Unet) |
| `dice_weight` | `DiceLoss` | 1 - Dice per class over the batch; a class absent from the truth adds 0 |
| `focal_weight` | `FocalLoss` | `focal_gamma`, `focal_alpha` (on positives) |
| `jaccard_weight` | `JaccardLoss` | 1 - IoU per class over the batch, absent classes add 0 |
| `tversky_weight` | `TverskyLoss` | `tversky_alpha` weighs false positives, `tversky_beta` false negatives |
| `lovasz_weight` | `LovaszLoss` | the Lovász hinge over all the batch's pixels and classes (14th, 31st) |

smp's `MCCLoss` (binary, on probabilities) and `SoftCrossEntropyLoss` (one class per pixel) do not fit
4 independent classes and are not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

MULTILABEL = smp.losses.MULTILABEL_MODE


def as_float(t: Tensor | None) -> Tensor | None:
    """Model outputs (half under autocast) in float32, where losses and metrics are computed; None stays."""
    return None if t is None else t.float()


@dataclass(frozen=True)
class LossConfig:
    """Segmentation loss = the sum of `<term>_weight * <term>` over the terms in the module doc (0 = unused);
    the classification head (aux head or classifier) uses BCE on class presence, scaled by `cls_weight`."""

    bce_weight: float = 0.75
    dice_weight: float = 0.25
    focal_weight: float = 0.0
    jaccard_weight: float = 0.0
    tversky_weight: float = 0.0
    lovasz_weight: float = 0.0
    pos_weight: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    cls_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.pos_weight is not None:
            object.__setattr__(self, "pos_weight", tuple(float(w) for w in self.pos_weight))
        negative = [f.name for f in fields(self) if f.name.endswith("_weight") and _is_negative(self, f.name)]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {negative}")

    def terms(self) -> dict[str, float]:
        """The segmentation terms in use: name -> weight (weight > 0), in the order of `TERMS`."""
        return {name: getattr(self, f"{name}_weight") for name in TERMS if getattr(self, f"{name}_weight")}


def _is_negative(cfg: LossConfig, name: str) -> bool:
    value = getattr(cfg, name)
    return any(v < 0 for v in value) if isinstance(value, tuple) else value is not None and value < 0


def _bce(cfg: LossConfig) -> nn.Module:
    weight = None if cfg.pos_weight is None else torch.tensor(cfg.pos_weight).view(-1, 1, 1)
    return smp.losses.SoftBCEWithLogitsLoss(ignore_index=None, pos_weight=weight)


TERMS: dict[str, Callable[[LossConfig], nn.Module]] = {
    "bce": _bce,
    "dice": lambda c: smp.losses.DiceLoss(MULTILABEL),
    "focal": lambda c: smp.losses.FocalLoss(MULTILABEL, alpha=c.focal_alpha, gamma=c.focal_gamma),
    "jaccard": lambda c: smp.losses.JaccardLoss(MULTILABEL),
    "tversky": lambda c: smp.losses.TverskyLoss(MULTILABEL, alpha=c.tversky_alpha, beta=c.tversky_beta),
    "lovasz": lambda c: smp.losses.LovaszLoss(MULTILABEL),
}


class SegLoss(nn.Module):
    """The weighted sum of the config's smp loss terms on segmentation logits `(N, C, H, W)`."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.weights = cfg.terms()
        self.terms = nn.ModuleDict({name: TERMS[name](cfg) for name in self.weights})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for name, weight in self.weights.items():
            total = total + weight * self.terms[name](logits, target)
        return total


class ModelLoss(nn.Module):
    """The loss of one model's outputs: seg loss when it segments, plus (or only) the cls loss.

    For a segmenter with an aux head the cls loss is scaled by `cls_weight`; a classifier's loss is its BCE.
    Move it to the model's device (`.to(device)`): `pos_weight` is a buffer.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.seg = SegLoss(cfg)
        self.cls = smp.losses.SoftBCEWithLogitsLoss(ignore_index=None)

    def forward(self, seg: Tensor | None, cls: Tensor | None, mask: Tensor, presence: Tensor) -> Tensor:
        if seg is None:
            return self.cls(cls, presence)
        loss = self.seg(seg, mask)
        if cls is not None:
            loss = loss + self.cfg.cls_weight * self.cls(cls, presence)
        return loss
