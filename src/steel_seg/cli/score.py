"""`steel-seg score`: the competition's mean Dice of a prediction CSV against a truth CSV (any layouts)."""

from __future__ import annotations

import argparse
import json

from steel_seg.formats.metric import Breakdown, Score, score_files


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="mean Dice of a prediction against the truth",
        description="Mean Dice over every (image, class) pair. Images: the truth's; for a re-release truth "
        "(defect rows only) the union of truth and prediction images; --images DIR sets them from a folder "
        "(and checks a submission's coverage fully). A prediction whose images do not match is refused "
        "unless --subset.",
    )
    parser.add_argument("--truth", required=True, help="train.csv-like truth, any layout")
    parser.add_argument("--pred", required=True, help="submission or train.csv-like prediction, any layout")
    parser.add_argument("--images", default=None, help="folder whose *.jpg names are the images that count")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--subset",
        action="store_true",
        help="score only the images both files know (default: a prediction whose images do not match the "
        "truth's is refused)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = score_files(args.truth, args.pred, args.images, subset=args.subset)
    print(json.dumps(result.to_dict()) if args.json else table(result))
    return 0


def table(result: Score) -> str:
    """A short readable summary: overall, then per class split by empty / non-empty truth."""
    lines = [
        f"mean Dice {result.mean_dice:.5f} over {result.n_pairs} pairs ({result.n_images} images)",
        f"{'class':>5}  {'all':>7}  {'empty truth':>17}  {'non-empty truth':>17}",
    ]
    for c, value in result.per_class.items():
        lines.append(
            f"{c:>5}  {_num(value)}  {_part(result.empty_truth, c)}  {_part(result.nonempty_truth, c)}"
        )
    empty, nonempty = result.empty_truth, result.nonempty_truth
    lines.append(
        f"{'all':>5}  {_num(result.mean_dice)}  {_num(empty.mean_dice)} ({empty.n_pairs:>7})"
        f"  {_num(nonempty.mean_dice)} ({nonempty.n_pairs:>7})"
    )
    return "\n".join(lines)


def _part(breakdown: Breakdown, class_id: int) -> str:
    return f"{_num(breakdown.per_class[class_id])} ({breakdown.n_per_class[class_id]:>7})"


def _num(value: float | None) -> str:
    return f"{value:7.5f}" if value is not None else f"{'-':>7}"
