"""Folds: multilabel-stratified folds that keep near-duplicate images together, and the folds.csv format.

The public train set holds clusters of near-identical images; folds that split a cluster leak it into
validation and flatter the score. So: a 64-bit DCT perceptual hash per image, clusters of images whose hashes
are within a Hamming distance (union-find over a chunked, vectorised pairwise popcount), then
`iterstrat.MultilabelStratifiedKFold` over the clusters (a cluster's label is the union of its members'
labels: classes 1..4 and "no defect"), mapped back to the images.

`folds.csv` (`ImageId,fold[,cluster]`, one row per train image) is written by `Folds.save`/`write_folds` and
read by `read_folds`, here only; `random_folds` makes the quick (leaky) kind.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from steel_seg import fileio
from steel_seg.competition import CLASSES, IMAGE_ID
from steel_seg.formats.images import read_grey
from steel_seg.formats.labels import Labels
from steel_seg.progress import track

HASH_SIZE = (128, 32)  # (W, H) of the shrunk image
HASH_BLOCK = (4, 16)  # (vertical, horizontal) low frequencies kept: 64 bits
HASH_THRESHOLD = 10  # largest Hamming distance between near-duplicates
LABEL_COLUMNS = (*map(str, CLASSES), "none")


def phash(grey: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of a grey image ((H, W) uint8).

    The image is shrunk to 128x32 (keeping some of its 6.25:1 aspect), and its 4x16 lowest-frequency DCT
    coefficients (4 vertical x 16 horizontal) are compared with their median; the 64 bits are packed row by
    row, most significant first. The usual 8x8 block of a 32x32 shrink spends half its bits on vertical
    frequencies that these column-streaked surfaces barely have, and those bits flip with noise.
    On synthetic sets, near-duplicates land <= 6 bits apart, distinct images >= 14.
    """
    small = cv2.resize(grey, HASH_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[: HASH_BLOCK[0], : HASH_BLOCK[1]]
    bits = np.packbits(low > np.median(low))
    return bits.view(">u8")[0].astype(np.uint64)


def hash_images(paths: Sequence[str | Path], progress: bool = True) -> np.ndarray:
    """(N,) uint64 pHashes of image files; `ImageError` names a missing or unreadable file."""
    hashes = np.empty(len(paths), np.uint64)
    for i, path in enumerate(track(paths, "hash", bar=progress)):
        hashes[i] = phash(read_grey(path, shape=None))
    return hashes


def near_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512) -> np.ndarray:
    """All pairs (i, j), i < j, whose hashes differ in at most `threshold` bits.

    Args:
        hashes: (N,) uint64.
        threshold: largest Hamming distance that counts as "near".
        chunk: rows compared at once; memory is ~9 * chunk * N bytes.

    Returns:
        (P, 2) int64, sorted by i then j.
    """
    found = []
    for start in range(0, len(hashes), chunk):
        rows = hashes[start : start + chunk, None]
        dist = np.bitwise_count(rows ^ hashes[None, start:])
        i, j = np.nonzero(dist <= threshold)
        keep = j > i
        found.append(np.stack([i[keep] + start, j[keep] + start], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)


def cluster_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of `pairs` ((P, 2) int) over n items, by union-find.

    Returns:
        (n,) int64 cluster ids 0.., numbered in order of each cluster's first item.
    """
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(n)], np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def label_matrix(presence: pd.DataFrame) -> np.ndarray:
    """(N, 5) uint8 multilabel targets from a presence table (bool columns 1..4): classes 1..4, no defect."""
    present = presence.loc[:, list(CLASSES)].to_numpy(bool)
    return np.column_stack([present, ~present.any(axis=1)]).astype(np.uint8)


def assign_folds(
    presence: pd.DataFrame, k: int = 5, seed: int = 0, clusters: np.ndarray | None = None
) -> pd.DataFrame:
    """Stratified folds at the cluster level, mapped back to images; works without images (e.g. the index).

    Args:
        presence: index ImageId, bool columns 1..4 (as `Labels.presence()`).
        k: number of folds.
        seed: shuffles the iterative stratification.
        clusters: (N,) int cluster id per row of `presence`; None = every image on its own.

    Returns:
        columns ImageId, fold (0..k-1), cluster; one row per image, sorted by ImageId.
    """
    clusters = np.arange(len(presence)) if clusters is None else np.asarray(clusters, np.int64)
    if len(clusters) != len(presence):
        raise ValueError(f"{len(clusters)} cluster ids for {len(presence)} images")
    ids, inverse = np.unique(clusters, return_inverse=True)
    if len(ids) < k:
        raise ValueError(f"{len(ids)} clusters cannot fill {k} folds")
    labels = np.zeros((len(ids), len(LABEL_COLUMNS)), np.uint8)
    np.maximum.at(labels, inverse, label_matrix(presence))
    fold_of_cluster = np.zeros(len(ids), np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, members) in enumerate(splitter.split(np.zeros(len(ids)), labels)):
        fold_of_cluster[members] = fold
    table = pd.DataFrame({IMAGE_ID: presence.index, "fold": fold_of_cluster[inverse], "cluster": inverse})
    return table.sort_values(IMAGE_ID, ignore_index=True)


@dataclass
class Folds:
    """Folds of a train set and what was found on the way.

    Attributes:
        table: ImageId, fold, cluster (as `assign_folds`).
        presence: index ImageId, bool columns 1..4.
        hashes: (N,) uint64 pHash per image, in `presence` order.
    """

    table: pd.DataFrame
    presence: pd.DataFrame
    hashes: np.ndarray

    def clusters(self) -> list[list[str]]:
        """Near-duplicate clusters (2+ images), largest first, each sorted."""
        groups = self.table.groupby("cluster")[IMAGE_ID].apply(sorted)
        return sorted((g for g in groups if len(g) > 1), key=lambda g: (-len(g), g))

    def counts(self) -> pd.DataFrame:
        """Per fold: images, images per class 1..4 and defect-free images (index fold)."""
        labels = pd.DataFrame(label_matrix(self.presence), index=self.presence.index, columns=LABEL_COLUMNS)
        joined = labels.join(self.table.set_index(IMAGE_ID)["fold"])
        counts = joined.groupby("fold")[list(LABEL_COLUMNS)].sum()
        counts.insert(0, "images", joined.groupby("fold").size())
        return counts

    def save(self, path: str | Path) -> None:
        write_folds(self.table, path)


def make_folds(
    labels: Labels,
    images_dir: str | Path,
    k: int = 5,
    threshold: int = HASH_THRESHOLD,
    seed: int = 0,
    progress: bool = True,
) -> Folds:
    """Folds over every image `labels` knows: hash them, cluster near-duplicates, stratify the clusters."""
    presence = labels.presence()
    hashes = hash_images([Path(images_dir) / image_id for image_id in presence.index], progress)
    clusters = cluster_ids(len(hashes), near_pairs(hashes, threshold))
    return Folds(assign_folds(presence, k, seed, clusters), presence, hashes)


def write_folds(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a folds table (columns ImageId, fold, maybe cluster) as folds.csv, atomically."""
    return fileio.write_text(path, table.to_csv(index=False, lineterminator="\n"))


def check_folds_out(path: str | Path, overwrite: bool, inputs: dict[str, str | Path]) -> None:
    """Before `steel-seg folds` computes anything: ValueError naming `path` when it exists and `overwrite`
    is off (runs record the sha256 of the folds.csv they read, and new folds under the old name would make
    their OOF leak), when it exists but is not a folds file (`overwrite` replaces only one), or when it is
    one of `inputs` (what -> path)."""
    path = Path(path)
    fileio.check_not_over(path, inputs)
    if not path.exists():
        return
    if not overwrite:
        raise ValueError(
            f"{path}: exists (runs trained on it would no longer match it); pass --overwrite to replace it, "
            "or choose another --out"
        )
    try:
        read_folds(path)
    except ValueError as exc:
        raise ValueError(f"{exc}; --overwrite replaces only a folds.csv: choose another --out") from None


def read_folds(path: str | Path, known: Collection[str] | None = None) -> pd.Series:
    """`folds.csv` -> fold (int) by ImageId; ValueError naming the file and the row on bad content.

    With `known` (the train set's ImageIds) the file must list exactly those images: an unknown one, or a
    train image it leaves out (which would silently never be trained on nor validated), is an error.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={IMAGE_ID: str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot read folds: {exc}") from exc
    if not {IMAGE_ID, "fold"} <= set(table.columns):
        found = ",".join(map(str, table.columns))
        raise ValueError(f"{path}: columns must include ImageId,fold; got {found}")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    bad = np.flatnonzero(folds.isna().to_numpy() | table[IMAGE_ID].duplicated().to_numpy())
    if bad.size:
        raise ValueError(f"{path}: row {bad[0] + 2}: bad or repeated entry {table.iloc[bad[0]].to_dict()}")
    if known is not None:
        _check_coverage(path, set(table[IMAGE_ID]), set(known))
    return pd.Series(folds.astype(int).to_numpy(), index=table[IMAGE_ID].to_numpy(), name="fold")


def _check_coverage(path: Path, listed: set[str], known: set[str]) -> None:
    unknown, missing = sorted(listed - known), sorted(known - listed)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} image(s) not in the train labels, e.g. {unknown[:3]}")
    if missing:
        raise ValueError(
            f"{path}: covers {len(listed)} of the {len(known)} train images; {len(missing)} missing, e.g. "
            f"{missing[:3]} (make folds for this train set with `steel-seg folds`)"
        )


def random_folds(image_ids: Sequence[str], k: int, seed: int) -> pd.Series:
    """`k` random folds of equal size (quick use only: random folds leak across near-duplicate clusters)."""
    order = np.random.default_rng(seed).permutation(len(image_ids))
    folds = np.empty(len(image_ids), int)
    folds[order] = np.arange(len(image_ids)) % k
    return pd.Series(folds, index=list(image_ids), name="fold")


def fold_ids(folds: pd.Series, fold: int, where: str | Path) -> tuple[list[str], list[str]]:
    """(train ids, validation ids), each sorted: every fold but `fold`, and `fold`; ValueError naming `where`
    when `fold` holds no image."""
    val = sorted(folds.index[folds == fold])
    if not val:
        raise ValueError(f"{where}: no image in fold {fold}; the folds are {sorted(set(folds))}")
    return sorted(folds.index[folds != fold]), val


def resolve_folds(
    folds_csv: str | Path | None,
    spec: str | None,
    image_ids: Sequence[str],
    seed: int,
    out: Path,
    write: bool = True,
) -> tuple[pd.Series, Path]:
    """A run's folds (ImageId -> fold) and the folds.csv they live in: `folds_csv` when given (it must list
    exactly `image_ids`), else `spec` "random K": random folds of `image_ids`, written to `out` (`write`)."""
    if folds_csv:
        return read_folds(folds_csv, image_ids), Path(folds_csv)
    kind, _, k = (spec or "").partition(" ")
    if kind != "random" or not k.strip().isdigit() or int(k) < 2:
        raise ValueError(f"data: give folds_csv, or folds: 'random K' with K >= 2 (got folds={spec!r})")
    folds = random_folds(image_ids, int(k), seed)
    if write:
        write_folds(folds.rename_axis(IMAGE_ID).reset_index(), out)
    return folds, out
