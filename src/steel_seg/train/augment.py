"""Training augmentation: albumentations 2.x pipelines built from a typed config.

The four class masks travel through albumentations as ONE uint8 bit mask (bit k = ClassId k+1): geometric
transforms use nearest interpolation so the bits survive, and `A.MaskDropout` (the 1st place's "defect
blackout": a whole defect blacked out in the image and removed from the truth) needs a single-channel mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (0 disables a transform) and ranges of the training augmentations."""

    hflip: float = 0.5
    vflip: float = 0.5
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    affine: float = 0.0
    affine_scale: tuple[float, float] = (0.9, 1.1)
    affine_rotate: float = 5.0
    affine_translate: float = 0.05
    mask_dropout: float = 0.0
    mask_dropout_max_objects: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine_scale", tuple(float(s) for s in self.affine_scale))
        for name in ("hflip", "vflip", "brightness_contrast", "affine", "mask_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")


def build_pipeline(cfg: AugmentConfig, seed: int = 0) -> A.Compose:
    """The pipeline of `cfg`, seeded; reseed it per sample (`pipeline.set_random_seed(n)`) to reproduce."""
    steps: list[A.BasicTransform] = []
    if cfg.hflip:
        steps.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        steps.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.affine:
        steps.append(_affine(cfg))
    if cfg.brightness_contrast:
        limits = {"brightness_limit": cfg.brightness_limit, "contrast_limit": cfg.contrast_limit}
        steps.append(A.RandomBrightnessContrast(**limits, p=cfg.brightness_contrast))
    if cfg.mask_dropout:
        steps.append(A.MaskDropout(max_objects=cfg.mask_dropout_max_objects, fill=0, p=cfg.mask_dropout))
    return A.Compose(steps, seed=seed)


def _affine(cfg: AugmentConfig) -> A.Affine:
    t = cfg.affine_translate
    return A.Affine(
        scale=cfg.affine_scale,
        translate_percent={"x": (-t, t), "y": (-t, t)},
        rotate=(-cfg.affine_rotate, cfg.affine_rotate),
        interpolation=1,
        mask_interpolation=0,
        border_mode=0,
        fill=0,
        fill_mask=0,
        p=cfg.affine,
    )


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(C, H, W) 0/1 masks, C <= 8 -> (H, W) uint8 bit mask, bit k set where class k+1 is on."""
    bits = (np.uint8(1) << np.arange(masks.shape[0], dtype=np.uint8))[:, None, None]
    return np.bitwise_or.reduce((masks != 0).astype(np.uint8) * bits, axis=0).astype(np.uint8)


def unpack_masks(packed: np.ndarray, classes: int) -> np.ndarray:
    """(H, W) uint8 bit mask -> (classes, H, W) uint8 0/1."""
    bits = np.arange(classes, dtype=np.uint8)[:, None, None]
    return (packed[None] >> bits) & np.uint8(1)


def augment(pipeline: A.Compose, grey: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply `pipeline` to grey `(H, W) uint8` and masks `(C, H, W) uint8`; returns both, same shapes."""
    grey, packed = augment_packed(pipeline, grey, pack_masks(masks))
    return grey, unpack_masks(packed, masks.shape[0])


def augment_packed(
    pipeline: A.Compose, grey: np.ndarray, packed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply `pipeline` to grey `(H, W) uint8` and its bit mask `(H, W) uint8` (`pack_masks`); same shapes."""
    out = pipeline(image=grey, mask=packed)
    return out["image"], out["mask"]
