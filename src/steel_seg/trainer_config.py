"""The training config: YAML -> typed frozen dataclasses (sections data, model, optim, schedule, loss, train).

A run saves its resolved config as `config.yaml`, so `TrainConfig.from_yaml(run/config.yaml)` reproduces it.
Unknown keys are errors that name the file and the section, so a typo never trains the wrong model silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steel_seg.augment import AugmentConfig
from steel_seg.losses import LossConfig
from steel_seg.models import ModelSpec
from steel_seg.precision import AMP_FLAGS


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how batches are drawn.

    Folds: `folds_csv` (`ImageId,fold`, from `steel-seg folds`) or, for quick use, `folds: random 5`;
    the run validates on `fold` and trains on the rest.
    """

    train_csv: str = ""
    images_dir: str = ""
    folds_csv: str | None = None
    folds: str | None = None
    fold: int = 0
    # batches
    crop: tuple[int, int] | None = (256, 512)
    defect_crop_p: float = 0.0
    balanced: bool = False
    batch_size: int = 8
    val_batch_size: int = 4
    workers: int = 0
    batches_per_epoch: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The model spec plus its initialisation: `encoder_weights_path` (a pretrained encoder state dict,
    `.safetensors` or `.pth`, kept offline), `init_weights` (a model dir or file to fine-tune from), and
    `seg_prior` (the segmentation head's initial probability, null = smp's default init)."""

    spec: ModelSpec
    encoder_weights_path: str | None = None
    init_weights: str | None = None
    seg_prior: float | None = None

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), **{k: getattr(self, k) for k in _MODEL_INIT}}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        init = {k: d.pop(k) for k in _MODEL_INIT if k in d}
        return cls(ModelSpec.from_dict(d), **init)


_MODEL_INIT = ("encoder_weights_path", "init_weights", "seg_prior")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    grad_clip: float | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine decay to `min_lr_ratio * lr` over all optimiser steps, after a linear warm-up."""

    epochs: int = 10
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01


@dataclass(frozen=True)
class RunConfig:
    """How the loop runs: seed, device ("auto" = cuda when available), AMP ("off" | "auto" | "bf16" | "fp16",
    CUDA only; "auto" = bf16 from compute capability 8.0, fp16 with a gradient scaler below), gradient
    accumulation, EMA decay (0 = off; the EMA model is validated and saved), mid-epoch checkpoints every N
    optimiser steps (0 = at epoch ends only), and an optional time limit: the run skips an epoch that would
    end past `time_limit_min` minutes, judged by the last epoch's duration (resumable; the schedule is cut
    short)."""

    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    accumulate: int = 1
    ema_decay: float = 0.0
    checkpoint_every: int = 0
    time_limit_min: float | None = None
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.train.amp not in AMP_FLAGS:
            raise ValueError(f"train.amp must be one of {', '.join(AMP_FLAGS)}, got {self.train.amp!r}")
        if self.optim.name not in ("adamw", "sgd"):
            raise ValueError(f"optim.name must be adamw or sgd, got {self.optim.name!r}")
        if self.train.accumulate < 1 or self.schedule.epochs < 1:
            raise ValueError("train.accumulate and schedule.epochs must be >= 1")

    def to_dict(self) -> dict:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known or "data" not in d or "model" not in d:
            raise ValueError(f"{source}: sections are {sorted(known)} (need data, model); got {sorted(d)}")
        try:
            model = ModelConfig.from_dict(d["model"] or {})
            given = [name for name in _SECTIONS if name in d]
            sections = {name: _build(_SECTIONS[name], d[name] or {}, name) for name in given}
            return cls(model=model, **sections)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Read a YAML config; `overrides` maps dotted keys (`data.fold`, `optim.lr`) to values."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: config file not found")
        d = yaml.safe_load(path.read_text()) or {}
        for key, value in (overrides or {}).items():
            _set_dotted(d, key, value)
        return cls.from_dict(d, str(path))

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


_SECTIONS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "loss": LossConfig,
    "train": RunConfig,
}


def _set_dotted(d: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value


def _plain(value: Any) -> Any:
    """Dataclasses and tuples -> dicts and lists, for YAML."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, d: dict, section: str) -> Any:
    """Build dataclass `cls` from `d`, recursing into nested dataclasses and turning lists into tuples."""
    if not isinstance(d, dict):
        raise ValueError(f"section {section!r} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ValueError(f"section {section!r}: unknown key(s) {unknown}; known: {sorted(hints)}")
    return cls(**{k: _convert(hints[k], v, f"{section}.{k}") for k, v in d.items()})


def _convert(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option):
            return _build(option, value or {}, where)
    if isinstance(value, list):
        return tuple(value)
    return value
