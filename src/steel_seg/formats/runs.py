"""A training run's directory: its layout, and `run.json`, what the later steps need to know about the run.

```
runs/<name>/
  run.json        RunInfo: the held-out fold, where its folds, labels and images are, which model dir to use
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steel_seg import fileio

RUN_KEYS = ("name", "fold", "folds_csv", "train_csv", "images_dir", "model_dir")


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
    written by `train`; relative ones are read from the current directory), and the model dir to predict with
    (relative to the run dir). `extra` holds further facts kept for the record (the model spec)."""

    run_dir: Path
    name: str
    fold: int
    folds_csv: Path
    train_csv: Path
    images_dir: Path
    model_dir: str = "best"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.run_dir / self.model_dir

    def save(self) -> Path:
        """Write `run_dir/run.json` atomically."""
        info = {
            "name": self.name,
            "fold": self.fold,
            "folds_csv": str(self.folds_csv),
            "train_csv": str(self.train_csv),
            "images_dir": str(self.images_dir),
            "model_dir": self.model_dir,
            **self.extra,
        }
        return fileio.write_json(RunDir(self.run_dir).run_json, info)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInfo:
        """Read `run_dir/run.json`; ValueError naming the file and the missing key or path."""
        run_dir = Path(run_dir)
        path = RunDir(run_dir).run_json
        d = fileio.read_json(path, "run description")
        missing = [k for k in RUN_KEYS if k not in d]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        paths = {k: Path(d[k]) for k in ("folds_csv", "train_csv", "images_dir")}
        extra = {k: v for k, v in d.items() if k not in RUN_KEYS}
        info = cls(
            run_dir, str(d["name"]), int(d["fold"]), **paths, model_dir=str(d["model_dir"]), extra=extra
        )
        for key, value in [*paths.items(), ("model_dir", info.model_path)]:
            if not value.exists():
                raise ValueError(f"{path}: {key} {value} does not exist")
        return info
