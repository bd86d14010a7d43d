"""`steel-seg validate`: every problem of a submission against its sample; exit status 1 when there is any."""

from __future__ import annotations

import argparse

from steel_seg.competition import DEFAULT_FINAL_FORMAT, FINAL_FORMATS
from steel_seg.formats.submission import validate


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a submission against the sample submission",
        description="Header, ClassIds, duplicate pairs, RLE, and the image set against the sample.",
    )
    parser.add_argument("--sample", required=True, help="the competition's sample_submission.csv")
    parser.add_argument("--pred", required=True, help="the submission to check")
    parser.add_argument("--max-problems", type=int, default=50, help="print at most this many (default 50)")
    parser.add_argument(
        "--final-format",
        choices=FINAL_FORMATS,
        default=DEFAULT_FINAL_FORMAT,
        help="the form a final-stage submission was written in (`steel-seg predict --final-format`; "
        "default: %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problems = validate(args.pred, args.sample, final_format=args.final_format)
    if not problems:
        print(f"{args.pred}: valid submission for {args.sample}")
        return 0
    for problem in problems[: args.max_problems]:
        print(f"{args.pred}: {problem}")
    if len(problems) > args.max_problems:
        print(f"... and {len(problems) - args.max_problems} more")
    print(f"{args.pred}: {len(problems)} problem(s)")
    other = next(f for f in FINAL_FORMATS if f != args.final_format)
    if not validate(args.pred, args.sample, final_format=other):
        print(f"{args.pred}: it is a valid submission in the {other} form: pass --final-format {other}")
    return 1
