"""Options shared by the subcommands that run the inference engine (`predict`, `oof`, `manifest`)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from steel_seg.manifest import parse_views

if TYPE_CHECKING:
    from steel_seg.predict import PredictSettings


def views(text: str) -> tuple[str, ...]:
    """argparse type: a comma list of TTA views."""
    try:
        return parse_views(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_engine_options(p: argparse.ArgumentParser, limit_help: str) -> None:
    """--device, --batch-size, --workers, --limit."""
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="JPEG decoding processes (0: in the main process)")
    p.add_argument("--limit", type=int, default=None, help=limit_help)


def engine_settings(args: argparse.Namespace, **extra: Any) -> PredictSettings:
    """`PredictSettings` from the shared options (+ `extra`); INFO logging for the engine's decisions."""
    from steel_seg.locations import default_device
    from steel_seg.predict import PredictSettings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return PredictSettings(
        device=args.device or default_device(),
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        **extra,
    )
