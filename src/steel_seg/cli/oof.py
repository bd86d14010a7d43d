"""`steel-seg oof`: out-of-fold probabilities at full resolution into an OOF directory, of the ensemble a
weights dir ships (`--weights-dir`: each fold's validation images through exactly that fold's members, with
their manifest weights and views, the way the kernel runs them) or of one training run (`--run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.engine.options import add_engine_options, engine_settings, views
from steel_seg.formats.runs import ALLOW_FLAG
from steel_seg.workflow.oof_predict import predict_ensemble_oof, predict_oof


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "oof", help="out-of-fold probabilities of an ensemble or a run", description=__doc__
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--weights-dir", type=Path, help="a weights dir (manifest.json): the ensemble the kernel will ship"
    )
    source.add_argument("--run", type=Path, help="one run dir (holds run.json)")
    p.add_argument("--out", type=Path, default=None, help="OOF dir to write (default: oof/<its name>)")
    p.add_argument("--tta", type=views, default=None, help="--run only: comma list of views (default none)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing OOF dir (when the new is whole)"
    )
    p.add_argument(
        ALLOW_FLAG, action="store_true", help="go on when an input file a run recorded has changed"
    )
    add_engine_options(p, limit_help="only the first N held-out images (of each fold)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = engine_settings(args, tta=args.tta)
    if args.weights_dir is not None:
        out = predict_ensemble_oof(
            args.weights_dir, args.out, settings, args.overwrite, args.allow_changed_inputs
        )
        print(f"OOF probabilities of the ensemble in {args.weights_dir} -> {out}")
        return 0
    out = predict_oof(args.run, args.out, settings, args.overwrite, args.allow_changed_inputs)
    print(f"OOF probabilities of {args.run} -> {out}")
    return 0
