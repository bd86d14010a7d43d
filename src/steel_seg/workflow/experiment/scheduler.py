"""Jobs in dependency order on the devices given: the only scheduling the experiment does.

With no GPU one job runs at a time. With GPU ids (`run --gpus 0,1,2,3`) every GPU job takes its own ids (a
training job `gpus_per_job` of them, an inference job all of them) and one CPU job may run beside them; a
job never shares a device. Under SLURM (`remote`) GPU jobs take no local device, at most `max_remote` in
flight. A job that fails stops the jobs that depend on it (`BLOCKED`), never the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

OK, FAILED, BLOCKED = "ok", "failed", "blocked"
ALL = -1  # a job that takes every GPU
CPU = "cpu"
REMOTE = "remote"
POLL_S = 0.2


class Job(Protocol):
    def poll(self) -> int | None: ...  # the exit code once it has ended

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Node:
    """A job to schedule: its id, the ids it waits for, and the GPUs it takes (0: a CPU job; ALL)."""

    id: str
    deps: tuple[str, ...]
    gpus: int


class Slots:
    """The devices a job may take now (see the module doc)."""

    def __init__(self, gpus: tuple[str, ...] = (), remote: bool = False, max_remote: int = 64):
        self.gpus, self.remote, self.max_remote = gpus, remote, max_remote
        self.free_gpus = list(gpus)
        self.cpu_free = True
        self.remote_jobs = 0

    def take(self, need: int) -> tuple[str, ...] | None:
        """The slots a job needing `need` GPUs gets now, or None when it must wait."""
        if need == 0 or not (self.gpus or self.remote):
            return self._take_cpu()
        if self.remote:
            return self._take_remote()
        count = len(self.gpus) if need == ALL else need
        if count > len(self.gpus):
            raise ValueError(f"a job needs {count} GPUs; {len(self.gpus)} were given ({','.join(self.gpus)})")
        if len(self.free_gpus) < count:
            return None
        taken, self.free_gpus = tuple(self.free_gpus[:count]), self.free_gpus[count:]
        return taken

    def _take_cpu(self) -> tuple[str, ...] | None:
        if not self.cpu_free:
            return None
        self.cpu_free = False
        return (CPU,)

    def _take_remote(self) -> tuple[str, ...] | None:
        if self.remote_jobs >= self.max_remote:
            return None
        self.remote_jobs += 1
        return (REMOTE,)

    def give(self, taken: tuple[str, ...]) -> None:
        if taken == (CPU,):
            self.cpu_free = True
        elif taken == (REMOTE,):
            self.remote_jobs -= 1
        else:
            self.free_gpus = [g for g in self.gpus if g in self.free_gpus or g in taken]


Start = Callable[[Node, tuple[str, ...]], Job | None]  # None: nothing to run, the node counts as done
Finish = Callable[[Node, int], None]
Blocked = Callable[[Node, list[str]], None]


def schedule(
    nodes: Iterable[Node],
    slots: Slots,
    start: Start,
    finish: Finish,
    blocked: Blocked,
    poll_s: float = POLL_S,
) -> dict[str, str]:
    """Run every node once its dependencies are OK (a dependency not among `nodes` counts as OK), as
    `slots` allow, in the nodes' order; returns id -> OK, FAILED or BLOCKED. On an exception (Ctrl-C
    included) every running job is stopped before it propagates."""
    waiting, running = list(nodes), {}
    outcome: dict[str, str] = {}
    known = {node.id for node in waiting}
    try:
        while waiting or running:
            progressed = _start_ready(waiting, running, outcome, known, slots, start, blocked)
            for node_id, (node, job, taken) in list(running.items()):
                code = job.poll()
                if code is None:
                    continue
                del running[node_id]
                slots.give(taken)
                outcome[node_id] = OK if code == 0 else FAILED
                finish(node, code)
                progressed = True
            if not progressed:
                time.sleep(poll_s)
    except BaseException:
        for _, job, _ in running.values():
            job.stop()
        raise
    return outcome


def _start_ready(waiting, running, outcome, known, slots, start, blocked) -> bool:
    """Start (or block) every waiting node whose dependencies have ended; whether anything changed."""
    progressed = False
    for node in list(waiting):
        states = [outcome.get(dep) if dep in known else OK for dep in node.deps]
        failed = [dep for dep, state in zip(node.deps, states, strict=True) if state in (FAILED, BLOCKED)]
        if failed:
            waiting.remove(node)
            outcome[node.id] = BLOCKED
            blocked(node, failed)
            progressed = True
        elif all(state == OK for state in states):
            taken = slots.take(node.gpus)
            if taken is None:
                continue
            waiting.remove(node)
            progressed = True
            job = start(node, taken)
            if job is None:
                slots.give(taken)
                outcome[node.id] = OK
            else:
                running[node.id] = (node, job, taken)
    return progressed
