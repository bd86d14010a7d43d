"""Damaged copies of good files, for the tests of what the kit does with bad input."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_set(source: Path, target: Path) -> Path:
    """A private copy of a synthetic set, for tests that damage its files."""
    shutil.copytree(source, target)
    return target


def oversized_jpeg(path: Path, source: Path) -> Path:
    """A copy of the JPEG `source` whose frame header claims 65000 x 65000 pixels: OpenCV refuses it with its
    own `cv2.error` (a pixel-count assertion), not by returning None."""
    data = bytearray(source.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    return path


def truncated_jpeg(path: Path, source: Path) -> Path:
    """The first 40% of the JPEG `source` (no end-of-image marker)."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])
    return path
