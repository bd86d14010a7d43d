"""Running one step's command: here, as a child process (`Local`), or on a SLURM cluster through submitit
(`Slurm`, the optional extra: `pip install -e '.[slurm]'`). Either way its output goes to the step's log file.

A local child dies with the experiment (Linux: `PR_SET_PDEATHSIG`), so a killed `experiment run` leaves no
training writing into a run dir that the next `run` resumes. Under SLURM a job runs the very same command
line through `run_logged`, pickled by submitit; `cluster: local` is submitit's local executor, which runs
that pickled job on this machine (how the path is tested without a cluster).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steel_seg.workflow.experiment.schema import Slurm as SlurmOptions

STOP_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1


def run_logged(argv: list[str], env: Mapping[str, str], log: str) -> int:
    """Run `argv` with `env` added to this process's environment, its output appended to `log`; the exit
    code. What a SLURM job executes."""
    with open(log, "ab") as out:
        return subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        ).returncode


def _dies_with(parent: int):
    """A `preexec_fn`: the child gets SIGKILL when `parent` ends (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return arm


class LocalJob:
    """A child process writing to the step's log."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path):
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env), preexec_fn=_dies_with(os.getpid())
            )

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Local:
    """Jobs as children of this process; `environ`: the environment they start from."""

    remote = False

    def __init__(self, environ: Mapping[str, str]):
        self.environ = dict(environ)

    def launch(self, argv: list[str], env: Mapping[str, str], log: Path, gpus: int) -> LocalJob:
        return LocalJob(argv, {**self.environ, **env}, log)


class SlurmJob:
    """A submitit job; its exit code once it has ended (an exception in the job counts as 1, logged)."""

    def __init__(self, job: Any, log: Path):
        self.job, self.log = job, log

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as exc:  # the job's own error, or submitit's: either is this step's failure
            with open(self.log, "a") as out:
                out.write(f"\nsubmitit job {self.job.job_id} failed: {exc}\n")
            return 1

    def stop(self) -> None:
        self.job.cancel(check=False)


class Slurm:
    """Jobs submitted through submitit into `folder` (its pickles and SLURM logs), with the experiment's
    `slurm` options; a job of N GPUs asks for N GPUs on one node."""

    remote = True

    def __init__(self, options: SlurmOptions, folder: Path):
        try:
            import submitit
        except ImportError:
            raise ValueError(
                "--executor slurm needs submitit: pip install -e '.[slurm]' (or pip install submitit)"
            ) from None
        self.submitit, self.options, self.folder = submitit, options, folder

    def launch(self, argv: list[str], env: Mapping[str, str], log: Path, gpus: int) -> SlurmJob:
        o = self.options
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=o.cluster)
        parameters: dict[str, Any] = {
            "timeout_min": o.time_min,
            "gpus_per_node": max(gpus, 1),
            "nodes": 1,
            "tasks_per_node": 1,
            "cpus_per_task": o.cpus_per_task,
            "name": log.stem,
        }
        if o.mem_gb is not None:
            parameters["mem_gb"] = o.mem_gb
        if o.partition is not None:
            parameters["slurm_partition"] = o.partition
        if o.additional:
            parameters["slurm_additional_parameters"] = dict(o.additional)
        executor.update_parameters(**parameters)
        return SlurmJob(executor.submit(run_logged, argv, dict(env), str(log)), log)
