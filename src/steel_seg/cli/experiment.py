"""`steel-seg experiment plan|run|status EXP.yaml`: the whole workflow of one ensemble from one file (the
schema: README, "The experiment file"). `plan` says what is done, stale (and why) and to do; `run` runs
what is not done (training jobs one per GPU, or on SLURM), resuming an interrupted training from its
checkpoint; `status` adds each step's time, the tuned Dice and the last error."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from steel_seg.workflow.experiment import runner


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="plan, run or show an experiment file", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("plan", help="each step: done, stale (why) or to do; runs nothing").add_argument(
        "experiment", type=Path, help="the experiment file (YAML)"
    )
    r = sub.add_parser("run", help="run every step that is not done")
    r.add_argument("experiment", type=Path, help="the experiment file (YAML)")
    r.add_argument(
        "--gpus",
        help="comma list of GPU ids, one training job each at a time (CUDA_VISIBLE_DEVICES); 'none': the "
        "CPU, one job at a time (default: every visible GPU, else none)",
    )
    r.add_argument(
        "--executor",
        choices=runner.EXECUTORS,
        default="local",
        help="slurm: GPU steps as SLURM jobs via submitit (pip install -e '.[slurm]'; options in the "
        "file's slurm section)",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs at the experiment's paths that it has no record of making (each step only its "
        "own kind of output)",
    )
    sub.add_parser("status", help="plan + each step's time, the tuned Dice, the last error").add_argument(
        "experiment", type=Path, help="the experiment file (YAML)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "plan":
        runner.plan(args.experiment)
        return 0
    if args.action == "status":
        print(runner.status(args.experiment))
        return 0
    gpus = visible_gpus(os.environ) if args.gpus is None else gpu_list(args.gpus)
    return runner.run(args.experiment, gpus=gpus, executor=args.executor, overwrite=args.overwrite)


def gpu_list(text: str) -> tuple[str, ...]:
    """`--gpus 0,1,3` -> ("0", "1", "3"); `none` or "" -> () (the CPU)."""
    ids = tuple(g.strip() for g in text.split(",") if g.strip() and g.strip() != "none")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text}: a GPU listed twice")
    return ids


def visible_gpus(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The GPUs this process sees: CUDA_VISIBLE_DEVICES's ids when set, else torch's count."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return gpu_list(environ["CUDA_VISIBLE_DEVICES"])
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))
