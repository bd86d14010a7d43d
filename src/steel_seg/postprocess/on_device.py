"""The post-processing rules split for the engine: steps 1-2 on the device, steps 3-5 and RLE on the CPU.

`threshold_on_device` makes the same float32 comparisons as `rules.threshold`/`rules.gate_scores`, so
only `(B, 4, H, W) uint8` masks and `(B, 2, 4)` gate scores cross to the CPU, where `encode_image` (a pool
job) runs `rules.filter_masks` and RLE: together exactly `rules.apply` + `rle.encode_many`. The engine and
training's end-of-epoch evaluation both score through this path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from steel_seg.formats import rle
from steel_seg.formats.oof import PROB_SCALE
from steel_seg.postprocess.rules import Rules, filter_masks


def threshold_on_device(seg: Tensor, cls: Tensor | None, rules: Rules) -> tuple[Tensor, Tensor]:
    """Steps 1-2 of the rules on the device: `seg (B, 4, H, W)` and `cls (B, 4)` (or None) -> masks
    `(B, 4, H, W) uint8` and gate scores `(B, 2, 4) float32` (`rules.gate_scores`' rows).

    The probabilities are quantised as OOF directories store them (`round(p * 255)`, half to even, as
    `np.rint`) and compared in float32 with the same cuts, so the results are those of `rules.threshold` and
    `rules.gate_scores`, bit for bit.
    """
    values = seg.clamp(0.0, 1.0).mul_(PROB_SCALE).round_()
    cuts = torch.from_numpy(rules.cuts()).to(seg.device, torch.float32)[None, :, None, None]
    masks = values > cuts
    if rules.one_class_per_pixel:
        classes = torch.arange(seg.shape[1], device=seg.device)[None, :, None, None]
        masks &= values.argmax(dim=1, keepdim=True) == classes
    peak = values.amax(dim=(2, 3)) / PROB_SCALE
    image = peak if cls is None else cls.float()
    return masks.to(torch.uint8), torch.stack([image, peak], dim=1)


def encode_image(masks: np.ndarray, rules: Rules, gates: np.ndarray) -> list[str]:
    """The CPU half of one image: `masks (4, H, W) uint8`, `gates (2, 4)` -> 4 RLE strings (a pool job)."""
    return rle.encode_many(filter_masks(masks, rules, gates))
