"""`steel-seg tune`: search the post-processing rules that maximise mean Dice on OOF predictions."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.cli.options import add_workers_option, floats, ints
from steel_seg.postprocess.tune import Grid, summary, tune_oof

DEFAULT = Grid()


def _joined(values) -> str:
    return ",".join(str(v) for v in values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="tune post-processing thresholds on OOF predictions", description=__doc__
    )
    p.add_argument("--oof", type=Path, action="append", required=True, help="OOF dir (repeat for folds)")
    p.add_argument("--out", type=Path, required=True, help="thresholds JSON to write")
    add_workers_option(p, "collecting the OOF statistics")
    grid = p.add_argument_group("grid (comma lists; the defaults 0.5/0/0/0/0 are always added)")
    grid.add_argument(
        "--pixel-thresholds",
        type=floats,
        default=DEFAULT.pixel_thresholds,
        help=f"default {_joined(DEFAULT.pixel_thresholds)}",
    )
    grid.add_argument(
        "--min-components",
        type=ints,
        default=DEFAULT.min_components,
        help=f"default {_joined(DEFAULT.min_components)}",
    )
    grid.add_argument(
        "--min-areas", type=ints, default=DEFAULT.min_areas, help=f"default {_joined(DEFAULT.min_areas)}"
    )
    grid.add_argument(
        "--gates",
        type=floats,
        default=DEFAULT.gates,
        help=f"on the classifier's (else aux head's) probability; default {_joined(DEFAULT.gates)}",
    )
    grid.add_argument(
        "--seg-gates",
        type=floats,
        default=DEFAULT.seg_gates,
        help=f"on the segmenters' max pixel probability; default {_joined(DEFAULT.seg_gates)}",
    )
    grid.add_argument(
        "--one-class-per-pixel",
        action="store_true",
        help="argmax across classes before thresholding (fixed during the search)",
    )
    guards = p.add_argument_group("guards (the OOF dirs must be out of one folds.csv and one ensemble)")
    guards.add_argument(
        "--allow-partial-folds",
        action="store_true",
        help="tune on OOF predictions of only some of the folds.csv's folds",
    )
    guards.add_argument(
        "--allow-mixed",
        action="store_true",
        help="tune on OOF dirs of different folds files or ensembles, or that record neither (older dirs)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    grid = Grid(
        pixel_thresholds=args.pixel_thresholds,
        min_components=args.min_components,
        min_areas=args.min_areas,
        gates=args.gates,
        seg_gates=args.seg_gates,
        one_class_per_pixel=args.one_class_per_pixel,
    )
    guards = {"allow_partial_folds": args.allow_partial_folds, "allow_mixed": args.allow_mixed}
    rules = tune_oof(args.oof, grid, args.workers, **guards)
    rules.save(args.out)
    print(summary(rules))
    print(f"wrote {args.out}")
    return 0
