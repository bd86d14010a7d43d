"""Reading Severstal JPEGs as one grey channel: the one image reader of every path (training, folds, reports,
the kernel), with errors that name the file.

Whatever goes wrong — a missing, empty, corrupt or truncated file, a wrong size, or OpenCV refusing the file
with its own `cv2.error` (e.g. a header claiming 65000 x 65000 pixels) — surfaces as `ImageError(path,
reason)`. `check_image` answers the same question from the header alone (no decode), so a whole train set is
checked in seconds before training starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from steel_seg.competition import IMAGE_SHAPE
from steel_seg.progress import track

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, truncated, or of the wrong size."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        return ImageError, (self.path, self.reason)  # intact across processes (DataLoader workers, pools)


def read_grey(path: str | Path, shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Read an image as (H, W) uint8 grey.

    The competition's JPEGs hold three identical channels, so one grey decode is exact and a third of
    the work. A 1-channel JPEG reads the same way. With `shape`, an image of another size raises
    `ImageError` (callers that can recover resize it themselves via `fit_shape`).
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        grey = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        raise ImageError(path, f"OpenCV cannot decode it ({_first_line(exc)})") from None
    if grey is None:
        raise ImageError(path, "not a decodable image")
    if data[:2].tobytes() == SOI and not _has_jpeg_end(data):
        raise ImageError(path, "truncated JPEG (no end-of-image marker)")
    _check_shape(path, grey.shape, shape)
    return grey


def _read_bytes(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImageError(path, "file not found")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageError(path, "empty file")
    return data


def _check_shape(path: Path, found: tuple[int, ...], shape: tuple[int, int] | None) -> None:
    if shape is not None and tuple(found) != tuple(shape):
        raise ImageError(path, f"size {found[1]}x{found[0]}, expected {shape[1]}x{shape[0]}")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def fit_shape(grey: np.ndarray, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Resize a (h, w) grey image to `shape` (H, W) with area/linear interpolation; a no-op when it fits."""
    if grey.shape == tuple(shape):
        return grey
    return cv2.resize(grey, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _has_jpeg_end(data: np.ndarray) -> bool:
    return EOI in data[-64:].tobytes()


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(H, W) from a JPEG's frame header (the first SOF segment), or None when there is none to be found."""
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in SOF_MARKERS:
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
        i += 2 + length
    return None


def check_image(path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE) -> ImageError | None:
    """What `read_grey` would refuse, found from the file's header and its last bytes (no decode, ~64 KiB
    read): None when the file looks whole. Not caught: damage inside the compressed data."""
    path = Path(path)
    try:
        head, tail = _head_and_tail(path)
        size = jpeg_size(head) if head[:2] == SOI else None
        if size is None:
            raise ImageError(path, "not a JPEG with a readable header")
        if EOI not in tail:
            raise ImageError(path, "truncated JPEG (no end-of-image marker)")
        _check_shape(path, size, shape)
    except ImageError as exc:
        return exc
    return None


def _head_and_tail(path: Path, head: int = 65536, tail: int = 64) -> tuple[bytes, bytes]:
    """The first `head` and the last `tail` bytes of a file; ImageError when missing, empty or unreadable."""
    if not path.is_file():
        raise ImageError(path, "file not found")
    try:
        with open(path, "rb") as file:
            start = file.read(head)
            file.seek(max(0, file.seek(0, os.SEEK_END) - tail))
            last = file.read()
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not start:
        raise ImageError(path, "empty file")
    return start, last


def check_images(
    paths: Sequence[str | Path], shape: tuple[int, int] = IMAGE_SHAPE, progress: bool = True
) -> list[ImageError]:
    """`check_image` of every path (with progress); the problems, in the given order."""
    checked = (check_image(p, shape) for p in track(paths, "check images", bar=progress))
    return [problem for problem in checked if problem is not None]
