"""A `tune.map_oof` job that never ends: the orphan test kills the pool's parent while the workers run it."""

from __future__ import annotations

import time


def sleep_forever(oof) -> None:
    time.sleep(600)
