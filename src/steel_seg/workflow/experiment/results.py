"""What a finished step's outputs say, kept in its record for `status`: a training run's epochs, last
validation figures, resolved config and recorded input files; the tuned Dice; a pseudo-label round's
selection. Read from the files the commands wrote (run.json, config.yaml, log.jsonl, thresholds.json,
summary.json); nothing is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from steel_seg.formats.runs import INPUTS_KEY, RunDir
from steel_seg.workflow.experiment.steps import PSEUDO, TRAIN, TUNE, Step

LOG_TAIL_BYTES = 16_384
ERROR_STARTS = ("steel-seg ", "build_kernel: ", "kernel: ", "ERROR ", "error: ")


def of(step: Step) -> dict[str, Any]:
    """The record fields (`result`, and for a training step `config` and `inputs`) of a finished step."""
    if step.kind == TRAIN:
        return _train(RunDir(Path(step.target)))
    if step.kind == TUNE:
        return {"result": tuned(Path(step.outputs[0]))}
    if step.kind == PSEUDO:
        summary = json.loads((Path(step.target) / "summary.json").read_text())
        return {"result": {"images": summary["images"], "selected": summary["selected"]}}
    return {}


def _train(run: RunDir) -> dict[str, Any]:
    lines = [json.loads(line) for line in run.log.read_text().splitlines() if line.strip()]
    last = lines[-1] if lines else {}
    result = {"epochs": len(lines), **{k: last[k] for k in ("val_dice", "val_loss") if k in last}}
    info = json.loads(run.run_json.read_text())
    return {
        "result": result,
        "config": yaml.safe_load(run.config.read_text()),
        "inputs": info.get(INPUTS_KEY, {}),
    }


def tuned(rules_path: Path) -> dict[str, Any]:
    """The OOF Dice before and after tuning that thresholds.json records, and on how many images."""
    tuning = json.loads(rules_path.read_text()).get("tuning", {})
    return {
        "dice_before": tuning["dice_before"]["mean"],
        "dice_after": tuning["dice_after"]["mean"],
        "n_images": tuning["n_images"],
    }


def error_of(log: Path, since: int = 0) -> str:
    """The error a failed command printed in `log` after byte `since`: its last line that reads like one
    (`steel-seg <command>: ...`, `ERROR ...`, an exception), else its last line."""
    with open(log, "rb") as f:
        f.seek(max(since, f.seek(0, 2) - LOG_TAIL_BYTES))
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_STARTS) or _exception(line)]
    return (errors or lines or ["(no output)"])[-1]


def _exception(line: str) -> bool:
    head = line.split(":", 1)[0]
    return ":" in line and head.isidentifier() and head.endswith(("Error", "Exception"))
