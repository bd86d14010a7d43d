"""`steel-seg synth`: write a Severstal-like synthetic data set (images, train.csv, sample submission)."""

from __future__ import annotations

import argparse
import time

from steel_seg.synthetic.dataset import LAYOUTS, write_dataset


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic Severstal-like data set",
        description="Steel-textured 1600x256 JPEGs with four kinds of drawn defects (exact masks), class "
        "frequencies and areas following the real train set, a few near-duplicate clusters; train.csv and "
        "sample_submission.csv in Kaggle's layouts, test_truth.csv for scoring a dry run.",
    )
    parser.add_argument("--out", required=True, help="output folder (created; must not hold another set)")
    parser.add_argument("--images", type=int, default=300, help="train images (default 300)")
    parser.add_argument("--test-images", type=int, default=50, help="test images (default 50)")
    parser.add_argument("--layout", choices=LAYOUTS, default="rerelease", help="train.csv layout")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = write_dataset(args.out, args.images, args.test_images, args.layout, args.seed)
    print(f"synth: {result.summary()} ({time.perf_counter() - start:.1f} s)")
    return 0
