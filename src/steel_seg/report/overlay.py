"""Drawing masks on the grey steel image: one contour colour per class, pixels off the contours stay grey."""

from __future__ import annotations

import cv2
import numpy as np

from steel_seg.competition import CLASSES

# RGB per ClassId (in class order), chosen to stay distinct on grey steel and for the common colour-vision
# deficiencies.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = dict(
    zip(CLASSES, [(0, 114, 255), (0, 200, 80), (255, 60, 40), (255, 200, 0)], strict=True)
)


def boundary(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Inner boundary band of a mask: `mask: (H, W) uint8 0/1` -> `(H, W) bool`.

    A pixel is on the band when it is on the mask and lies within `thickness` pixels (8-connected steps) of a
    pixel off the mask or off the image, so the drawn line never leaves the mask and a mask touching the image
    edge shows its edge too.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    inner = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (mask > 0) & (inner == 0)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """`grey: (H, W) uint8` -> `(H, W, 3) uint8` with three equal channels."""
    return np.repeat(np.asarray(grey, dtype=np.uint8)[:, :, None], 3, axis=2)


def draw_contours(grey: np.ndarray, masks: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Contours of every class on the grey image.

    Args:
        grey: (H, W) uint8 image.
        masks: (4, H, W) uint8 0/1, index k = ClassId k+1; a later class draws over an earlier one.
        thickness: width of the inner boundary band in pixels.

    Returns:
        (H, W, 3) uint8 RGB image; pixels off every boundary keep their grey value.
    """
    if masks.shape[1:] != grey.shape:
        raise ValueError(f"masks {masks.shape[1:]} and image {grey.shape} differ in size")
    rgb = grey_to_rgb(grey)
    for c, mask in zip(CLASSES, masks, strict=True):
        if mask.any():
            rgb[boundary(mask, thickness)] = CLASS_COLOURS[c]
    return rgb


def probability_rgb(prob: np.ndarray) -> np.ndarray:
    """Probabilities in the magma colour map (0 black, 1 pale yellow): `(H, W) float32` -> `(H, W, 3) uint8`.

    Shown on its own, not blended into the photo, so faint probabilities stay visible and the rows above it
    (truth and prediction on the photo) give the position.
    """
    values = np.rint(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(values, cv2.COLORMAP_MAGMA)[:, :, ::-1])


def magma_colours(n: int) -> np.ndarray:
    """`(n, 3) uint8` RGB colours evenly spaced along `probability_rgb`'s colour map."""
    return probability_rgb(np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :])[0]
