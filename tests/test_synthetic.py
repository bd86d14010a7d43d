"""steel_seg.synthetic.dataset: a deterministic, Kaggle-shaped set whose masks are where the image changed."""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_stats import derive_stats, read_index

from steel_seg.cli import synth as synth_cli
from steel_seg.competition import Layout
from steel_seg.formats.labels import Labels
from steel_seg.formats.submission import read_sample
from steel_seg.synthetic import dataset
from steel_seg.synthetic.dataset import CLASSES, SyntheticStats, write_dataset

INDEX_NAME = "train_index_full_12568.csv"


@pytest.fixture(scope="module")
def big_set(tmp_path_factory) -> dataset.SyntheticSet:
    """240 train + 8 test images, re-release layout: enough for class frequencies and a few clusters."""
    return write_dataset(tmp_path_factory.mktemp("big"), 240, 8, "rerelease", seed=11, progress=False)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> dict[str, Path]:
    """The same seed written twice in the re-release layout and once in the original layout."""
    out = {}
    for name, layout in (("a", "rerelease"), ("b", "rerelease"), ("original", "original")):
        out[name] = tmp_path_factory.mktemp(name)
        write_dataset(out[name], 12, 4, layout, seed=5, progress=False)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(small_sets, tmp_path):
    first, second = _files(small_sets["a"]), _files(small_sets["b"])
    assert len(first) == 12 + 4 + 5
    assert first == second
    other = write_dataset(tmp_path, 12, 4, "rerelease", seed=6, progress=False)
    assert other.train_ids != sorted(p.name for p in (small_sets["a"] / "train_images").glob("*.jpg"))


def test_both_layouts_read_back_as_the_same_labels(small_sets):
    new = Labels.from_csv(small_sets["a"] / "train.csv", small_sets["a"] / "train_images")
    old = Labels.from_csv(small_sets["original"] / "train.csv", small_sets["original"] / "train_images")
    assert new.image_ids == old.image_ids and len(new.image_ids) == 12
    assert new.table.equals(old.table)
    header = (small_sets["original"] / "train.csv").read_text().splitlines()[0]
    assert header == "ImageId_ClassId,EncodedPixels"
    assert (small_sets["a"] / "train.csv").read_text().splitlines()[0] == "ImageId,ClassId,EncodedPixels"


def test_sample_submission_matches_the_layout_like_kaggles(small_sets):
    test_ids = sorted(p.name for p in (small_sets["a"] / "test_images").glob("*.jpg"))
    final = read_sample(small_sets["a"] / "sample_submission.csv")
    stage1 = read_sample(small_sets["original"] / "sample_submission.csv")
    assert final.layout is Layout.FINAL and stage1.layout is Layout.ORIGINAL
    assert final.image_ids == stage1.image_ids == test_ids
    with open(small_sets["a"] / "sample_submission.csv", newline="") as f:
        assert {(r["EncodedPixels"], r["ClassId"]) for r in csv.DictReader(f)} == {("1 409600", "0")}
    with open(small_sets["original"] / "sample_submission.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * len(test_ids) and {r["EncodedPixels"] for r in rows} == {"1 1"}
    truth = Labels.from_csv(small_sets["a"] / "test_truth.csv", small_sets["a"] / "test_images")
    assert truth.image_ids == test_ids


def test_image_ids_and_jpegs_look_like_kaggles(big_set):
    ids = big_set.train_ids + big_set.test_ids
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", i) for i in ids)
    assert len(set(ids)) == len(ids)
    image = cv2.imread(str(big_set.out_dir / "train_images" / ids[0]), cv2.IMREAD_COLOR)
    assert image.shape == (256, 1600, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])


def test_masks_are_where_the_image_was_changed(big_set):
    """Inside each defect the JPEG's mean differs from a ring around it: darker (1, 2, 4), brighter (3)."""
    labels = Labels.from_csv(big_set.out_dir / "train.csv", big_set.out_dir / "train_images")
    direction = {1: -1, 2: -1, 3: 1, 4: -1}
    seen = set()
    for image_id in labels.table["ImageId"].unique()[:40]:
        grey = cv2.imread(str(big_set.out_dir / "train_images" / image_id), cv2.IMREAD_GRAYSCALE).astype(
            float
        )
        masks = labels.masks(image_id)
        assert masks.sum(axis=0).max() <= 1, f"{image_id}: classes overlap"
        for c in CLASSES:
            inside = masks[c - 1].astype(bool)
            if not inside.any():
                continue
            ring = cv2.dilate(masks.max(axis=0), np.ones((9, 9), np.uint8)).astype(bool) & ~masks.any(axis=0)
            contrast = grey[inside].mean() - grey[ring].mean()
            assert contrast * direction[c] > 15, f"{image_id} class {c}: contrast {contrast:.1f}"
            seen.add(c)
    assert seen == set(CLASSES)


def class_frequency(stats: SyntheticStats) -> dict[int, float]:
    """ClassId -> share of images that carry it."""
    return {
        c: sum(n for key, n in stats.combinations.items() if str(c) in key.split("|")) / stats.n_images
        for c in CLASSES
    }


def test_class_frequencies_follow_the_statistics(big_set):
    stats = SyntheticStats.load()
    n = len(big_set.train_ids)
    expected = class_frequency(stats)
    for c in CLASSES:
        p = expected[c]
        slack = 4 * math.sqrt(n * p * (1 - p)) + 3
        assert abs(big_set.class_counts[c] - n * p) <= slack, (c, big_set.class_counts[c], n * p)
    free = stats.combinations[""] / stats.n_images
    assert abs(big_set.n_defect_free - n * free) <= 4 * math.sqrt(n * free * (1 - free)) + 3


def test_areas_follow_the_statistics():
    """Median generated area per class within a factor 2 of the real median."""
    stats = SyntheticStats.load()
    rng = np.random.default_rng(0)
    areas = {c: [dataset.sample_area(rng, stats, c) for _ in range(400)] for c in CLASSES}
    median = stats.area_levels.index(0.5)
    for c in CLASSES:
        ratio = np.median(areas[c]) / stats.area_quantiles[c][median]
        assert 0.5 < ratio < 2, (c, ratio)
        assert min(areas[c]) >= stats.area_quantiles[c][1] * 0.99


def test_near_duplicate_clusters_are_written(big_set):
    assert 2 <= len(big_set.clusters) <= 20
    with open(big_set.out_dir / "near_duplicates.csv", newline="") as f:
        groups = {}
        for row in csv.DictReader(f):
            groups.setdefault(row["group"], []).append(row["ImageId"])
    assert sorted(groups.values()) == big_set.clusters
    labels = Labels.from_csv(big_set.out_dir / "train.csv", big_set.out_dir / "train_images")
    presence = labels.presence()
    for cluster in big_set.clusters:
        assert presence.loc[cluster].nunique().max() == 1, "near-duplicates share their defects"


def test_shipped_stats_equal_a_fresh_derivation(sample_dir):
    index = sample_dir / INDEX_NAME
    if not index.is_file():
        pytest.skip(f"{index} not found")
    assert derive_stats(index) == SyntheticStats.load()
    stats = SyntheticStats.load()
    assert stats.n_images == 12568 and stats.combinations[""] == 5902
    assert [round(class_frequency(stats)[c] * stats.n_images) for c in CLASSES] == [897, 247, 5150, 801]


def test_read_index_names_file_and_row(tmp_path):
    bad = tmp_path / "index.csv"
    bad.write_text(
        "image_id,area_class_1,area_class_2,area_class_3,area_class_4\na.jpg,0,0,0,0\nb.jpg,0,x,0,0\n"
    )
    with pytest.raises(ValueError, match=r"index\.csv: row 3: area_class_2 'x'"):
        read_index(bad)
    (tmp_path / "short.csv").write_text("image_id,area_class_1\na.jpg,0\n")
    with pytest.raises(ValueError, match="short.csv: missing column"):
        read_index(tmp_path / "short.csv")


def test_refuses_a_folder_holding_another_set(tmp_path):
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train_images" / "abcdef012.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="train_images: holds 1 JPEG"):
        write_dataset(tmp_path, 4, 1, progress=False)
    with pytest.raises(ValueError, match="unknown layout"):
        write_dataset(tmp_path / "new", 4, 1, layout="stage1", progress=False)


def test_cli_writes_a_set_and_a_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "set"
    args = parser.parse_args(
        ["synth", "--out", str(out), "--images", "6", "--test-images", "2", "--seed", "1"]
    )
    assert args.func(args) == 0
    assert re.match(r"synth: 6 train images \(\d+ defect-free; .*\+ 2 test images", capsys.readouterr().out)
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
