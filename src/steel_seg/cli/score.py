"""`steel-seg score`: the competition's mean Dice of a prediction CSV against a truth CSV (any layouts).

A submission that a run wrote with images left unpredicted (`--limit`, the kernel's push run, a deadline)
carries a record of them beside it (`formats.submission.read_record`, bound to the file by its sha256): the
score then says how many were scored as empty predictions and adds the mean Dice over the predicted ones.
"""

from __future__ import annotations

import argparse
import json
import sys

from steel_seg.competition import IMAGE_ID
from steel_seg.formats.metric import Breakdown, Score, score_files
from steel_seg.formats.submission import read_record


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
    record, ignored = read_record(args.pred)
    if ignored:
        print(f"steel-seg score: note: {ignored}", file=sys.stderr)
    scored = list(dict.fromkeys(result.pairs[IMAGE_ID]))
    skipped = _not_predicted(record, scored)
    unpredicted = {i for ids in skipped.values() for i in ids}
    done = [i for i in scored if i not in unpredicted]
    predicted = None
    if skipped and done:
        predicted = score_files(args.truth, args.pred, args.images, subset=args.subset, only=done)
    if args.json:
        extra = {"not_predicted": {reason: len(ids) for reason, ids in skipped.items()}}
        if predicted is not None:
            extra["predicted_only"] = predicted.to_dict()
        print(json.dumps({**result.to_dict(), **extra}))
    else:
        print("\n".join([table(result), *_remark(args.pred, skipped, predicted)]))
    return 0


def _not_predicted(record: dict | None, image_ids: list[str]) -> dict[str, list[str]]:
    """Reason -> the scored images the run behind the prediction left unpredicted (from its record)."""
    scored = set(image_ids)
    reasons = (record or {}).get("not_predicted", {})
    found = {reason: [i for i in ids if i in scored] for reason, ids in reasons.items()}
    return {reason: ids for reason, ids in found.items() if ids}


def _remark(pred: str, skipped: dict[str, list[str]], predicted: Score | None) -> list[str]:
    if not skipped:
        return []
    n = sum(len(ids) for ids in skipped.values())
    why = ", ".join(f"{reason}: {len(ids)}" for reason, ids in skipped.items())
    lines = [
        f"note: the run that wrote {pred} did not predict {n} of these images ({why}): they are scored above "
        "as empty predictions"
    ]
    if predicted is not None:
        lines.append(
            f"mean Dice {predicted.mean_dice:.5f} over the {predicted.n_images} predicted images "
            f"({predicted.n_pairs} pairs)"
        )
    return lines


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
