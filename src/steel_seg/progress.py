"""Progress of a long loop: a tqdm bar on a terminal, else one log line every ~10%.

A bar redrawn into a file (Kaggle's log, CI) floods it with thousands of lines; off a terminal the loop logs
`predict: 550/5506 images (10%), 61.2s` at each tenth instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)
STEPS = 10


class Progress:
    """`update(n)` after each chunk of `total` items; use as a context manager."""

    def __init__(self, total: int, desc: str, bar: bool = True, stream: TextIO | None = None):
        stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.done = total, desc, 0
        self._bar = tqdm(total=total, desc=desc, unit="img", file=stream) if bar and _is_tty(stream) else None
        self._start = time.perf_counter()
        self._next_step = 1

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total and self.done * STEPS >= self._next_step * self.total:
            self._next_step = self.done * STEPS // self.total + 1
            log.info("%s: %d/%d images (%.0f%%), %.1fs", self.desc, self.done, self.total,
                     100 * self.done / self.total, time.perf_counter() - self._start)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
