"""Grey JPEG reading: real sample images, and every kind of bad file the kernel can meet."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from damage import oversized_jpeg, truncated_jpeg

from steel_seg.competition import IMAGE_SHAPE
from steel_seg.formats.images import ImageError, check_image, check_images, fit_shape, read_grey


def _write_jpeg(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def test_real_sample_images_read_as_grey(sample_dir):
    for path in sorted((sample_dir / "train_images").glob("*.jpg"))[:5]:
        grey = read_grey(path)
        assert grey.shape == IMAGE_SHAPE and grey.dtype == np.uint8
        colour = cv2.imread(str(path), cv2.IMREAD_COLOR)
        # The three channels are copies of one grey channel, so the grey decode matches any of them closely.
        assert np.abs(colour[..., 0].astype(int) - grey.astype(int)).max() <= 2


def test_one_channel_jpeg_reads(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, IMAGE_SHAPE, dtype=np.uint8)
    out = read_grey(_write_jpeg(tmp_path / "grey.jpg", grey))
    assert out.shape == IMAGE_SHAPE


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        read_grey(tmp_path / "missing.jpg")


def test_empty_and_garbage_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ImageError, match="empty file"):
        read_grey(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="junk.jpg: not a decodable image"):
        read_grey(tmp_path / "junk.jpg")


def test_truncated_jpeg_is_rejected(tmp_path):
    grey = np.random.default_rng(1).integers(0, 255, IMAGE_SHAPE, dtype=np.uint8)
    data = _write_jpeg(tmp_path / "full.jpg", grey).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_grey(tmp_path / "cut.jpg")


def test_wrong_size_is_reported_and_can_be_fitted(tmp_path):
    small = np.full((128, 800), 77, np.uint8)
    path = _write_jpeg(tmp_path / "small.jpg", small)
    with pytest.raises(ImageError, match="size 800x128, expected 1600x256"):
        read_grey(path)
    fitted = fit_shape(read_grey(path, shape=None))
    assert fitted.shape == IMAGE_SHAPE and abs(int(fitted.mean()) - 77) <= 1


def test_opencv_refusing_a_file_is_an_image_error_naming_it(tmp_path):
    """A header claiming 65000 x 65000 pixels: OpenCV raises its own cv2.error (not None)."""
    source = _write_jpeg(tmp_path / "good.jpg", np.full(IMAGE_SHAPE, 90, np.uint8))
    huge = oversized_jpeg(tmp_path / "huge.jpg", source)
    with pytest.raises(cv2.error):
        cv2.imdecode(np.fromfile(huge, np.uint8), cv2.IMREAD_GRAYSCALE)
    with pytest.raises(ImageError, match=r"huge\.jpg: OpenCV cannot decode it \(.*\)") as err:
        read_grey(huge)
    assert pickle.loads(pickle.dumps(err.value)).reason == err.value.reason  # intact across processes


def test_the_header_check_finds_what_a_decode_would(tmp_path):
    source = _write_jpeg(tmp_path / "good.jpg", np.full(IMAGE_SHAPE, 90, np.uint8))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg" * 50)
    bad = {
        "huge.jpg": (oversized_jpeg(tmp_path / "huge.jpg", source), "size 65000x65000, expected 1600x256"),
        "cut.jpg": (truncated_jpeg(tmp_path / "cut.jpg", source), "truncated JPEG (no end-of-image marker)"),
        "small.jpg": (_write_jpeg(tmp_path / "small.jpg", np.zeros((128, 800), np.uint8)), "size 800x128"),
        "empty.jpg": (tmp_path / "empty.jpg", "empty file"),
        "junk.jpg": (tmp_path / "junk.jpg", "not a JPEG with a readable header"),
        "gone.jpg": (tmp_path / "gone.jpg", "file not found"),
    }
    assert check_image(source) is None
    problems = check_images([source, *(path for path, _ in bad.values())], progress=False)
    assert [Path(p.path).name for p in problems] == list(bad)
    for problem, (_, reason) in zip(problems, bad.values(), strict=True):
        assert problem.reason.startswith(reason)
