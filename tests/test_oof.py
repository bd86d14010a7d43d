"""OOF directory: write, read back exactly (quantised), concatenate folds, and clear errors on bad dirs."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter, Origin, dequantise, quantise, read_oof, read_oofs

SHAPE = (256, 1600)


def noisy_probs(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`truth: (4, H, W) uint8` -> `(4, H, W) float32`: blurred truth plus smooth noise blobs."""
    h, w = truth.shape[1:]
    low = rng.random((4, h // 16, w // 16), dtype=np.float32)
    noise = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in low])
    signal = np.stack([cv2.blur(m.astype(np.float32), (9, 9)) for m in truth])
    return np.clip(0.75 * signal + 0.6 * noise**3, 0.0, 1.0).astype(np.float32)


# The folds record test OOF dirs carry: folds 0 and 1 of one (made-up) folds.csv.
TEST_ORIGIN = Origin(folds_sha256="f" * 64, n_folds=2)


def write_oof(path, labels: Labels, image_ids, seed=0, with_cls=False, fold=0):
    rng = np.random.default_rng(seed)
    writer = OOFWriter(path, source="runs/test", fold=fold, has_cls=with_cls, origin=TEST_ORIGIN)
    maps = {}
    for image_id in image_ids:
        probs = noisy_probs(labels.masks(image_id), rng)
        cls = rng.random(4, dtype=np.float32) if with_cls else None
        writer.add(image_id, probs, cls)
        maps[image_id] = (probs, cls)
    writer.close(labels)
    return maps


@pytest.fixture(scope="module")
def labels(synthetic_original) -> Labels:
    """The synthetic set's 27 train images (original layout: defect-free images known without a folder)."""
    return Labels.from_csv(synthetic_original.out_dir / "train.csv")


def test_quantise_round_trip_is_within_half_a_step():
    probs = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(dequantise(quantise(probs)) - probs).max() <= 0.5 / 255 + 1e-7
    assert quantise(np.array([-0.2, 1.3], np.float32)).tolist() == [0, 255]


def test_write_then_read_gives_the_quantised_maps_cls_and_truth(tmp_path, labels):
    ids = labels.image_ids[:6]
    maps = write_oof(tmp_path / "oof", labels, ids, with_cls=True, fold=2)
    meta = json.loads((tmp_path / "oof" / "meta.json").read_text())
    assert meta["image_ids"] == ids and meta["shape"] == [256, 1600] and meta["fold"] == 2
    assert meta["prob_scale"] == 255 and meta["has_cls"] is True and meta["classes"] == 4
    oof = read_oof(tmp_path / "oof")
    assert oof.image_ids == ids and oof.shape == SHAPE
    for image_id, (probs, cls) in maps.items():
        got = oof.probs(image_id)
        assert got.dtype == np.float32 and got.shape == (4, *SHAPE)
        np.testing.assert_array_equal(got, dequantise(quantise(probs)))
        np.testing.assert_array_equal(oof.cls_of(image_id), cls)
        np.testing.assert_array_equal(oof.truth.masks(image_id), labels.masks(image_id))
    truth = pd.read_csv(tmp_path / "oof" / "truth.csv")
    assert list(truth.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert set(truth["ImageId"]) <= set(ids)


def test_png_channels_are_classes_in_cv2_order(tmp_path, labels):
    image_id = labels.image_ids[0]
    probs = np.zeros((4, *SHAPE), np.float32)
    for k in range(4):
        probs[k] = (k + 1) / 10
    writer = OOFWriter(tmp_path, "x", None, has_cls=False)
    writer.add(image_id, probs)
    writer.close(labels)
    png = cv2.imread(str(tmp_path / "probs" / f"{image_id[:-4]}.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (*SHAPE, 4) and png[0, 0].tolist() == [26, 51, 76, 102]
    assert read_oof(tmp_path).cls is None and read_oof(tmp_path).cls_of(image_id) is None


def test_read_oofs_concatenates_folds_and_rejects_overlap(tmp_path, labels):
    ids = labels.image_ids[:8]
    write_oof(tmp_path / "f0", labels, ids[:5], fold=0)
    write_oof(tmp_path / "f1", labels, ids[5:], fold=1)
    oof = read_oofs([tmp_path / "f0", tmp_path / "f1"])
    assert oof.image_ids == ids
    assert set(oof.truth.table["ImageId"]) == set(labels.table["ImageId"]) & set(ids)
    np.testing.assert_array_equal(oof.truth.masks(ids[6]), labels.masks(ids[6]))
    write_oof(tmp_path / "f2", labels, ids[4:6], fold=2)
    with pytest.raises(ValueError, match="f0.*f2|f2.*f0"):
        read_oofs([tmp_path / "f0", tmp_path / "f2"])


def test_read_oofs_rejects_mixed_classifier_dirs(tmp_path, labels):
    write_oof(tmp_path / "a", labels, labels.image_ids[:1])
    write_oof(tmp_path / "b", labels, labels.image_ids[1:2], with_cls=True)
    with pytest.raises(ValueError, match="has_cls"):
        read_oofs([tmp_path / "a", tmp_path / "b"])


def test_missing_png_is_named(tmp_path, labels):
    write_oof(tmp_path, labels, labels.image_ids[:3])
    victim = tmp_path / "probs" / f"{labels.image_ids[1][:-4]}.png"
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        read_oof(tmp_path)


def test_wrong_png_shape_is_named(tmp_path, labels):
    write_oof(tmp_path, labels, labels.image_ids[:2])
    victim = tmp_path / "probs" / f"{labels.image_ids[0][:-4]}.png"
    cv2.imwrite(str(victim), np.zeros((256, 800, 4), np.uint8))
    oof = read_oof(tmp_path)
    with pytest.raises(ValueError, match=victim.name):
        oof.probs(labels.image_ids[0])


def test_rewriting_a_dir_never_mixes_two_runs(tmp_path, labels):
    """An existing dir is refused; with overwrite it stays whole (the old run) until the new one replaces it
    whole: never an old meta.json over new PNGs, never stale PNGs."""
    write_oof(tmp_path, labels, labels.image_ids[:2])
    with pytest.raises(ValueError, match="already holds an OOF dir"):
        OOFWriter(tmp_path, "again", 1, has_cls=False)
    writer = OOFWriter(tmp_path, "again", 1, has_cls=False, overwrite=True)
    writer.add(labels.image_ids[2], np.zeros((4, *SHAPE), np.float32))
    assert read_oof(tmp_path).image_ids == labels.image_ids[:2]
    writer.close(labels)
    assert read_oof(tmp_path).image_ids == [labels.image_ids[2]]
    assert len(list((tmp_path / "probs").iterdir())) == 1


def test_overwrite_never_removes_what_the_writer_did_not_write(tmp_path, labels):
    """A user's file in an OOF dir, or a folder that is no OOF dir, is refused even with overwrite."""
    write_oof(tmp_path / "oof", labels, labels.image_ids[:2])
    (tmp_path / "oof" / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    for folder, extra in (("oof", "notes.txt"), ("other", "train.csv")):
        with pytest.raises(ValueError, match=f"not an OOF dir's \\({extra}\\)"):
            OOFWriter(tmp_path / folder, "again", 1, has_cls=False, overwrite=True)
    assert (tmp_path / "oof" / "notes.txt").read_text() == "mine" and read_oof(tmp_path / "oof").image_ids
    assert (tmp_path / "other" / "train.csv").is_file()


def test_a_failed_writer_leaves_no_staging_folder(tmp_path, labels):
    with pytest.raises(ValueError, match="NaN"), OOFWriter(tmp_path / "oof", "x", 0, has_cls=False) as writer:
        writer.add(labels.image_ids[0], np.full((4, *SHAPE), np.nan, np.float32))
    assert os.listdir(tmp_path) == []


def test_meta_problems_are_named(tmp_path, labels):
    with pytest.raises(ValueError, match="meta.json"):
        read_oof(tmp_path)
    write_oof(tmp_path, labels, labels.image_ids[:2])
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "prob_scale": 100}))
    with pytest.raises(ValueError, match="meta.json"):
        read_oof(tmp_path)


def test_truth_with_foreign_images_is_named(tmp_path, labels):
    defect_ids = sorted(set(labels.table["ImageId"]))
    write_oof(tmp_path, labels, defect_ids[:1])
    labels.table[labels.table["ImageId"].isin(defect_ids[:2])].to_csv(tmp_path / "truth.csv", index=False)
    with pytest.raises(ValueError, match="truth.csv"):
        read_oof(tmp_path)


def test_bad_cls_csv_is_named(tmp_path, labels):
    write_oof(tmp_path, labels, labels.image_ids[:2], with_cls=True)
    table = pd.read_csv(tmp_path / "cls.csv")
    table.loc[1, "p3"] = 1.5
    table.to_csv(tmp_path / "cls.csv", index=False)
    with pytest.raises(ValueError, match="cls.csv: row 3"):
        read_oof(tmp_path)


def test_writer_rejects_bad_input(tmp_path, labels):
    writer = OOFWriter(tmp_path, "x", 0, has_cls=False)
    ok = np.zeros((4, *SHAPE), np.float32)
    with pytest.raises(ValueError, match="4, H, W"):
        writer.add("a.jpg", np.zeros((3, *SHAPE), np.float32))
    with pytest.raises(ValueError, match="cls"):
        writer.add("a.jpg", ok, np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        OOFWriter(tmp_path / "c", "x", 0, has_cls=True).add("a.jpg", ok, np.full(4, 1.5))
    writer.add(labels.image_ids[0], ok)
    with pytest.raises(ValueError, match="twice"):
        writer.add(labels.image_ids[0], ok)
    with pytest.raises(ValueError, match="NaN"):
        writer.add("b.jpg", np.full((4, *SHAPE), np.nan, np.float32))
    writer.add("not_in_labels.jpg", ok)
    with pytest.raises(ValueError, match="unknown to the truth"):
        writer.close(labels)
