"""Options shared by the subcommands that run the inference engine (`predict`, `oof`, `manifest`)."""

from __future__ import annotations

import argparse

from steel_seg.manifest import parse_views


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
