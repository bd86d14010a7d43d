"""Worker processes: how many this machine allows, and that they die with the process that started them.

A pool of spawned workers waits on its task queue; when its parent is killed (SIGKILL: no clean-up runs)
nothing tells them, and they would stay forever, and with them multiprocessing's resource tracker (it lives
while any of them holds its pipe). `exit_with_parent`, run first in each worker, starts a daemon thread that
ends the worker once its parent is gone (the way torch's DataLoader workers watch theirs).
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)
# Resident memory a spawned OOF worker may reach (numpy, OpenCV, pandas and a chunk of images: ~100 MB
# measured, 5.7 GB for 57 workers); twice that is budgeted, so a pool never pushes the machine into swap.
WORKER_BYTES = 200 << 20
PARENT_POLL_S = 0.5


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available without swapping (`MemAvailable` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cap_workers(requested: int) -> int:
    """`requested` worker processes, capped at the usable cores (more only share them, at the cost of one
    interpreter each) and at the available memory (`WORKER_BYTES` a worker); a cap is logged."""
    cores, memory = usable_cores(), available_memory()
    by_memory = max(1, memory // WORKER_BYTES) if memory is not None else requested
    allowed = min(cores, by_memory)
    if requested > allowed:
        why = f"{cores} usable cores" if allowed == cores else f"{memory / 2**30:.1f} GiB available memory"
        log.warning("--workers %d: using %d worker processes (capped by the %s)", requested, allowed, why)
    return min(requested, allowed)


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process: end it (`os._exit`) within `PARENT_POLL_S` once `parent_pid` is no longer its
    parent, i.e. the process that started it has died. `parent_pid` comes from the parent itself, so a
    parent that died before this call is noticed too."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
