"""steel_seg.formats.folds: pHash clusters of near-duplicates stay in one fold; folds balance the classes."""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from damage import copy_set, oversized_jpeg
from synthetic_stats import read_index

from steel_seg.cli import folds as folds_cli
from steel_seg.cli import main
from steel_seg.cli import main as cli_main
from steel_seg.formats.folds import (
    HASH_THRESHOLD,
    assign_folds,
    cluster_ids,
    hash_images,
    make_folds,
    near_pairs,
    phash,
)
from steel_seg.formats.images import ImageError
from steel_seg.formats.labels import Labels
from steel_seg.synthetic.dataset import write_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A synthetic train set of 100 images with 3 near-duplicate clusters (in near_duplicates.csv)."""
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, 100, 0, "original", seed=2, progress=False)
    return out


def _true_clusters(synth: Path) -> list[list[str]]:
    groups = pd.read_csv(synth / "near_duplicates.csv").groupby("group")["ImageId"].apply(sorted)
    return sorted(groups.tolist())


def test_clusters_of_the_synthetic_set_are_found_and_kept_in_one_fold(synth):
    labels = Labels.from_csv(synth / "train.csv", synth / "train_images")
    folds = make_folds(labels, synth / "train_images", k=5, seed=0, progress=False)
    truth = _true_clusters(synth)
    assert len(truth) >= 2
    assert sorted(folds.clusters()) == truth
    fold_of = folds.table.set_index("ImageId")["fold"]
    for cluster in truth:
        assert fold_of[cluster].nunique() == 1
    assert list(folds.table.columns) == ["ImageId", "fold", "cluster"]
    assert folds.table["ImageId"].tolist() == labels.image_ids
    assert sorted(folds.table["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds.counts()["images"].sum() == 100


def test_cli_writes_folds_and_reports_clusters(synth, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    folds_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "folds.csv"
    argv = ["folds", "--train-csv", str(synth / "train.csv"), "--images", str(synth / "train_images")]
    args = parser.parse_args([*argv, "--k", "4", "--out", str(out), "--seed", "3"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"near-duplicate clusters: {len(_true_clusters(synth))} (" in printed
    assert "images per fold and class" in printed
    written = pd.read_csv(out)
    assert list(written.columns) == ["ImageId", "fold", "cluster"]
    assert len(written) == 100 and sorted(written["fold"].unique()) == [0, 1, 2, 3]


def test_an_existing_folds_csv_is_replaced_only_with_overwrite(synthetic_set, tmp_path, capsys):
    """Runs record the sha256 of the folds.csv they read: regenerating it silently would make their OOF
    leak. `--overwrite` replaces a folds file, never another file (the train.csv)."""
    data = synthetic_set.out_dir
    out = tmp_path / "folds.csv"
    argv = ["folds", "--train-csv", str(data / "train.csv"), "--images", str(data / "train_images"), "--out"]
    assert cli_main([*argv, str(out), "--seed", "1"]) == 0
    first = out.read_bytes()
    assert cli_main([*argv, str(out), "--seed", "2"]) == 2
    assert f"{out}: exists" in capsys.readouterr().err and out.read_bytes() == first
    assert cli_main([*argv, str(out), "--seed", "2", "--overwrite"]) == 0
    assert out.read_bytes() != first
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    assert cli_main([*argv, str(notes), "--overwrite"]) == 2
    assert "replaces only a folds.csv" in capsys.readouterr().err and notes.read_text() == "a,b\n1,2\n"
    assert cli_main([*argv, str(data / "train.csv"), "--overwrite"]) == 2
    assert "is the train.csv" in capsys.readouterr().err


def test_missing_image_error_names_the_file(synth, tmp_path, capsys):
    labels = Labels.from_csv(synth / "train.csv", synth / "train_images")
    missing = tmp_path / labels.image_ids[0]
    with pytest.raises(ImageError, match=re.escape(f"{missing}: file not found")):
        make_folds(labels, tmp_path, progress=False)
    argv = ["folds", "--train-csv", str(synth / "train.csv"), "--images", str(tmp_path), "--out", "x.csv"]
    assert cli_main(argv) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err


def test_hashes_are_distinct_and_robust(synthetic_set):
    """Synthetic images outside the near-duplicate clusters hash apart; a nudged copy hashes close."""
    in_clusters = {i for cluster in synthetic_set.clusters for i in cluster}
    ids = [i for i in synthetic_set.train_ids if i not in in_clusters]
    paths = [synthetic_set.out_dir / "train_images" / i for i in ids]
    hashes = hash_images(paths, progress=False)
    assert hashes.dtype == np.uint64 and len(hashes) == len(ids) >= 20
    assert np.array_equal(hashes, hash_images(paths, progress=False))
    assert len(near_pairs(hashes, HASH_THRESHOLD)) == 0, "different synthetic images look like duplicates"
    grey = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    nudged = np.clip(np.roll(grey, 4, axis=1) * 1.04 + 3, 0, 255).astype(np.uint8)
    assert int(np.bitwise_count(phash(grey) ^ phash(nudged))) <= HASH_THRESHOLD


def test_real_sample_hashes_are_distinct_and_robust(sample_dir):
    paths = sorted((sample_dir / "train_images").glob("*.jpg"))
    hashes = hash_images(paths, progress=False)
    assert hashes.dtype == np.uint64 and len(hashes) == 27
    assert np.array_equal(hashes, hash_images(paths, progress=False))
    assert len(near_pairs(hashes, HASH_THRESHOLD)) == 0, "27 different real images look like duplicates"
    grey = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    nudged = np.clip(np.roll(grey, 4, axis=1) * 1.04 + 3, 0, 255).astype(np.uint8)
    assert int(np.bitwise_count(phash(grey) ^ phash(nudged))) <= HASH_THRESHOLD


def test_near_pairs_equals_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 90, dtype=np.uint64)
    hashes[40] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[77] = hashes[40] ^ np.uint64(1 << 60)  # 1 bit from 40, 4 from 3
    threshold = 24  # random 64-bit hashes: some pairs fall this close, enough to exercise the chunks
    expected = [
        (i, j)
        for i, j in itertools.combinations(range(len(hashes)), 2)
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= threshold
    ]
    assert {(3, 40), (3, 77), (40, 77)} <= set(expected)
    assert near_pairs(hashes, threshold, chunk=7).tolist() == [list(p) for p in expected]
    assert near_pairs(hashes, 4).tolist() == [[3, 40], [3, 77], [40, 77]]


def test_union_find_joins_chains_and_numbers_by_first_member():
    pairs = np.array([[5, 6], [1, 5], [2, 3]])
    assert cluster_ids(7, pairs).tolist() == [0, 1, 2, 2, 3, 1, 1]
    assert cluster_ids(3, np.zeros((0, 2), np.int64)).tolist() == [0, 1, 2]


def _presence(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    present = rng.random((n, 4)) < [0.07, 0.02, 0.4, 0.06]
    return pd.DataFrame(
        present, index=pd.Index([f"{i:09x}.jpg" for i in range(n)], name="ImageId"), columns=[1, 2, 3, 4]
    )


def test_assign_folds_is_deterministic_by_seed_and_keeps_clusters():
    presence = _presence(400, 0)
    clusters = np.arange(400) // 4  # clusters of 4 consecutive images
    a = assign_folds(presence, 5, seed=1, clusters=clusters)
    assert a.equals(assign_folds(presence, 5, seed=1, clusters=clusters))
    assert not a["fold"].equals(assign_folds(presence, 5, seed=2, clusters=clusters)["fold"])
    assert (a.groupby("cluster")["fold"].nunique() == 1).all()
    assert a["cluster"].nunique() == 100
    with pytest.raises(ValueError, match="3 clusters cannot fill 5 folds"):
        assign_folds(presence.iloc[:3], 5)


def test_real_index_folds_are_balanced_within_3_percent(sample_dir):
    index = sample_dir / "train_index_full_12568.csv"
    if not index.is_file():
        pytest.skip(f"{index} not found")
    presence = read_index(index) > 0
    table = assign_folds(presence, k=5, seed=0)
    assert len(table) == 12568 and table["ImageId"].is_unique
    joined = presence.join(table.set_index("ImageId")["fold"])
    joined["none"] = ~presence.any(axis=1)
    counts = joined.groupby("fold")[[1, 2, 3, 4, "none"]].sum()
    assert counts.sum().tolist() == [897, 247, 5150, 801, 5902]
    deviation = (counts / counts.mean() - 1).abs()
    assert (deviation <= 0.03).all().all(), counts


def test_an_image_opencv_refuses_is_named_by_folds_and_eda(synthetic_set, tmp_path, capsys):
    """OpenCV raises its own cv2.error on a header claiming 65000 x 65000 pixels: both commands that read
    every train image name the file and exit 2, no traceback."""
    data = copy_set(synthetic_set.out_dir, tmp_path / "set")
    ids = sorted(p.name for p in (data / "train_images").glob("*.jpg"))
    victim = oversized_jpeg(data / "train_images" / ids[3], data / "train_images" / ids[0])
    common = ["--train-csv", str(data / "train.csv"), "--images", str(data / "train_images")]
    assert main(["folds", *common, "--out", str(tmp_path / "folds.csv")]) == 2
    assert f"{victim}: OpenCV cannot decode it" in capsys.readouterr().err
    assert main(["report", "eda", *common, "--out", str(tmp_path / "eda")]) == 2
    assert f"{victim}: OpenCV cannot decode it" in capsys.readouterr().err
