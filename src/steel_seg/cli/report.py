"""`steel-seg report`: look before guessing. `report eda` on a train set, `report eval` on OOF predictions.

Each writes PNG figures and one self-contained `report.html` (figures embedded, no external resources).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.cli.options import add_workers_option, floats
from steel_seg.formats.folds import HASH_THRESHOLD
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import read_oofs
from steel_seg.postprocess.rules import Rules
from steel_seg.report import eda, eda_page, eval_page, evaluate
from steel_seg.report.evaluate import CURVE_THRESHOLDS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="EDA and evaluation reports (figures + one HTML page)", description=__doc__
    )
    sub = p.add_subparsers(dest="report", required=True)
    e = sub.add_parser("eda", help="class statistics, overlays and near-duplicate clusters of a train set")
    e.add_argument("--train-csv", type=Path, required=True, help="train.csv (either Kaggle layout)")
    e.add_argument("--images", type=Path, required=True, help="folder of the train JPEGs")
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument(
        "--hash-threshold",
        type=int,
        default=HASH_THRESHOLD,
        help=f"pHash bits within which images are near-duplicates (default {HASH_THRESHOLD}); "
        "negative: skip the near-duplicate section",
    )
    e.add_argument("--per-class", type=int, default=3, help="overlay samples per class (default 3)")
    e.add_argument("--seed", type=int, default=0, help="seed of the overlay samples (default 0)")
    e.set_defaults(func=run_eda)
    v = sub.add_parser("eval", help="Dice breakdowns, ROC, curves and worst images of OOF predictions")
    v.add_argument("--oof", type=Path, action="append", required=True, help="OOF dir (repeat for folds)")
    v.add_argument("--thresholds", type=Path, help="post-processing rules JSON (default: 0.5, no filters)")
    v.add_argument("--images", type=Path, help="train JPEGs, drawn under the worst images' contours")
    v.add_argument("--out", type=Path, required=True, help="output folder")
    v.add_argument("--worst", type=int, default=3, help="worst images shown per class (default 3)")
    v.add_argument(
        "--curve-thresholds",
        type=floats,
        default=CURVE_THRESHOLDS,
        help="pixel thresholds of the Dice curves, comma list (each costs a pass per image; "
        f"default {','.join(map(str, CURVE_THRESHOLDS))})",
    )
    add_workers_option(v, "for the pass over the OOF images")
    v.set_defaults(func=run_eval)


def run_eda(args: argparse.Namespace) -> int:
    labels = Labels.from_csv(args.train_csv, args.images)
    clusters = None
    if args.hash_threshold >= 0:
        clusters = eda.near_duplicate_clusters(labels.image_ids, args.images, args.hash_threshold)
    settings = eda_page.EdaSettings(per_class=args.per_class, seed=args.seed)
    written = eda_page.build(labels, args.images, args.out, clusters, settings)
    print(f"{written.summary}; wrote {written.html} ({len(written.figures)} figures)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    rules = Rules.load(args.thresholds) if args.thresholds else Rules()
    source = str(args.thresholds) if args.thresholds else "defaults"
    settings = eval_page.EvalSettings(worst=args.worst, curve_thresholds=args.curve_thresholds)
    oof = read_oofs(args.oof)
    ev = evaluate.collect(oof, rules, settings.curve_thresholds, args.workers)
    written = eval_page.render(ev, oof, args.out, args.images, settings, source)
    print(f"{written.summary}; wrote {written.html} ({len(written.figures)} figures)")
    return 0
