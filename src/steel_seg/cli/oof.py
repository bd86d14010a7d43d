"""`steel-seg oof`: predict a training run's held-out fold at full resolution into an OOF directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.engine.options import add_engine_options, engine_settings, views
from steel_seg.formats.runs import ALLOW_FLAG
from steel_seg.workflow.oof_predict import predict_oof


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("oof", help="out-of-fold probabilities of a training run", description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="the run dir (holds run.json)")
    p.add_argument("--out", type=Path, default=None, help="OOF dir to write (default: oof/<run name>)")
    p.add_argument("--tta", type=views, default=("none",), help="comma list of views, e.g. none,h")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing OOF dir (when the new is whole)"
    )
    p.add_argument(
        ALLOW_FLAG, action="store_true", help="go on when an input file the run recorded has changed"
    )
    add_engine_options(p, limit_help="only the first N held-out images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = engine_settings(args, tta=args.tta)
    out = predict_oof(args.run, args.out, settings, args.overwrite, args.allow_changed_inputs)
    print(f"OOF probabilities of {args.run} -> {out}")
    return 0
