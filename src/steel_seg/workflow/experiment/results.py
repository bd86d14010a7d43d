"""What a finished step's outputs say, kept in its record for `status`: a training run's epochs, last
validation figures, resolved config and recorded input files; the tuned Dice; a pseudo-label round's
selection; the Kaggle commands the kernel build printed (upload, push, submit). Read from what the commands
wrote (run.json, config.yaml, log.jsonl, thresholds.json, summary.json, the build's output); nothing is
recomputed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from steel_seg.formats.runs import INPUTS_KEY, RunDir
from steel_seg.workflow.experiment.steps import BUILD, PSEUDO, TRAIN, TUNE, Step

LOG_TAIL_BYTES = 16_384
ERROR_STARTS = ("steel-seg ", "build_kernel: ", "kernel: ", "ERROR ", "error: ")
# The next commands `build_kernel.py` prints (`bundle.summary`), e.g. "  push kernel:     kaggle kernels ...".
KAGGLE_LINE = re.compile(
    r"^\s+(upload weights|new weights|push kernel|when it has run):\s+(kaggle \S.*)$", re.M
)


def of(step: Step, output: str = "") -> dict[str, Any]:
    """The record fields (`result`, and for a training step `config` and `inputs`) of a finished step;
    `output`: what its command printed."""
    if step.kind == BUILD:
        return {"result": {"kaggle": dict(KAGGLE_LINE.findall(output))}}
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


def tail(log: Path, since: int = 0) -> str:
    """What `log` holds after byte `since` (its last `LOG_TAIL_BYTES` at most)."""
    with open(log, "rb") as f:
        f.seek(max(since, f.seek(0, 2) - LOG_TAIL_BYTES))
        return f.read().decode(errors="replace")


def error_of(log: Path, since: int = 0) -> str:
    """The error a failed command printed in `log` after byte `since`: its last line that reads like one
    (`steel-seg <command>: ...`, `ERROR ...`, an exception), else its last line."""
    lines = [line.strip() for line in tail(log, since).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_STARTS) or _exception(line)]
    return (errors or lines or ["(no output)"])[-1]


def _exception(line: str) -> bool:
    head = line.split(":", 1)[0]
    return ":" in line and head.isidentifier() and head.endswith(("Error", "Exception"))
