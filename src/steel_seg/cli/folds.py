"""`steel-seg folds`: multilabel-stratified folds that keep near-duplicate images in one fold."""

from __future__ import annotations

import argparse

from steel_seg.formats.folds import HASH_THRESHOLD, Folds, check_folds_out, make_folds
from steel_seg.formats.labels import Labels


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "folds",
        help="stratified folds keeping near-duplicates together",
        description="Perceptual-hash every train image, cluster hashes within --hash-threshold bits, "
        "stratify the clusters on class presence (1-4 and no defect); writes ImageId,fold,cluster.",
    )
    parser.add_argument("--train-csv", required=True, help="train.csv, either layout")
    parser.add_argument("--images", required=True, help="train_images folder")
    parser.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--out", required=True, help="folds CSV to write")
    parser.add_argument(
        "--hash-threshold",
        type=int,
        default=HASH_THRESHOLD,
        help=f"largest Hamming distance (of 64 bits) between near-duplicates (default {HASH_THRESHOLD})",
    )
    parser.add_argument("--seed", type=int, default=0, help="stratification seed")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing folds CSV at --out (runs trained on it "
        "then refuse to resume or predict OOF)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_folds_out(args.out, args.overwrite, {"train.csv": args.train_csv, "images folder": args.images})
    labels = Labels.from_csv(args.train_csv, args.images)
    folds = make_folds(labels, args.images, args.k, args.hash_threshold, args.seed)
    folds.save(args.out)
    print(report(folds))
    print(f"folds: {len(folds.table)} images in {args.k} folds -> {args.out}")
    return 0


def report(folds: Folds, examples: int = 3) -> str:
    """Clusters found (count, sizes, a few examples) and the per-fold per-class image counts."""
    clusters = folds.clusters()
    sizes = sorted({len(c) for c in clusters})
    histogram = ", ".join(f"{sum(len(c) == s for c in clusters)} of {s}" for s in sizes) or "none"
    lines = [f"near-duplicate clusters: {len(clusters)} ({histogram}), {sum(map(len, clusters))} images"]
    lines += [f"  e.g. {' '.join(c)}" for c in clusters[:examples]]
    lines.append("images per fold and class (none = defect-free):")
    lines.append(folds.counts().to_string())
    return "\n".join(lines)
