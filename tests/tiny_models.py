"""The smallest real smp model the tests train and load (a depth-3 Unet on a timm mobilenet, 1 channel),
and the sigmoid of a model's outputs, the reference the tests compare the engine and training with."""

from __future__ import annotations

from torch import Tensor, nn

from steel_seg.models.factory import ModelSpec, forward_logits

TINY_UNET = ModelSpec(
    arch="Unet",
    encoder="tu-mobilenetv3_small_050",
    in_channels=1,
    encoder_depth=3,
    decoder_channels=(8, 8, 8),
)


def forward_probs(model: nn.Module, spec: ModelSpec, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Sigmoid probabilities of normalised `x (N, C, H, W)`: seg `(N, 4, H, W)`, cls `(N, 4)` (or None)."""
    seg, cls = forward_logits(model, spec, x)
    return (None if seg is None else seg.sigmoid()), (None if cls is None else cls.sigmoid())
