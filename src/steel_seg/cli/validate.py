"""`steel-seg validate`: every problem of a submission against its sample; exit status 1 when there is any."""

from __future__ import annotations

import argparse

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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problems = validate(args.pred, args.sample)
    if not problems:
        print(f"{args.pred}: valid submission for {args.sample}")
        return 0
    for problem in problems[: args.max_problems]:
        print(f"{args.pred}: {problem}")
    if len(problems) > args.max_problems:
        print(f"... and {len(problems) - args.max_problems} more")
    print(f"{args.pred}: {len(problems)} problem(s)")
    return 1
