"""`steel-seg train`: fit one fold of a YAML config (one process, or one per GPU under `torchrun`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.formats.runs import ALLOW_FLAG
from steel_seg.train.config import TrainConfig, parse_override
from steel_seg.train.loop import summary, train


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model on one fold", description=__doc__)
    p.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
    p.add_argument("--fold", type=int, help="validation fold (overrides data.fold)")
    p.add_argument("--out", type=Path, help="run dir (default runs/<config name>-f<fold>)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue from <run dir>/checkpoint.pt")
    existing.add_argument(
        "--overwrite", action="store_true", help="replace the run in the run dir (its own files only)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 (repeat --set for each key)",
    )
    p.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="--resume even when an input file the run recorded (train CSVs, folds.csv, weights) changed",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(text) for text in args.set)
    overrides |= {"data.fold": args.fold} if args.fold is not None else {}
    cfg = TrainConfig.from_yaml(args.config, overrides)
    out = args.out or Path("runs") / f"{args.config.stem}-f{cfg.data.fold}"
    result = train(cfg, out, resume=args.resume, overwrite=args.overwrite,
                   allow_changed_inputs=args.allow_changed_inputs)  # fmt: skip
    if result.main:
        print(summary(result))
    return 0
