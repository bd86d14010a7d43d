"""Benchmark: `steel_seg.formats.folds` at the full train-set scale (12,568 images).

1. Near-duplicate search: `near_pairs` (chunked, vectorised XOR + popcount over the upper triangle) on 12,568
   random 64-bit hashes, and against the textbook double loop (`bin(a ^ b).count("1")` per pair) on the same
   `--subset` hashes in the same run, as a ratio; the textbook time for all 12,568 is extrapolated by pair
   count.
2. Hashing: `hash_images` (JPEG decode + pHash) per image, over the real sample's 27 JPEGs (`--repeats`
   passes).
3. Stratification: `assign_folds` on the real index's presence table (12,568 images, 5 folds).

Run: .venv/bin/python benchmarks/bench_folds.py [--subset 1500] [--repeats 4]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from steel_seg.formats.folds import HASH_THRESHOLD, assign_folds, hash_images, near_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from synthetic_stats import read_index  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal_sample"
N_TRAIN = 12568


def textbook_pairs(hashes: list[int], threshold: int) -> list[tuple[int, int]]:
    """Every pair, one Python popcount each."""
    return [
        (i, j)
        for i, j in itertools.combinations(range(len(hashes)), 2)
        if bin(hashes[i] ^ hashes[j]).count("1") <= threshold
    ]


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def bench_pairs(subset: int) -> None:
    hashes = np.random.default_rng(0).integers(0, 2**63, N_TRAIN, dtype=np.uint64)
    found, full = timed(near_pairs, hashes, HASH_THRESHOLD)
    n_pairs = N_TRAIN * (N_TRAIN - 1) // 2
    print(f"near_pairs, {N_TRAIN} hashes ({n_pairs:,} pairs): {full:.2f} s, {len(found)} found")
    sub = hashes[:subset]
    ours, t_ours = timed(near_pairs, sub, 24)
    theirs, t_theirs = timed(textbook_pairs, sub.tolist(), 24)
    assert ours.tolist() == [list(p) for p in theirs]
    scale = N_TRAIN * (N_TRAIN - 1) / (subset * (subset - 1))
    print(
        f"{subset} hashes: near_pairs {t_ours * 1e3:.1f} ms, textbook loop {t_theirs:.2f} s "
        f"(ratio {t_theirs / t_ours:.0f}x); textbook for {N_TRAIN} extrapolated: {t_theirs * scale:.0f} s"
    )


def bench_hashing(repeats: int) -> None:
    paths = sorted((SAMPLE / "train_images").glob("*.jpg")) * repeats
    _, seconds = timed(hash_images, paths, False)
    print(f"hash_images: {seconds / len(paths) * 1e3:.2f} ms/image over {len(paths)} real JPEGs")


def bench_stratify() -> None:
    presence = read_index(SAMPLE / "train_index_full_12568.csv") > 0
    _, seconds = timed(assign_folds, presence, 5, 0)
    print(f"assign_folds, {len(presence)} images, 5 folds: {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subset", type=int, default=1500, help="hashes for the textbook comparison")
    parser.add_argument("--repeats", type=int, default=4, help="passes over the 27 sample JPEGs")
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")
    bench_pairs(args.subset)
    if SAMPLE.is_dir():
        bench_hashing(args.repeats)
        bench_stratify()
    else:
        print(f"{SAMPLE} not found: hashing and stratification skipped")


if __name__ == "__main__":
    main()
