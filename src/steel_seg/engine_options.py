"""The inference engine's command-line options: one set, shared by `steel-seg predict`, `steel-seg oof` and
the kernel script. Light to import (argparse only): the kernel parses its arguments before heavy imports."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steel_seg.predict import PredictSettings



def views(text: str) -> tuple[str, ...]:
    """argparse type: a comma list of TTA views."""
    from steel_seg.manifest import parse_views

    try:
        return parse_views(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_engine_options(p: argparse.ArgumentParser, limit_help: str) -> None:
    """--device, --batch-size, --workers, --amp, --limit, --no-progress."""
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (TTA views multiply it)")
    p.add_argument("--workers", type=int, default=2, help="JPEG decoding processes (0: in the main process)")
    p.add_argument("--amp", choices=("auto", "fp16", "bf16", "off"), default="auto",
                   help="autocast on CUDA; auto = bf16 from compute capability 8.0, fp16 below")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help=limit_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_budget_option(p: argparse.ArgumentParser) -> None:
    """--budget-s, for the commands that write a submission."""
    p.add_argument(
        "--budget-s", type=float, default=None, help="time limit, seconds (default: the manifest's)"
    )


def engine_settings(args: argparse.Namespace, **extra: Any) -> PredictSettings:
    """`PredictSettings` from the shared options (+ `extra`); INFO logging for the engine's decisions."""
    from steel_seg.locations import default_device
    from steel_seg.predict import PredictSettings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    budget = {"budget_s": args.budget_s} if hasattr(args, "budget_s") else {}
    return PredictSettings(
        device=args.device or default_device(),
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        limit=args.limit,
        progress=not args.no_progress,
        **budget,
        **extra,
    )
