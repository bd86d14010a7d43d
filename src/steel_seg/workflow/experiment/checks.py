"""What `run` refuses before any step starts, beyond the file itself (`schema.check`): training configs
that do not load with the experiment's overrides, views the kit does not know, a job that needs more GPUs
than given, no build_kernel.py to build with, and outputs at the experiment's paths that it did not make.

The first ones import the training and model code (seconds), so `plan` of a finished experiment, which
needs none of them, stays fast: they are checked for the steps that are going to run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from steel_seg.formats.runs import RunDir
from steel_seg.workflow.experiment.plan import Verdict
from steel_seg.workflow.experiment.schema import Experiment
from steel_seg.workflow.experiment.steps import BUILD, BUILDER, CHECKOUT, TEMPLATE, TRAIN, Step


def check_runnable(exp: Experiment, steps: list[Step], gpus: tuple[str, ...]) -> None:
    """ValueError naming the experiment file and every problem of the steps about to run (none: nothing
    to check, nothing imported)."""
    if not steps:
        return
    problems = [*_views(exp), *_configs([s for s in steps if s.kind == TRAIN]), *_gpus(exp, gpus)]
    if any(s.kind == BUILD for s in steps):
        problems += [
            f"{path}: not found (the kernel is built from a source checkout: pip install -e .)"
            for path in (CHECKOUT / BUILDER, TEMPLATE)
            if not path.is_file()
        ]
    if problems:
        raise ValueError(f"{exp.path}: " + "; ".join(problems))


def _views(exp: Experiment) -> list[str]:
    from steel_seg.models.manifest import TTA_VIEWS

    views = {"tta": exp.tta, "cls_tta": exp.cls_tta or ()}
    return [
        f"{key} {list(given)}: views are {', '.join(TTA_VIEWS)}"
        for key, given in views.items()
        if not set(given) <= set(TTA_VIEWS) or (key == "tta" and not given)
    ]


def _configs(steps: list[Step]) -> list[str]:
    """Each training config read as `steel-seg train` will read it (its overrides and fold included)."""
    if not steps:
        return []
    from steel_seg.train.config import TrainConfig

    problems = []
    for step in steps:
        try:
            TrainConfig.from_yaml(step.config, {**dict(step.overrides), "data.fold": step.fold})
        except ValueError as exc:
            problems.append(f"{step.id}: {exc}")
    return problems


def _gpus(exp: Experiment, gpus: tuple[str, ...]) -> list[str]:
    if not gpus:
        return []
    return [
        f"models.{name}.gpus_per_job {m.gpus_per_job}: only {len(gpus)} GPU(s) given ({','.join(gpus)})"
        for name, m in exp.models.items()
        if m.gpus_per_job > len(gpus)
    ]


def foreign_outputs(verdicts: Iterable[Verdict]) -> list[str]:
    """The outputs of steps about to run that exist although the experiment has no record of making them."""
    return [v.step.target for v in verdicts if v.record is None and v.step.target and _holds(v.step)]


def _holds(step: Step) -> bool:
    target = Path(step.target)
    if step.kind == TRAIN:
        return RunDir(target).holds_run()
    return target.is_file() or (target.is_dir() and any(target.iterdir()))


def refuse_foreign(verdicts: Iterable[Verdict], overwrite: bool) -> list[str]:
    """ValueError listing them unless `overwrite`; returns them (replaced, each by its command's own
    `--overwrite`, which removes only that command's kind of output)."""
    found = foreign_outputs(verdicts)
    if found and not overwrite:
        raise ValueError(
            f"not made by this experiment (no record in its steps/): {', '.join(found)}; move them away, or "
            "pass --overwrite to replace them (each step replaces only its own kind of output)"
        )
    return found
