"""`steel-seg manifest`: gather trained model dirs into the weights dir and write its manifest.json, with
each model's provenance (its run, held-out fold, folds.csv and config) for `steel-seg oof --weights-dir`."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.engine.options import views
from steel_seg.formats.runs import ALLOW_FLAG
from steel_seg.models.manifest import DEFAULT_BUDGET_S, Manifest, collect_models
from steel_seg.workflow.provenance import provenance_of


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
    p.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="collect a run's model even when an input file it recorded changed",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = collect_models(
        args.weights_dir,
        args.model,
        allow_changed_inputs=args.allow_changed_inputs,
        describe=provenance_of,
        tta=args.tta,
        cls_tta=args.cls_tta,
        weights=args.weight,
        budget_s=args.budget_s,
    )
    cls_views = args.tta if args.cls_tta is None else args.cls_tta
    print(
        f"wrote {path}: {', '.join(name for name, _ in args.model)}; views {','.join(args.tta)} "
        f"(classifiers {','.join(cls_views)})"
    )
    lost = [m.name for m in Manifest.load(path).models if m.provenance is None]
    if lost:
        print(
            f"note: {', '.join(lost)} not from a training run (no run.json beside it): no out-of-fold "
            "predictions can be made for them (steel-seg oof --weights-dir refuses)"
        )
    return 0
