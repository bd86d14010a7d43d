"""Progress of a long loop, the one helper every command uses: a tqdm bar on a terminal, else a log line
every ~10%.

A bar redrawn into a file (Kaggle's log, CI, `make demo > demo.log`) floods it with `\\r` frames; off a
terminal the loop logs `predict: 550/5506 images (10%), 61.2s` at each tenth instead (logger
`steel_seg.progress`, INFO), with the loop's latest figures (`loss=0.1234`) appended.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)
STEPS = 10
T = TypeVar("T")


class Progress:
    """`update(n)` after each chunk of `total` items; a context manager.

    Args:
        total: items in the whole loop.
        desc: what the loop does, the start of each line.
        unit: what an item is, for the bar and the lines.
        bar: draw a bar when `stream` is a terminal (False: lines only).
        show: False for a silent loop (a DDP worker that is not the main process).
        initial: items already done (a resumed epoch).
        stream: where the bar goes (default stderr).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "images",
        bar: bool = True,
        show: bool = True,
        initial: int = 0,
        stream: TextIO | None = None,
    ):
        stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.unit, self.done, self.show = total, desc, unit, initial, show
        self._bar = None
        if show and bar and _is_tty(stream):
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, initial=initial)
        self._start = time.perf_counter()
        self._next_step = initial * STEPS // total + 1 if total else 1

    def update(self, n: int = 1, **figures: str) -> None:
        """`n` more items done; `figures` (e.g. `loss="0.1234"`) shown beside the count."""
        self.done += n
        if self._bar is not None:
            if figures:
                self._bar.set_postfix(figures, refresh=False)
            self._bar.update(n)
            return
        if self.show and self.total and self.done * STEPS >= self._next_step * self.total:
            self._next_step = self.done * STEPS // self.total + 1
            extra = "".join(f", {k}={v}" for k, v in figures.items())
            log.info("%s: %d/%d %s (%.0f%%), %.1fs%s", self.desc, self.done, self.total, self.unit,
                     100 * self.done / self.total, time.perf_counter() - self._start, extra)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, *, total: int | None = None, **options: Any) -> Iterator[T]:
    """`items`, each counted by a `Progress` (`total`: `len(items)` unless given; `options` as Progress's)."""
    with Progress(len(items) if total is None else total, desc, **options) as progress:
        for item in items:
            yield item
            progress.update()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
