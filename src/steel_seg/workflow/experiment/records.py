"""A step's record, `OUT/steps/<step id>.json`: what it was made from and what it made.

Written when the step starts (`running`, with its key) and again when it ends (`done` with the fingerprints
of its outputs, or `failed` with the error), atomically. The key is what decides whether the step is still
done: its command line less the options that only say where it runs, the fingerprints of the files it
reads, the outputs of the steps it reads from, and the package version. A record is also the experiment's
claim on its outputs: an output at a step's path with no record is someone else's, replaced only with
`--overwrite`. The records are the experiment's state: `status` reads nothing else.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steel_seg import fileio

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass(frozen=True, kw_only=True)
class Record:
    """One step's record. `inputs`: files the command itself recorded reading (a run's run.json `inputs`:
    role -> {path, sha256}); `config`: a training step's resolved config (its run's config.yaml); `result`:
    the figures its outputs hold (tuned Dice, validation numbers)."""

    step: str
    state: str
    key: dict[str, Any]
    command: str
    log: str
    version: str
    started: float
    ended: float | None = None
    pid: int | None = None
    devices: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def ended_now(self, state: str, **changes: Any) -> Record:
        return dataclasses.replace(self, state=state, ended=time.time(), **changes)


def record_path(folder: Path, step_id: str) -> Path:
    return folder / f"{step_id}.json"


def save(folder: Path, record: Record) -> Path:
    return fileio.write_json(record_path(folder, record.step), dataclasses.asdict(record))


def load(folder: Path, step_id: str) -> Record | None:
    """The record of `step_id`, None when there is none; ValueError naming a file that is not a record."""
    path = record_path(folder, step_id)
    if not path.is_file():
        return None
    return fileio.load_json(path, "step record (remove it to run the step again)", _parse)


def _parse(d: dict[str, Any]) -> Record:
    return Record(**{**d, "devices": tuple(d.get("devices", ()))})


def load_all(folder: Path, step_ids: list[str]) -> dict[str, Record]:
    """Every record of `step_ids` there is."""
    found = {step_id: load(folder, step_id) for step_id in step_ids}
    return {step_id: record for step_id, record in found.items() if record is not None}
