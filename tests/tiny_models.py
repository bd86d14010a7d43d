"""The smallest real smp model the tests train and load: a depth-3 Unet on a timm mobilenet, 1 channel."""

from __future__ import annotations

from steel_seg.models import ModelSpec

TINY_UNET = ModelSpec(
    arch="Unet",
    encoder="tu-mobilenetv3_small_050",
    in_channels=1,
    encoder_depth=3,
    decoder_channels=(8, 8, 8),
)
