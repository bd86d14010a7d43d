"""A training run's directory: its layout, and `run.json`, what the later steps need to know about the run.

```
runs/<name>/
  run.json        RunInfo: the held-out fold, where its folds, labels and images are, which model dir to use,
                  and the sha256 of every input file the run read (`InputFile`)
  config.yaml     the resolved training config
  best/, last/    model dirs (`models.save`: spec.json + model.safetensors)
  checkpoint.pt   the resume state (`checkpoint.save_state`)
  log.jsonl, metrics.csv, tb/   one record per epoch (`run_log`)
  folds.csv       only for `folds: random K`
```
This module is the only one that spells these names; `train` writes a run, `oof_predict`, `cli` and `run_log`
read it through `RunDir` and `RunInfo`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steel_seg import fileio

RUN_KEYS = ("name", "fold", "folds_csv", "train_csv", "images_dir", "model_dir")
INPUTS_KEY = "inputs"
# The roles of the input files a run records: the config keys that name them.
FOLDS_CSV, TRAIN_CSV = "data.folds_csv", "data.train_csv"
INIT_WEIGHTS, ENCODER_WEIGHTS = "model.init_weights", "model.encoder_weights_path"
ALLOW_FLAG = "--allow-changed-inputs"


def extra_csv_role(index: int) -> str:
    """The role of the train.csv of extra source `index`."""
    return f"data.extra_sources[{index}].train_csv"


@dataclass(frozen=True)
class InputFile:
    """One file a run read, as it was when the run read it: its absolute path and sha256."""

    path: Path
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> InputFile:
        return cls(Path(path).resolve(), fileio.sha256_file(path))

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> InputFile:
        return cls(Path(d["path"]), str(d["sha256"]))

    def change(self) -> str | None:
        """None when the file is as recorded, else what changed (the file and both hashes)."""
        if not self.path.is_file():
            return f"{self.path}: missing (sha256 {self.sha256} recorded)"
        now = fileio.sha256_file(self.path)
        return None if now == self.sha256 else f"{self.path}: sha256 {now}, recorded {self.sha256}"


def fingerprint(paths: Mapping[str, str | Path]) -> dict[str, InputFile]:
    """role -> InputFile of each path (role: the config key naming the file, e.g. `data.folds_csv`)."""
    return {role: InputFile.of(path) for role, path in paths.items()}


def check_inputs(inputs: Mapping[str, InputFile], where: str | Path, allow: bool) -> list[str]:
    """The one check of recorded input files against the files now: `role path: sha256 NOW, recorded THEN`
    for each that changed or went missing. ValueError naming `where` (the run.json) and every change, unless
    `allow` (then the changes are returned, for the caller to log)."""
    changes = [f"{role} {change}" for role, file in inputs.items() if (change := file.change())]
    if changes and not allow:
        raise ValueError(
            f"{where}: input files changed since the run read them: {'; '.join(changes)}. Results would "
            f"not match the run's record; restore them, start a new run, or pass {ALLOW_FLAG}"
        )
    return changes


class RunExistsError(ValueError):
    """A run dir already holds a run, and neither resuming nor replacing it was asked for."""


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    path: Path

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def log(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def folds(self) -> Path:
        return self.path / "folds.csv"

    def entries(self) -> list[Path]:
        """The run's own files and folders that exist (nothing else a user keeps in the folder)."""
        own = (self.run_json, self.config, self.best, self.last, self.checkpoint, self.log, self.metrics,
               self.tensorboard, self.folds)  # fmt: skip
        return [p for p in own if p.exists()]

    def holds_run(self) -> bool:
        """Whether a run was started here: its description, checkpoint, models or log exist."""
        return any(p.exists() for p in (self.run_json, self.checkpoint, self.best, self.last, self.log))

    def refuse_or_clear(self, overwrite: bool) -> list[Path]:
        """Before a fresh run: RunExistsError when a run is here and `overwrite` is off; else remove exactly
        the run's own entries (returned, to be reported) and leave every other file alone."""
        if not self.holds_run():
            return []
        if not overwrite:
            raise RunExistsError(
                f"{self.path}: holds a run ({', '.join(p.name for p in self.entries())}); pass --resume to "
                "continue it or --overwrite to replace it (or choose another --out)"
            )
        removed = self.entries()
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return removed


@dataclass(frozen=True)
class RunInfo:
    """`run.json`: the run's name and held-out fold, where its folds, train.csv and images are (absolute when
    written by `train`; relative ones are read from the current directory), the model dir to predict with
    (relative to the run dir), and `inputs`: role -> `InputFile` of every file the run read (train CSVs of
    every source, folds.csv, init and encoder weights; empty for runs of kits before it). `extra` holds
    further facts kept for the record (the model spec, the sources)."""

    run_dir: Path
    name: str
    fold: int
    folds_csv: Path
    train_csv: Path
    images_dir: Path
    model_dir: str = "best"
    inputs: dict[str, InputFile] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.run_dir / self.model_dir

    @property
    def folds_sha256(self) -> str | None:
        """The sha256 of the folds.csv the run read (None for a run that did not record it)."""
        folds = self.inputs.get(FOLDS_CSV)
        return folds.sha256 if folds else None

    def check_inputs(self, allow: bool = False) -> list[str]:
        """`check_inputs` of this run's recorded input files (ValueError naming run.json when one changed)."""
        return check_inputs(self.inputs, RunDir(self.run_dir).run_json, allow)

    def save(self) -> Path:
        """Write `run_dir/run.json` atomically."""
        info = {
            "name": self.name,
            "fold": self.fold,
            "folds_csv": str(self.folds_csv),
            "train_csv": str(self.train_csv),
            "images_dir": str(self.images_dir),
            "model_dir": self.model_dir,
            INPUTS_KEY: {role: file.to_dict() for role, file in self.inputs.items()},
            **self.extra,
        }
        return fileio.write_json(RunDir(self.run_dir).run_json, info)

    @classmethod
    def load(cls, run_dir: str | Path, check_paths: bool = True) -> RunInfo:
        """Read `run_dir/run.json`; ValueError naming the file and the missing key or (with `check_paths`)
        path."""
        run_dir = Path(run_dir)
        path = RunDir(run_dir).run_json
        d = fileio.read_json(path, "run description")
        missing = [k for k in RUN_KEYS if k not in d]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        paths = {k: Path(d[k]) for k in ("folds_csv", "train_csv", "images_dir")}
        try:
            inputs = {role: InputFile.from_dict(f) for role, f in d.get(INPUTS_KEY, {}).items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: invalid {INPUTS_KEY!r}: {exc!r}") from None
        extra = {k: v for k, v in d.items() if k not in (*RUN_KEYS, INPUTS_KEY)}
        info = cls(run_dir, str(d["name"]), int(d["fold"]), **paths, model_dir=str(d["model_dir"]),
                   inputs=inputs, extra=extra)  # fmt: skip
        if not check_paths:
            return info
        for key, value in [*paths.items(), ("model_dir", info.model_path)]:
            if not value.exists():
                raise ValueError(f"{path}: {key} {value} does not exist")
        return info


def check_model_dir_inputs(model_dir: str | Path, allow: bool = False) -> list[str]:
    """`RunInfo.check_inputs` of the run a model dir comes from (a run's `best/` or `last/`: its parent holds
    run.json); [] for a model dir of no run."""
    run = RunDir(Path(model_dir).parent)
    if not run.run_json.is_file():
        return []
    return RunInfo.load(run.path, check_paths=False).check_inputs(allow)
