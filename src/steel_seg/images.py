"""Reading Severstal JPEGs as one grey channel, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from steel_seg.competition import IMAGE_SHAPE


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, truncated, or of the wrong size."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_grey(path: str | Path, shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Read an image as (H, W) uint8 grey.

    The competition's JPEGs hold three identical channels, so one grey decode is exact and a third of
    the work. A 1-channel JPEG reads the same way. With `shape`, an image of another size raises
    `ImageError` (callers that can recover resize it themselves via `fit_shape`).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(path, "empty file")
    grey = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ImageError(path, "not a decodable image")
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8 and not _has_jpeg_end(data):
        raise ImageError(path, "truncated JPEG (no end-of-image marker)")
    if shape is not None and grey.shape != tuple(shape):
        raise ImageError(path, f"size {grey.shape[1]}x{grey.shape[0]}, expected {shape[1]}x{shape[0]}")
    return grey


def fit_shape(grey: np.ndarray, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Resize a (h, w) grey image to `shape` (H, W) with area/linear interpolation; a no-op when it fits."""
    if grey.shape == tuple(shape):
        return grey
    return cv2.resize(grey, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _has_jpeg_end(data: np.ndarray) -> bool:
    tail = data[-64:].tobytes()
    return b"\xff\xd9" in tail
