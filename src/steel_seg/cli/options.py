"""Argument types and options that several subcommands share (argparse only: light to import)."""

from __future__ import annotations

import argparse
import os


def floats(text: str) -> tuple[float, ...]:
    """argparse type: a comma list of numbers."""
    return tuple(float(v) for v in text.split(",") if v.strip())


def ints(text: str) -> tuple[int, ...]:
    """argparse type: a comma list of integers."""
    return tuple(int(v) for v in text.split(",") if v.strip())


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def add_workers_option(p: argparse.ArgumentParser, what: str) -> None:
    """--workers: processes for a pass over OOF images; the results never depend on it."""
    cores = usable_cores()
    p.add_argument(
        "--workers",
        type=int,
        default=cores,
        help=f"processes {what}; 1 = in this process (default: the usable cores, {cores} here); the "
        "results do not depend on it",
    )
