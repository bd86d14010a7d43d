"""`steel-seg predict`: the inference engine over a weights dir (manifest.json + thresholds.json) -> CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steel_seg import submission
from steel_seg.cli._engine_args import add_engine_options, engine_settings
from steel_seg.manifest import MANIFEST_FILE, Manifest
from steel_seg.postprocess import Rules
from steel_seg.predict import Ensemble, predict_submission


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict a submission CSV with a weights dir", description=__doc__
    )
    p.add_argument("--weights-dir", type=Path, required=True, help="holds manifest.json and thresholds.json")
    p.add_argument("--images", type=Path, required=True, help="folder of the test JPEGs")
    p.add_argument("--sample", type=Path, required=True, help="sample_submission.csv (either layout)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    add_engine_options(p, limit_help="predict only the first N images (others empty)")
    p.add_argument("--amp", choices=("auto", "fp16", "bf16", "off"), default="auto")
    p.add_argument("--budget-s", type=float, default=None, help="time limit (default: the manifest's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = engine_settings(args, amp=args.amp, budget_s=args.budget_s)
    try:
        manifest = Manifest.load(args.weights_dir / MANIFEST_FILE)
        rules = Rules.load(args.weights_dir / "thresholds.json")
        ensemble = Ensemble.load(args.weights_dir, manifest, settings.device)
        summary = predict_submission(ensemble, rules, args.images, args.sample, args.out, settings)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.text())
    problems = submission.validate(args.out, args.sample)
    for problem in problems:
        print(f"invalid submission: {problem}", file=sys.stderr)
    return 1 if problems else 0
