"""`steel-seg pseudo`: pseudo-label a folder of images with a weights dir's ensemble and rules (the kernel's),
keeping the images it is sure of as a train.csv for `data.extra_sources`."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.engine.options import add_engine_options, engine_settings, views
from steel_seg.workflow.pseudo import Confidence, run

DEFAULT = Confidence()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pseudo", help="pseudo-label unlabelled images", description=__doc__)
    p.add_argument("--weights-dir", type=Path, required=True, help="holds manifest.json and thresholds.json")
    p.add_argument("--images", type=Path, required=True, help="folder of the unlabelled JPEGs (test_images)")
    p.add_argument("--out", type=Path, required=True, help="folder: train.csv, selection.csv, summary.json")
    p.add_argument("--tta", type=views, default=None, help="views for every model (default: the manifest's)")
    p.add_argument("--positive", type=float, default=DEFAULT.positive,
                   help="a class is a sure defect from this gate score up (default %(default)s)")  # fmt: skip
    p.add_argument("--negative", type=float, default=DEFAULT.negative,
                   help="a class is surely clean up to this gate score (default %(default)s)")  # fmt: skip
    p.add_argument("--min-pixel-confidence", type=float, default=DEFAULT.min_pixel_confidence,
                   help="least mean probability over a sure defect's mask (default %(default)s)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in --out")
    add_engine_options(p, limit_help="only the first N images, by name")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    settings = engine_settings(args, tta=args.tta)
    limits = Confidence(args.positive, args.negative, args.min_pixel_confidence)
    summary = run(args.weights_dir, args.images, args.out, limits, settings, args.overwrite)
    print(summary.text())
    return 0
