"""The post-processing rules split for the engine: steps 1-2 on the device, steps 3-5 and RLE on the CPU.

`threshold_on_device` makes the same float32 comparisons as `rules.threshold`/`rules.gate_scores`, so only
`(B, 4, H, W) uint8` masks and `(B, 4)` gate scores cross to the CPU, where `encode_image` (a pool job) runs
`rules.filter_masks` and RLE: together exactly `rules.apply` + `rle.encode_many`. The engine and training's
end-of-epoch evaluation both score through this path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from steel_seg.formats import rle
from steel_seg.postprocess.rules import Rules, filter_masks


def threshold_on_device(seg: Tensor, cls: Tensor | None, rules: Rules) -> tuple[Tensor, Tensor]:
    """Steps 1-2 of the rules on the device: `seg (B, 4, H, W)` -> masks (B, 4, H, W) uint8, gates (B, 4).

    The same float32 comparisons as `threshold`/`gate_scores`, so the results are identical.
    """
    thresholds = torch.from_numpy(rules.thresholds()).to(seg.device)[None, :, None, None]
    masks = seg > thresholds
    if rules.one_class_per_pixel:
        classes = torch.arange(seg.shape[1], device=seg.device)[None, :, None, None]
        masks &= seg.argmax(dim=1, keepdim=True) == classes
    gates = cls if cls is not None else seg.amax(dim=(2, 3))
    return masks.to(torch.uint8), gates.float()


def encode_image(masks: np.ndarray, rules: Rules, gates: np.ndarray) -> list[str]:
    """The CPU half of one image: `masks (4, H, W) uint8`, `gates (4,)` -> 4 RLE strings (a pool job)."""
    return rle.encode_many(filter_masks(masks, rules, gates))
