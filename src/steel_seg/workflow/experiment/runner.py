"""`steel-seg experiment plan|run|status`: the experiment's steps against their records, and running the
ones that are not done.

`run` judges every step (`plan`), refuses before any step starts what would fail or replace someone
else's files (`checks`), then runs the rest in order on the devices given (`scheduler`), each step's
command as a child process or a SLURM job (`jobs`) with its output in `OUT/logs/<step>.log`. Each step is
judged again when its turn comes, so an upstream step that re-made the same outputs leaves it done. A
training step that was interrupted (the experiment killed) continues from its checkpoint with
`train --resume` when it is started with the same key; any other step of the experiment's own is made again
with its command's `--overwrite`. One `run` at a time works in an experiment's folder (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import steel_seg
from steel_seg.formats.runs import RunDir
from steel_seg.workflow.experiment import records, results, schema
from steel_seg.workflow.experiment.checks import check_runnable, foreign_outputs, refuse_foreign
from steel_seg.workflow.experiment.fingerprints import Fingerprints
from steel_seg.workflow.experiment.jobs import Local, Slurm
from steel_seg.workflow.experiment.plan import TODO, Verdict, evaluate, judge, resumes
from steel_seg.workflow.experiment.records import DONE, FAILED, RUNNING, Record
from steel_seg.workflow.experiment.scheduler import BLOCKED, CPU, OK, Job, Node, Slots, schedule
from steel_seg.workflow.experiment.steps import (
    BUILD,
    FOLDS,
    OOF,
    PSEUDO,
    TRAIN,
    VALIDATE,
    Command,
    Layout,
    Step,
    build_steps,
    with_devices,
)
from steel_seg.workflow.experiment.summary import (
    TrainingClock,
    clock,
    line,
    plan_text,
    status_text,
    tuned_line,
)

VERSION = steel_seg.__version__
HASHES = "hashes.json"
EXECUTORS = ("local", "slurm")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Opened:
    """An experiment read and checked: its steps in order, where its files go, its fingerprints."""

    exp: schema.Experiment
    steps: dict[str, Step]
    layout: Layout
    prints: Fingerprints

    @property
    def title(self) -> str:
        return f"experiment {self.exp.path} (out {self.layout.out})"

    def verdicts(self) -> dict[str, Verdict]:
        found = records.load_all(self.layout.records, list(self.steps))
        return evaluate(list(self.steps.values()), found, self.prints, VERSION)

    def save_prints(self) -> None:
        if self.layout.records.is_dir():
            self.prints.save()


def open_experiment(path: str | Path) -> Opened:
    """Read, type and check the experiment file (ValueError naming it and every problem)."""
    exp = schema.load(path)
    schema.check(exp)
    layout = Layout(Path(exp.out))
    steps = {step.id: step for step in build_steps(exp)}
    return Opened(exp, steps, layout, Fingerprints(layout.records / HASHES))


def plan(path: str | Path, say: Say = print) -> None:
    """Say each step's state and why; then refuse (ValueError) what `run` would refuse of the steps to run."""
    opened = open_experiment(path)
    verdicts = opened.verdicts()
    opened.save_prints()
    say(plan_text(opened.title, verdicts))
    pending = [v for v in verdicts.values() if v.state != DONE]
    foreign = foreign_outputs(pending)
    if foreign:
        say(f"not made by this experiment: {', '.join(foreign)} (run refuses them without --overwrite)")
    check_runnable(opened.exp, [v.step for v in pending], ())


def status(path: str | Path) -> str:
    """`plan`'s verdicts with each step's time, figures and the last error; whether a run is in progress."""
    opened = open_experiment(path)
    verdicts = opened.verdicts()
    opened.save_prints()
    return status_text(opened.title, verdicts, running_pid(opened.layout))


def run(
    path: str | Path,
    *,
    gpus: tuple[str, ...] = (),
    executor: str = "local",
    overwrite: bool = False,
    environ: Mapping[str, str] | None = None,
    say: Say = print,
) -> int:
    """Run every step that is not done (see the module doc); 0 when all ended done, 1 when one failed."""
    opened = open_experiment(path)
    verdicts = opened.verdicts()
    pending = [v for v in verdicts.values() if v.state != DONE]
    if not pending:
        opened.save_prints()
        say(f"{opened.title}: nothing to do, all {len(verdicts)} steps are done")
        return 0
    check_runnable(opened.exp, [v.step for v in pending], gpus)
    refuse_foreign(pending, overwrite)
    remote = _remote(executor, opened)
    local = Local(dict(os.environ if environ is None else environ))
    with locked(opened.layout):
        verdicts = opened.verdicts()  # again, now that no other run can change the records
        say(plan_text(opened.title, {k: v for k, v in verdicts.items() if v.state != DONE}))
        session = Session(opened, verdicts, gpus, local, remote, say)
        outcome = schedule(session.nodes(), session.slots(), session.start, session.finish, session.blocked)
        opened.save_prints()
    say(session.summary(outcome))
    return 0 if all(state == OK for state in outcome.values()) else 1


def _remote(executor: str, opened: Opened) -> Slurm | None:
    """The SLURM executor for `--executor slurm` (ValueError without submitit), None for `local`."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor {executor!r}: one of {', '.join(EXECUTORS)}")
    return Slurm(opened.exp.slurm, opened.layout.submitit) if executor == "slurm" else None


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Hold the experiment's lock file (ValueError naming the pid of the run that holds it)."""
    layout.out.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ValueError(
                f"{layout.out}: another `steel-seg experiment run` works in it (pid "
                f"{f.read().strip() or '?'})"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def running_pid(layout: Layout) -> int | None:
    """The pid of the `run` holding the experiment's lock, None when no run is in progress."""
    if not layout.lock.is_file():
        return None
    with open(layout.lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
    return None


class Session:
    """One `run`: starts each step's job, records it when it ends, says so."""

    def __init__(
        self,
        opened: Opened,
        verdicts: dict[str, Verdict],
        gpus: tuple[str, ...],
        local: Local,
        remote: Slurm | None,
        say: Say,
    ):
        self.opened, self.verdicts, self.gpus, self.say = opened, verdicts, gpus, say
        self.records = {k: v.record for k, v in verdicts.items() if v.record is not None}
        self.local, self.remote = local, remote
        self.started, self.log_starts, self.same = time.time(), {}, []
        trains = [v.step for v in self.pending if v.step.kind == TRAIN]
        parallel = (
            len(trains) if self.remote else len(gpus) // max(1, min((s.gpus for s in trains), default=1))
        )
        self.training = TrainingClock(len(trains), parallel)

    @property
    def pending(self) -> list[Verdict]:
        return [v for v in self.verdicts.values() if v.state != DONE]

    def nodes(self) -> list[Node]:
        return [Node(v.step.id, v.step.deps, v.step.gpus) for v in self.pending]

    def slots(self) -> Slots:
        max_remote = self.opened.exp.slurm.max_jobs
        return Slots(() if self.remote else self.gpus, remote=self.remote is not None, max_remote=max_remote)

    def say_line(self, word: str, step_id: str, text: str = "") -> None:
        self.say(line(time.time() - self.started, word, step_id, text))

    # -- the scheduler's callbacks
    def start(self, node: Node, taken: tuple[str, ...]) -> Job | None:
        """Judge the step again (its inputs may have come out as before), else launch its command."""
        step = self.opened.steps[node.id]
        verdict = judge(step, self.records, self.verdicts, self.opened.prints, VERSION)
        self.verdicts[step.id] = verdict
        if verdict.state == DONE:
            self.say_line("same", step.id, "what it reads came out as before: nothing to do")
            self.same.append(step.id)
            return None
        extra = launch_flags(step, verdict)
        command = self.command(step)
        record = self._begin(step, verdict, command.shown(extra), taken)
        where = "" if taken == (CPU,) else f" [{self._devices_text(taken)}]"
        self.say_line("start", step.id, f"{record.command}{where}")
        executor = self.remote if self.remote is not None and step.gpus else self.local
        return executor.launch(command.argv(extra), self._env(taken), Path(record.log), step.gpus)

    def _begin(self, step: Step, verdict: Verdict, shown: str, taken: tuple[str, ...]) -> Record:
        """The step's log opened with its command line, its `running` record written."""
        log = self.opened.layout.logs / f"{step.id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_starts[step.id] = log.stat().st_size if log.exists() else 0
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shown}\n")
        record = Record(step=step.id, state=RUNNING, key=verdict.key, command=shown, log=str(log),
                        version=VERSION, started=time.time(), pid=os.getpid(), devices=taken)  # fmt: skip
        self._save(record)
        return record

    def finish(self, node: Node, code: int) -> None:
        """Record the step done (its outputs' fingerprints, its figures) or failed (its error)."""
        step, running = self.opened.steps[node.id], self.records[node.id]
        outputs = {path: self.opened.prints.file(Path(path)) for path in step.outputs}
        error, found = self._outcome(step, running, code, outputs)
        if error is None:
            self._done(step, running.ended_now(DONE, outputs=outputs, **found))
        else:
            self._failed(step, running.ended_now(FAILED, error=error), code)
        self.opened.save_prints()

    def _outcome(self, step: Step, running: Record, code: int, outputs: dict) -> tuple[str | None, dict]:
        """(the error, None when it succeeded; the record fields its outputs give)."""
        if code:
            return results.error_of(Path(running.log), self.log_starts[step.id]), {}
        missing = [path for path, digest in outputs.items() if digest is None]
        if missing:
            return f"ended without writing {', '.join(missing)}", {}
        try:
            return None, results.of(step, results.tail(Path(running.log), self.log_starts[step.id]))
        except (OSError, ValueError, KeyError) as exc:
            return f"its outputs cannot be read: {exc}", {}

    def _done(self, step: Step, record: Record) -> None:
        self._save(record)
        self.verdicts[step.id] = Verdict(step, DONE, (), record, record.key)
        eta = f"; {self.training.finished(record.seconds)}" if step.kind == TRAIN else ""
        self.say_line("done", step.id, f"in {clock(record.seconds)}{eta}")

    def _failed(self, step: Step, record: Record, code: int) -> None:
        self._save(record)
        self.verdicts[step.id] = Verdict(step, TODO, (f"failed: {record.error}",), record, record.key)
        self.say_line(
            "FAILED",
            step.id,
            f"after {clock(record.seconds)} (exit {code}): {record.error}; log {record.log}",
        )

    def blocked(self, node: Node, failed: list[str]) -> None:
        self.say_line("skip", node.id, f"not run: {', '.join(failed)} did not finish")

    # -- helpers
    def command(self, step: Step) -> Command:
        """The step's command; an engine command (one with `where` options) on the inference devices."""
        if not step.command.where:
            return step.command
        devices = self.opened.exp.inference.devices
        if devices == "auto":
            devices = "cuda" if self.gpus or self.remote else "cpu"
        return with_devices(step.command, devices)

    def _env(self, taken: tuple[str, ...]) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1"}
        if self.gpus and self.remote is None:
            env["CUDA_VISIBLE_DEVICES"] = "" if taken == (CPU,) else ",".join(taken)
        return env

    def _devices_text(self, taken: tuple[str, ...]) -> str:
        return (
            "SLURM"
            if self.remote is not None and taken != (CPU,)
            else f"CUDA_VISIBLE_DEVICES={','.join(taken)}"
        )

    def _save(self, record: Record) -> None:
        records.save(self.opened.layout.records, record)
        self.records[record.step] = record

    def summary(self, outcome: Mapping[str, str]) -> str:
        ran = [k for k, state in outcome.items() if state != BLOCKED and k not in self.same]
        failed = [k for k, state in outcome.items() if state not in (OK, BLOCKED)]
        blocked = [k for k, state in outcome.items() if state == BLOCKED]
        lines = [
            f"{self.opened.title}: {len(ran)} step(s) run in {clock(time.time() - self.started)}, "
            f"{len(failed)} failed, {len(blocked)} not run, {len(self.same)} found as they were"
        ]
        lines.append(tuned_line(self.records.values()))
        validate = self.records.get(VALIDATE)
        if validate is not None and validate.state == DONE:
            lines.append(f"dry-run submission {self.opened.layout.out / 'submission.csv'}: valid")
        lines += [f"failed: {k}: {self.records[k].error} (log {self.records[k].log})" for k in failed]
        build = self.records.get(BUILD)
        if not failed and not blocked and build is not None and build.result.get("kaggle"):
            lines += ["next:", *(f"  {what}: {command}" for what, command in build.result["kaggle"].items())]
        if blocked:
            lines.append(f"not run: {', '.join(blocked)}")
        return "\n".join(lines)


def launch_flags(step: Step, verdict: Verdict) -> tuple[str, ...]:
    """`--resume` for an interrupted training step started with the same key; `--overwrite` where the
    step's command needs it to replace what is there (the experiment's own, or allowed by --overwrite)."""
    target = Path(step.target)
    if step.kind == TRAIN:
        if resumes(step, verdict.record, verdict.key):
            return ("--resume",)
        return ("--overwrite",) if RunDir(target).holds_run() else ()
    if step.kind in (FOLDS, OOF, PSEUDO) and target.exists():
        return ("--overwrite",)
    return ()
