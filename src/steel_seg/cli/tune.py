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
    grid = p.add_argument_group("grid (comma lists; the defaults 0.5/0/0/0 are always added)")
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
    grid.add_argument("--gates", type=floats, default=DEFAULT.gates, help=f"default {_joined(DEFAULT.gates)}")
    grid.add_argument(
        "--one-class-per-pixel",
        action="store_true",
        help="argmax across classes before thresholding (fixed during the search)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    grid = Grid(
        args.pixel_thresholds, args.min_components, args.min_areas, args.gates, args.one_class_per_pixel
    )
    rules = tune_oof(args.oof, grid, args.workers)
    rules.save(args.out)
    print(summary(rules))
    print(f"wrote {args.out}")
    return 0
