"""Which steps are done, stale (and why) or still to do: the records against the files as they are now.

A step is done when its record is `done`, its key (command, input fingerprints, upstream outputs, version)
equals the one it was made with, its outputs are as it wrote them and the files its command recorded
reading are unchanged. A step after one that is not done waits for it: it is stale (or to do) until that
one has run, and is judged again then (`runner`): an upstream step that re-made the same outputs leaves it
done. Pure reads: nothing here runs or writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steel_seg.formats.runs import RunDir
from steel_seg.workflow.experiment.fingerprints import Fingerprints
from steel_seg.workflow.experiment.records import DONE, FAILED, Record
from steel_seg.workflow.experiment.steps import TRAIN, Step

STALE, TODO = "stale", "to do"


@dataclass(frozen=True)
class Verdict:
    """A step's state (DONE, STALE, TODO), why, its record and (when its upstream is done) its key now."""

    step: Step
    state: str
    reasons: tuple[str, ...]
    record: Record | None
    key: dict[str, Any] | None = None


def step_key(step: Step, prints: Fingerprints, records: Mapping[str, Record], version: str) -> dict[str, Any]:
    """What the step is made from now; `records` must hold every dependency's done record."""
    return {
        "command": step.command.key,
        "inputs": {i.label: prints.of(i.kind, i.path) for i in step.inputs},
        "upstream": {dep: records[dep].outputs for dep in step.deps},
        "version": version,
    }


def evaluate(
    steps: list[Step], records: Mapping[str, Record], prints: Fingerprints, version: str
) -> dict[str, Verdict]:
    """The verdict of every step, in order (each after its dependencies)."""
    verdicts: dict[str, Verdict] = {}
    for step in steps:
        verdicts[step.id] = judge(step, records, verdicts, prints, version)
    return verdicts


def judge(
    step: Step,
    records: Mapping[str, Record],
    verdicts: Mapping[str, Verdict],
    prints: Fingerprints,
    version: str,
) -> Verdict:
    record = records.get(step.id)
    waiting = [dep for dep in step.deps if verdicts[dep].state != DONE]
    if waiting:
        return Verdict(step, STALE if record else TODO, (f"after {', '.join(waiting)}",), record)
    key = step_key(step, prints, records, version)
    if record is None:
        return Verdict(step, TODO, ("never run",), None, key)
    if record.state != DONE:
        return Verdict(step, TODO, (unfinished(step, record, key),), record, key)
    reasons = key_changes(record.key, key) + output_changes(record, prints) + input_changes(record, prints)
    return Verdict(step, STALE if reasons else DONE, tuple(reasons), record, key)


def resumes(step: Step, record: Record | None, key: dict[str, Any]) -> bool:
    """Whether an unfinished training step continues from its checkpoint: it was started with this key and
    the checkpoint is its own (written since it started, not a replaced run's)."""
    if step.kind != TRAIN or record is None or record.state == DONE or record.key != key:
        return False
    checkpoint = RunDir(Path(step.target)).checkpoint
    return checkpoint.is_file() and checkpoint.stat().st_mtime >= record.started


def unfinished(step: Step, record: Record, key: dict[str, Any]) -> str:
    what = "failed" if record.state == FAILED else "interrupted"
    error = f" ({record.error.splitlines()[-1]})" if record.error else ""
    if resumes(step, record, key):
        return f"{what}{error}: resumes from its checkpoint"
    return f"{what}{error}: runs again"


def key_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why a record's key differs from the key now, one phrase per difference."""
    reasons = _arg_changes(old.get("command", []), new["command"])
    old_inputs = old.get("inputs", {})
    reasons += [f"{label} changed" for label, now in new["inputs"].items() if old_inputs.get(label) != now]
    old_up = old.get("upstream", {})
    reasons += [f"{dep} re-made" for dep, outputs in new["upstream"].items() if old_up.get(dep) != outputs]
    if old.get("version") != new["version"]:
        reasons.append(f"steel_seg {old.get('version')} -> {new['version']}")
    return reasons


def _arg_changes(old: list[str], new: list[str]) -> list[str]:
    """`--flag: old -> new` for each option that differs (`--set key` and `--model NAME` by their key)."""
    if old[:2] != new[:2]:
        return [f"command {' '.join(old[:2])} -> {' '.join(new[:2])}"]
    before, after = _options(old[2:]), _options(new[2:])
    flags = [*before, *(f for f in after if f not in before)]
    return [
        f"{flag}: {before.get(flag, '(none)')} -> {after.get(flag, '(none)')}"
        for flag in flags
        if before.get(flag) != after.get(flag)
    ]


def _options(words: list[str]) -> dict[str, str]:
    """Command words -> {flag (with its key for `KEY=VALUE` values): value(s), comma-joined}."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(words):
        flag, value = words[i], ""
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            value, i = words[i + 1], i + 1
        if "=" in value and flag in ("--set", "--model"):
            key, value = value.split("=", 1)
            flag = f"{flag} {key}"
        found.setdefault(flag, []).append(value)
        i += 1
    return {flag: ",".join(values) for flag, values in found.items()}


def output_changes(record: Record, prints: Fingerprints) -> list[str]:
    reasons = []
    for path, recorded in record.outputs.items():
        now = prints.file(Path(path))
        if now != recorded:
            reasons.append(f"{path} {'missing' if now is None else 'changed'} since the step wrote it")
    return reasons


def input_changes(record: Record, prints: Fingerprints) -> list[str]:
    """The files a command recorded reading (a run's `inputs`) that changed since."""
    return [
        f"{role} {file['path']} changed"
        for role, file in record.inputs.items()
        if prints.file(Path(file["path"])) != file["sha256"]
    ]
