"""Argument types and options that several subcommands share (argparse only: light to import)."""

from __future__ import annotations

import argparse

from steel_seg.workers import usable_cores


def floats(text: str) -> tuple[float, ...]:
    """argparse type: a comma list of numbers."""
    return tuple(float(v) for v in text.split(",") if v.strip())


def ints(text: str) -> tuple[int, ...]:
    """argparse type: a comma list of integers."""
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_workers_option(p: argparse.ArgumentParser, what: str) -> None:
    """--workers: processes for a pass over OOF images; the results never depend on it."""
    cores = usable_cores()
    p.add_argument(
        "--workers",
        type=int,
        default=cores,
        help=f"processes {what}; 1 = in this process (default and most: the usable cores, {cores} here, "
        "fewer where memory is short); the results do not depend on it",
    )
