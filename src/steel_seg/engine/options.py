"""The inference engine's command-line options: one set, shared by `steel-seg predict`, `steel-seg oof` and
the kernel script. Light to import (argparse and `competition`): the kernel parses its arguments before heavy
imports."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from steel_seg.competition import DEFAULT_FINAL_FORMAT, FINAL_FORMATS

if TYPE_CHECKING:
    from steel_seg.engine.runner import PredictSettings


def views(text: str) -> tuple[str, ...]:
    """argparse type: a comma list of TTA views."""
    from steel_seg.models.manifest import parse_views

    try:
        return parse_views(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (`--limit`)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def add_engine_options(p: argparse.ArgumentParser, limit_help: str) -> None:
    """--devices (alias --device), --batch-size, --workers, --amp, --limit, --no-progress."""
    p.add_argument(
        "--devices",
        "--device",
        dest="devices",
        default=None,
        metavar="DEVICES",
        help="comma list, one ensemble replica each: cuda (every visible GPU), cuda:1, cpu, cpu,cpu "
        "(default: every visible GPU, else the CPU; the kernel stops when no GPU is visible)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (TTA views multiply it)")
    p.add_argument("--workers", type=int, default=2, help="JPEG decoding processes (0: in the main process)")
    p.add_argument("--amp", choices=("auto", "fp16", "bf16", "off"), default="auto",
                   help="autocast on CUDA; auto = bf16 from compute capability 8.0, fp16 below")  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None, help=limit_help)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (off a terminal there is none: a log line every ~10%% instead)",
    )


def add_recipe_option(p: argparse.ArgumentParser) -> None:
    """--allow-recipe-mismatch, for the commands that run a weights dir's manifest with its rules."""
    p.add_argument(
        "--allow-recipe-mismatch",
        action="store_true",
        help="run although the rules were tuned on another ensemble than the manifest lists (logged)",
    )


def add_budget_option(p: argparse.ArgumentParser) -> None:
    """--budget-s, for the commands that write a submission."""
    p.add_argument(
        "--budget-s",
        type=seconds,
        default=None,
        help="hard time limit in seconds from the start (default: the manifest's, 3300): views and models "
        "are dropped to fit it, and at the limit every image not reached is written empty",
    )


def count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def add_final_format_option(p: argparse.ArgumentParser) -> None:
    """--final-format, for the commands that write a submission."""
    p.add_argument(
        "--final-format",
        choices=FINAL_FORMATS,
        default=DEFAULT_FINAL_FORMAT,
        help="with a final-stage sample (ImageId,EncodedPixels,ClassId): sample-like = defect rows only and "
        "an image without a defect as the sample writes it (ClassId 0, '1 409600'), no empty cell; pairs = "
        "4 rows an image, empty EncodedPixels for no defect (default: %(default)s)",
    )


def engine_settings(args: argparse.Namespace, *, require_gpu: bool = False, **extra: Any) -> PredictSettings:
    """`PredictSettings` from the shared options (+ `extra`).

    Without `--devices` the run uses every visible GPU; with none visible, the CPU, unless `require_gpu`
    (the kernel: on the CPU the test set takes hours, so the run would be killed with nothing written).
    """
    from steel_seg.engine.locations import default_device
    from steel_seg.engine.runner import PredictSettings

    budget = {"budget_s": args.budget_s} if hasattr(args, "budget_s") else {}
    if hasattr(args, "final_format"):
        budget["final_format"] = args.final_format
    return PredictSettings(
        device=args.devices or ("cuda" if require_gpu else default_device()),
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        limit=args.limit,
        progress=not args.no_progress,
        **budget,
        **extra,
    )
