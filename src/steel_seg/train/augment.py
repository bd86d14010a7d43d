"""Training augmentation: albumentations 2.x pipelines built from a typed config.

The four class masks travel through albumentations as ONE uint8 bit mask (bit k = ClassId k+1): geometric
transforms use nearest interpolation so the bits survive, and `A.MaskDropout` (the 1st place's "defect
blackout": a whole defect blacked out in the image and removed from the truth) needs a single-channel mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (0 disables a transform) and ranges of the training augmentations.

    Geometric: `hflip`, `vflip`, `affine` (`affine_scale`, `affine_rotate` degrees, `affine_translate` share
    of the side). Intensity, on the image only (the grey uint8 crop): `brightness_contrast`
    (`RandomBrightnessContrast`), `gamma` (`RandomGamma`, `gamma_limit` in percent), `clahe` (`CLAHE`,
    `clahe_clip_limit`), `blur` (`GaussianBlur`, kernel 3..`blur_limit`), `sharpen` (`Sharpen`,
    `sharpen_alpha`), `noise` (`GaussNoise`, `noise_std` as a share of 255). `mask_dropout` blacks out defects
    (`mask_dropout_max_objects` at most), last, so a blacked-out defect stays black.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    affine: float = 0.0
    affine_scale: tuple[float, float] = (0.9, 1.1)
    affine_rotate: float = 5.0
    affine_translate: float = 0.05
    gamma: float = 0.0
    gamma_limit: tuple[float, float] = (80.0, 120.0)
    clahe: float = 0.0
    clahe_clip_limit: float = 4.0
    blur: float = 0.0
    blur_limit: int = 3
    sharpen: float = 0.0
    sharpen_alpha: tuple[float, float] = (0.2, 0.3)
    noise: float = 0.0
    noise_std: tuple[float, float] = (0.01, 0.04)
    mask_dropout: float = 0.0
    mask_dropout_max_objects: int = 1

    def __post_init__(self) -> None:
        for name in ("affine_scale", "gamma_limit", "sharpen_alpha", "noise_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in TRANSFORMS:  # each transform's key is its probability
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.blur_limit < 3 or self.blur_limit % 2 == 0:
            raise ValueError(f"augment.blur_limit is an odd kernel size >= 3, got {self.blur_limit}")


def build_pipeline(cfg: AugmentConfig, seed: int = 0) -> A.Compose:
    """The pipeline of `cfg`, seeded; reseed it per sample (`pipeline.set_random_seed(n)`) to reproduce."""
    steps = [make(cfg) for name, make in TRANSFORMS.items() if getattr(cfg, name)]
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


TRANSFORMS: dict[str, Callable[[AugmentConfig], A.BasicTransform]] = {
    "hflip": lambda c: A.HorizontalFlip(p=c.hflip),
    "vflip": lambda c: A.VerticalFlip(p=c.vflip),
    "affine": _affine,
    "brightness_contrast": lambda c: A.RandomBrightnessContrast(
        brightness_limit=c.brightness_limit, contrast_limit=c.contrast_limit, p=c.brightness_contrast
    ),
    "gamma": lambda c: A.RandomGamma(gamma_limit=c.gamma_limit, p=c.gamma),
    "clahe": lambda c: A.CLAHE(clip_limit=c.clahe_clip_limit, p=c.clahe),
    "blur": lambda c: A.GaussianBlur(blur_limit=(3, c.blur_limit), p=c.blur),
    "sharpen": lambda c: A.Sharpen(alpha=c.sharpen_alpha, p=c.sharpen),
    "noise": lambda c: A.GaussNoise(std_range=c.noise_std, p=c.noise),
    "mask_dropout": lambda c: A.MaskDropout(max_objects=c.mask_dropout_max_objects, fill=0, p=c.mask_dropout),
}  # in this order; each only when its probability is > 0


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
