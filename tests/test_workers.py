"""steel_seg.workers: pools no larger than the machine allows, and workers that die with their parent."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_tune import small_case, write_small_oof

from steel_seg import workers
from steel_seg.formats.oof import read_oof
from steel_seg.postprocess.tune import collect_stats

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("memory_mib", "expected", "why"),
    [(4096, 3, "3 usable cores"), (500, 2, "0.5 GiB available memory"), (None, 3, "3 usable cores")],
)
def test_workers_are_capped_by_cores_and_memory(monkeypatch, caplog, memory_mib, expected, why):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7})  # 3 of the machine's cores
    monkeypatch.setattr(workers, "available_memory", lambda: memory_mib and memory_mib << 20)
    with caplog.at_level(logging.WARNING):
        assert workers.cap_workers(1000) == expected
    assert f"--workers 1000: using {expected} worker processes (capped by the {why})" in caplog.text
    caplog.clear()
    assert workers.cap_workers(1) == 1 and not caplog.text


def test_a_pool_never_has_more_workers_than_usable_cores(tmp_path, caplog):
    """`tune --workers 1000` on more images than cores: one worker per usable core, not per image."""
    cores = workers.usable_cores()
    truth, values, _ = small_case(np.random.default_rng(3), n=cores + 2)
    oof = read_oof(write_small_oof(tmp_path / "oof", truth, values, None))
    with caplog.at_level(logging.INFO):
        collect_stats(oof, (0.5,), workers=1000)
    assert f"images/s, workers {min(cores, workers.cap_workers(cores))}" in caplog.text


# Starts a 2-worker pool on a never-ending job and waits on it; the test SIGKILLs this process.
POOL_PARENT = """
import sys
sys.path.insert(0, sys.argv[2])
from jobs import sleep_forever
from steel_seg.formats.oof import read_oof
from steel_seg.postprocess.tune import map_oof
map_oof(sleep_forever, read_oof(sys.argv[1]), 2, "sleeping")
"""


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit():
            fields = stat.rpartition(")")[2].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_pool_workers_and_the_resource_tracker_die_with_a_killed_parent(tmp_path):
    """`tune` / `report eval` killed with SIGKILL: its spawned workers and multiprocessing's resource tracker
    must not live on (each held 100-200 MB)."""
    truth, values, _ = small_case(np.random.default_rng(4), n=4)
    oof = write_small_oof(tmp_path / "oof", truth, values, None)
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT, str(oof), str(TESTS)])
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(children) < 3 and time.monotonic() < deadline:  # 2 workers + the resource tracker
            time.sleep(0.2)
            children = descendants(parent.pid)
        assert len(children) >= 3, f"the pool did not start: {children}"
        time.sleep(1.0)  # the workers are running the job
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [c for c in children if alive(c)]
        assert not survivors, f"still running 5 s after their parent was killed: {survivors}"
    finally:
        for pid in {parent.pid, *children, *descendants(parent.pid)}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
