"""`steel-seg predict`: the inference engine over a weights dir (manifest.json + thresholds.json) -> CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steel_seg.engine.options import (
    add_budget_option,
    add_engine_options,
    add_final_format_option,
    add_recipe_option,
    engine_settings,
)
from steel_seg.engine.submit import Inputs, load, run
from steel_seg.models.manifest import MANIFEST_FILE, Manifest
from steel_seg.postprocess.rules import THRESHOLDS_FILE, Rules


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict a submission CSV with a weights dir", description=__doc__
    )
    p.add_argument("--weights-dir", type=Path, required=True, help="holds manifest.json and thresholds.json")
    p.add_argument("--images", type=Path, required=True, help="folder of the test JPEGs")
    p.add_argument("--sample", type=Path, required=True, help="sample_submission.csv (either layout)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    add_engine_options(p, limit_help="predict only the first N images (others empty)")
    add_budget_option(p)
    add_recipe_option(p)
    add_final_format_option(p)
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    settings = engine_settings(args)
    inputs = Inputs(args.images, args.sample, args.weights_dir, args.out)
    manifest = Manifest.load(args.weights_dir / MANIFEST_FILE)
    rules = Rules.load(args.weights_dir / THRESHOLDS_FILE)
    ensemble = load(inputs, manifest, rules, settings, args.allow_recipe_mismatch)
    outcome = run(ensemble, rules, inputs, settings)
    if outcome.summary is not None:
        print(outcome.summary.text())
    if outcome.error:
        print(f"steel-seg predict: prediction failed mid-run ({outcome.error}); {args.out} is complete, the "
              "rest empty", file=sys.stderr)  # fmt: skip
    for problem in outcome.problems:
        print(f"steel-seg predict: invalid submission: {problem}", file=sys.stderr)
    return 2 if outcome.error else (1 if outcome.problems else 0)
