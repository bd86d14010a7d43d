"""`steel-seg manifest`: gather trained model dirs into the weights dir and write its manifest.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.engine.options import views
from steel_seg.models.manifest import DEFAULT_BUDGET_S, copy_model_dir, write_manifest


def _model(text: str) -> tuple[str, Path]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source or "/" in name:
        raise argparse.ArgumentTypeError(
            f"expected NAME=MODEL_DIR (e.g. unet-f0=runs/unet-f0/best), got {text!r}"
        )
    return name, Path(source)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "manifest", help="collect model dirs into a weights dir + manifest.json", description=__doc__
    )
    p.add_argument(
        "--weights-dir", type=Path, required=True, help="the folder uploaded as the weights dataset"
    )
    p.add_argument(
        "--model",
        type=_model,
        action="append",
        required=True,
        metavar="NAME=MODEL_DIR",
        help="a model dir (spec.json + model.safetensors) copied to WEIGHTS_DIR/NAME (repeatable)",
    )
    p.add_argument(
        "--tta", type=views, default=("none", "h", "v"), help="segmenters' views (default none,h,v)"
    )
    p.add_argument(
        "--cls-tta",
        type=views,
        help="classifiers' views (default: those of --tta; the 1st place ran its classifiers with none,h,v)",
    )
    p.add_argument(
        "--weight", type=float, action="append", help="ensemble weight per --model (default 1 each)"
    )
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="kernel time budget in seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dirs = [copy_model_dir(source, args.weights_dir, name) for name, source in args.model]
    path = write_manifest(args.weights_dir, dirs, tta=args.tta, cls_tta=args.cls_tta, weights=args.weight,
                          budget_s=args.budget_s)  # fmt: skip
    cls_views = args.tta if args.cls_tta is None else args.cls_tta
    print(f"wrote {path}: {', '.join(name for name, _ in args.model)}; views {','.join(args.tta)} "
          f"(classifiers {','.join(cls_views)})")  # fmt: skip
    return 0
