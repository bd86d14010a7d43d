"""`steel-seg tune`: search the post-processing rules that maximise mean Dice on OOF predictions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steel_seg.postprocess.tune import Grid, summary, tune_oof

DEFAULT = Grid()


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _joined(values) -> str:
    return ",".join(str(v) for v in values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="tune post-processing thresholds on OOF predictions", description=__doc__
    )
    p.add_argument("--oof", type=Path, action="append", required=True, help="OOF dir (repeat for folds)")
    p.add_argument("--out", type=Path, required=True, help="thresholds JSON to write")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes collecting the OOF statistics; 1 = in this process (default: all cores, "
        f"{os.cpu_count()} here); the result does not depend on it",
    )
    grid = p.add_argument_group("grid (comma lists; the defaults 0.5/0/0/0 are always added)")
    grid.add_argument(
        "--pixel-thresholds",
        type=_floats,
        default=DEFAULT.pixel_thresholds,
        help=f"default {_joined(DEFAULT.pixel_thresholds)}",
    )
    grid.add_argument(
        "--min-components",
        type=_ints,
        default=DEFAULT.min_components,
        help=f"default {_joined(DEFAULT.min_components)}",
    )
    grid.add_argument(
        "--min-areas", type=_ints, default=DEFAULT.min_areas, help=f"default {_joined(DEFAULT.min_areas)}"
    )
    grid.add_argument(
        "--gates", type=_floats, default=DEFAULT.gates, help=f"default {_joined(DEFAULT.gates)}"
    )
    grid.add_argument(
        "--one-class-per-pixel",
        action="store_true",
        help="argmax across classes before thresholding (fixed during the search)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        grid = Grid(
            args.pixel_thresholds, args.min_components, args.min_areas, args.gates, args.one_class_per_pixel
        )
        rules = tune_oof(args.oof, grid, args.workers)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rules.save(args.out)
    print(summary(rules))
    print(f"wrote {args.out}")
    return 0
