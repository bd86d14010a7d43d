"""steel_seg.workflow.experiment.scheduler and jobs, with real child processes on fake device lists: a job
never shares a GPU, every job ends, a failed job stops its dependants and not the others, one job at a time
without GPUs, and a local job dies with the experiment (SIGKILL included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from steel_seg.workflow.experiment.jobs import Local, run_logged
from steel_seg.workflow.experiment.scheduler import ALL, BLOCKED, CPU, FAILED, OK, Node, Slots, schedule

# A job: records what it saw (CUDA_VISIBLE_DEVICES, start, end) in its own file, then exits with its code.
JOB = textwrap.dedent("""
    import json, os, sys, time
    start = time.time()
    time.sleep(float(sys.argv[2]))
    seen = {"devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
    open(sys.argv[1], "w").write(json.dumps(seen))
    sys.exit(int(sys.argv[3]))
""")


def run_jobs(tmp_path: Path, nodes: list[Node], slots: Slots, codes: dict[str, int] | None = None):
    """Schedule `nodes` as real processes; their records, the outcome and the blocked calls."""
    local, blocked = Local(os.environ), []

    def start(node: Node, taken: tuple[str, ...]):
        env = {"CUDA_VISIBLE_DEVICES": "" if taken == (CPU,) else ",".join(taken)}
        argv = [
            sys.executable,
            "-c",
            JOB,
            str(tmp_path / f"{node.id}.json"),
            "0.3",
            str((codes or {}).get(node.id, 0)),
        ]
        return local.launch(argv, env, tmp_path / f"{node.id}.log", node.gpus)

    outcome = schedule(
        nodes, slots, start, lambda node, code: None, lambda n, f: blocked.append((n.id, f)), 0.02
    )
    seen = {
        n.id: json.loads((tmp_path / f"{n.id}.json").read_text()) for n in nodes if outcome[n.id] != BLOCKED
    }
    return seen, outcome, blocked


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_jobs_never_share_a_gpu_and_all_complete(tmp_path):
    needs = [1, 2, 1, ALL, 0, 1, 0, 2, 1, 1]
    nodes = [Node(f"j{i}", (), need) for i, need in enumerate(needs)]
    seen, outcome, _ = run_jobs(tmp_path, nodes, Slots(("0", "1", "2")))
    assert set(outcome.values()) == {OK}
    devices = {k: set(filter(None, v["devices"].split(","))) for k, v in seen.items()}
    for node in nodes:
        expected = 3 if node.gpus == ALL else node.gpus
        assert len(devices[node.id]) == expected and devices[node.id] <= {"0", "1", "2"}
    for a in seen:
        for b in seen:
            if a < b and overlapping(seen[a], seen[b]):
                assert not devices[a] & devices[b], (a, b)
                assert devices[a] or devices[b], f"two CPU jobs at once: {a}, {b}"
    assert any(overlapping(seen["j0"], seen[k]) for k in seen if k != "j0")  # they did run side by side


def test_a_failed_job_stops_its_dependants_and_not_the_others(tmp_path):
    nodes = [Node("bad", (), 1), Node("good", (), 1), Node("after-bad", ("bad",), 1),
             Node("after-that", ("after-bad",), 0), Node("after-good", ("good",), 1)]  # fmt: skip
    seen, outcome, blocked = run_jobs(tmp_path, nodes, Slots(("0", "1")), codes={"bad": 3})
    assert outcome == {
        "bad": FAILED,
        "good": OK,
        "after-bad": BLOCKED,
        "after-that": BLOCKED,
        "after-good": OK,
    }
    assert blocked == [("after-bad", ["bad"]), ("after-that", ["after-bad"])]


def test_without_gpus_one_job_at_a_time(tmp_path):
    nodes = [Node(f"j{i}", (), need) for i, need in enumerate([1, ALL, 0, 2])]
    seen, outcome, _ = run_jobs(tmp_path, nodes, Slots(()))
    assert set(outcome.values()) == {OK}
    assert not any(overlapping(seen[a], seen[b]) for a in seen for b in seen if a < b)
    assert {v["devices"] for v in seen.values()} == {""}


def test_a_job_needing_more_gpus_than_there_are_is_an_error():
    with pytest.raises(ValueError, match="a job needs 3 GPUs; 2 were given"):
        Slots(("0", "1")).take(3)


def test_an_error_while_starting_stops_the_running_jobs(tmp_path):
    local, started = Local(os.environ), []

    def start(node: Node, taken: tuple[str, ...]):
        if node.id == "second":
            raise KeyboardInterrupt
        started.append(
            local.launch([sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / "l", 1)
        )
        return started[-1]

    with pytest.raises(KeyboardInterrupt):
        schedule([Node("first", (), 1), Node("second", (), 1)], Slots(("0", "1")), start, print, print, 0.02)
    assert started[0].poll() is not None


PARENT = textwrap.dedent("""
    import os, sys, time
    from steel_seg.workflow.experiment.jobs import Local
    job = Local(os.environ).launch([sys.executable, "-c", "import time; time.sleep(60)"], {}, sys.argv[1], 0)
    print(job.process.pid, flush=True)
    time.sleep(60)
""")


def test_a_local_job_dies_with_the_experiment_even_by_sigkill(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "log")], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline and Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "the job outlived the experiment"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"


def test_a_slurm_job_runs_the_same_command_line_into_the_log(tmp_path):
    log = tmp_path / "job.log"
    code = run_logged(
        [sys.executable, "-c", "import os; print(os.environ['X']); raise SystemExit(4)"], {"X": "7"}, str(log)
    )
    assert code == 4 and log.read_text() == "7\n"
