"""The training config: YAML -> typed frozen dataclasses (sections data, model, optim, schedule, loss, train).

A run saves its resolved config as `config.yaml`, so `TrainConfig.from_yaml(run/config.yaml)` reproduces it.
Unknown keys are errors that name the file and the section, so a typo never trains the wrong model silently.
Values take their key's type (`_scalar`): a number YAML 1.1 leaves as text (`2e-4`) is read as one, a number
must be finite, and null is an error where the key does not allow it; malformed YAML, in a file or in a
`--set` value (`parse_override`), is one line naming the file or the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from steel_seg.competition import HEIGHT
from steel_seg.models import encoders
from steel_seg.models.factory import (
    GREY_MEAN,
    GREY_STD,
    ModelSpec,
    build_model,
    load_init_weights,
    set_seg_prior,
)
from steel_seg.models.precision import AMP_FLAGS
from steel_seg.train.augment import AugmentConfig
from steel_seg.train.finetune import FOLD, init_source
from steel_seg.train.losses import LossConfig

# Keys that may change between a run and its resumption: where and how fast it runs, not what it computes.
RESUMABLE = ("data.workers", "data.val_batch_size", "train.device", "train.progress", "train.time_limit_min",
             "train.checkpoint_every")  # fmt: skip
# Where a run's inputs are: one config's runs of several folds may read them from other paths (another
# machine, a fold's own init weights); the files' contents are fingerprinted where it matters (folds.csv).
PATH_KEYS = ("data.train_csv", "data.images_dir", "data.folds_csv", "model.init_weights",
             "model.encoder_weights_path")  # fmt: skip


@dataclass(frozen=True)
class ExtraSource:
    """A further labelled set for the training side of every fold (e.g. the output of `steel-seg pseudo`).

    Its images are exactly those `train_csv` names (any layout; the original one names defect-free images
    too), read from `images_dir`. `weight` scales how often each of its images is drawn against a train
    image (with `balanced`, against one of the same class group; `data.draw_weights`).
    """

    train_csv: str = ""
    images_dir: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.train_csv or not self.images_dir:
            raise ValueError(f"an extra source needs train_csv and images_dir, got {self}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(
                f"extra source {self.train_csv}: weight {self.weight} must be a finite number > 0"
            )


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how batches are drawn.

    Folds: `folds_csv` (`ImageId,fold`, from `steel-seg folds`) or, for quick use, `folds: random 5`;
    the run validates on `fold` and trains on the rest. The folds cover `train_csv` only: `extra_sources`
    join the training side of every fold and never the validation side. Every image's header is checked
    before the first step; an unusable one stops the run, listed, unless `skip_bad_images` (then it is left
    out and counted). `extra_share` (e.g. 0.12): every training batch holds round(share x batch_size) images
    of the extra sources (drawn by their weights) and the rest from the train set, as khornlund's
    pseudo-label batches did; null: extra images are drawn with the rest, by their weights.
    """

    train_csv: str = ""
    images_dir: str = ""
    folds_csv: str | None = None
    folds: str | None = None
    fold: int = 0
    extra_sources: tuple[ExtraSource, ...] = ()
    # batches
    crop: tuple[int, int] | None = (HEIGHT, 512)
    defect_crop_p: float = 0.0
    balanced: bool = False
    batch_size: int = 8
    val_batch_size: int = 4
    workers: int = 0
    batches_per_epoch: int | None = None
    skip_bad_images: bool = False
    extra_share: float | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        share = self.extra_share
        if share is None:
            return
        if not self.extra_sources or not 0 < round(share * self.batch_size) < self.batch_size:
            raise ValueError(
                f"data.extra_share {share}: needs extra_sources and 0 < round(share x batch_size "
                f"{self.batch_size}) < batch_size"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The model spec plus its initialisation.

    `encoder_weights`: pretrained weights by the name smp knows for the encoder (`imagenet`, `advprop`, `ssl`,
    ...), loaded by smp from its Hugging Face cache (downloaded once when online); or `encoder_weights_path`:
    a local encoder state dict (`.safetensors` from `steel-seg encoder-weights`, or `.pth`). `init_weights`: a
    run dir, model dir or weights file to fine-tune from (`finetune`; `{fold}` in it is `data.fold`);
    `seg_prior`: the segmentation head's initial probability (null = smp's default init). In the YAML,
    `mean`/`std: auto` (the default) resolve before the spec is built (`resolve_normalisation`), so the spec
    and the saved config hold numbers.
    """

    spec: ModelSpec
    encoder_weights: str | None = None
    encoder_weights_path: str | None = None
    init_weights: str | None = None
    seg_prior: float | None = None

    def __post_init__(self) -> None:
        if self.encoder_weights is not None and self.encoder_weights_path is not None:
            raise ValueError(
                "model: set encoder_weights (the hub/cache) or encoder_weights_path (a local file), not both"
            )
        if self.encoder_weights is not None:
            encoders.hub_weights(self.spec.encoder, self.encoder_weights)

    def build(self, fold: int) -> nn.Module:
        """The model of this config: built (pretrained encoder weights when named), its seg prior set, its
        init weights loaded (`finetune.init_source`: checked against the run's held-out `fold`)."""
        model = build_model(self.spec, self.encoder_weights_path, self.encoder_weights)
        if self.seg_prior is not None:
            set_seg_prior(model, self.spec, self.seg_prior)
        if self.init_weights:
            load_init_weights(model, init_source(self.init_weights, fold, self.spec))
        return model

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), **{k: getattr(self, k) for k in _MODEL_INIT}}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        hints = typing.get_type_hints(ModelSpec) | typing.get_type_hints(cls)
        d = {k: _convert(hints[k], v, f"model.{k}") if k in hints else v for k, v in d.items()}
        init = {k: d.pop(k) for k in _MODEL_INIT if k in d}
        if AUTO in (d.get("mean", AUTO), d.get("std", AUTO)):
            mean, std = resolve_normalisation(
                d.get("encoder", ""), d.get("in_channels", 3), init.get("encoder_weights"),
                init.get("encoder_weights_path"),
            )  # fmt: skip
            d["mean"] = mean if d.get("mean", AUTO) == AUTO else d["mean"]
            d["std"] = std if d.get("std", AUTO) == AUTO else d["std"]
        return cls(ModelSpec.from_dict(d), **init)


_MODEL_INIT = ("encoder_weights", "encoder_weights_path", "init_weights", "seg_prior")
AUTO = "auto"


def resolve_normalisation(
    encoder: str, in_channels: int, weights: str | None, weights_path: str | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """What `mean`/`std: auto` mean: (mean, std), one value per input channel on the 0..1 scale.

    Pretrained weights by name: the encoder's values (smp's `get_preprocessing_params`); from a file: the JSON
    `steel-seg encoder-weights` wrote beside it; random init: the grey statistics of the Severstal images.
    For one input channel the encoder's values are averaged over RGB (see `encoders.Preprocessing`).
    """
    if weights is not None:
        return encoders.preprocessing(encoder, weights).for_channels(in_channels)
    if weights_path is None:
        return (GREY_MEAN,) * in_channels, (GREY_STD,) * in_channels
    prep = encoders.read_preprocessing(weights_path, encoder)
    if prep is None:
        raise ValueError(
            f"model.mean/std: auto needs {encoders.preprocessing_file(weights_path)} beside "
            f"encoder_weights_path (written by steel-seg encoder-weights), or give model.mean and model.std"
        )
    return prep.for_channels(in_channels)


OPTIMIZERS = ("adamw", "sgd", "radam")
SELECTIONS = ("metric", "tuned", "last", "average")


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser (`OPTIMIZERS`; radam: `torch.optim.RAdam`, decoupled weight decay) and its settings.

    `lr` and `weight_decay` hold for every parameter unless `encoder_lr` / `encoder_weight_decay` give the
    encoder's parameters their own (`optim.param_groups`; null = the same as the rest)."""

    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    grad_clip: float | None = None
    encoder_lr: float | None = None
    encoder_weight_decay: float | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """Cosine decay to `min_lr_ratio * lr` over all optimiser steps, after a linear warm-up."""

    epochs: int = 10
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01


@dataclass(frozen=True)
class LoopConfig:
    """The YAML section `train:`: how the loop runs. Seed, device ("auto" = cuda when available), AMP
    (`precision.autocast_dtype`: "auto" = bf16 from compute capability 8.0, fp16 with a gradient scaler below;
    "bf16" | "fp16" | "off"; CUDA only, the CPU runs float32; YAML's bare `off` reads as false and means
    "off"), gradient accumulation, EMA decay (0 = off; the EMA model is validated and saved), mid-epoch
    checkpoints every N optimiser steps (0 = at epoch ends only), and an optional time limit: the run skips an
    epoch that would end past `time_limit_min` minutes, judged by the last epoch's duration (resumable; the
    schedule is cut short).

    `select`: what `best/` (the model dir `oof`, `manifest` and the kernel use) holds. `metric`: the epoch
    with the best competition metric at default rules (threshold 0.5, nothing else; a classifier: the lowest
    validation loss). `tuned`: the epoch with the best metric after each class's rules are tuned on the
    validation fold (`epoch_eval.SELECT_GRID`, tune's statistics), what the tuned kernel will score.
    `last`: the last epoch. `average`: the equal average of the weights of the last `average_epochs` epochs
    (`swa`: BatchNorm statistics recomputed), written at the schedule's last epoch; until then (or when
    `time_limit_min` cuts the schedule short) the last epoch."""

    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    accumulate: int = 1
    ema_decay: float = 0.0
    checkpoint_every: int = 0
    time_limit_min: float | None = None
    progress: bool = True
    select: str = "metric"
    average_epochs: int = 0

    def __post_init__(self) -> None:
        if self.amp is False:
            object.__setattr__(self, "amp", "off")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        init = self.model.init_weights
        if init and FOLD in init:  # one fine-tune config for every fold: `{fold}` is data.fold
            model = dataclasses.replace(self.model, init_weights=init.replace(FOLD, str(self.data.fold)))
            object.__setattr__(self, "model", model)
        if self.train.amp not in AMP_FLAGS:
            raise ValueError(f"train.amp must be one of {', '.join(AMP_FLAGS)}; got {self.train.amp!r}")
        if self.optim.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.optim.name!r}")
        if self.train.accumulate < 1 or self.schedule.epochs < 1:
            raise ValueError("train.accumulate and schedule.epochs must be >= 1")
        self._check_selection()
        weights = self.loss.pos_weight
        if weights is not None and len(weights) != self.model.spec.classes:
            raise ValueError(
                f"loss.pos_weight needs one weight per class ({self.model.spec.classes}), got {weights}"
            )

    def _check_selection(self) -> None:
        select, n = self.train.select, self.train.average_epochs
        if select not in SELECTIONS:
            raise ValueError(f"train.select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        if select == "tuned" and not self.model.spec.has_seg:
            raise ValueError("train.select: tuned scores segmentation rules; a Classifier has none")
        if (select == "average") != (n > 0) or (n and not 2 <= n <= self.schedule.epochs):
            raise ValueError(
                f"train.average_epochs {n}: with train.select average it averages 2 .. schedule.epochs "
                "epochs; otherwise it must be 0"
            )

    def to_dict(self) -> dict:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["model"] = self.model.to_dict()
        return out

    def recipe_sha256(self) -> str:
        """sha256 of what this config trains, the same for each of its folds: the config less `data.fold`, the
        input paths (extra sources keep their weights) and the RESUMABLE keys (`models.recipe`'s member)."""
        flat = {k: v for k, v in _flatten(self.to_dict()).items() if k not in {*RESUMABLE, *PATH_KEYS}}
        flat.pop("data.fold")
        flat["data.extra_sources"] = [source.weight for source in self.data.extra_sources]
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()

    def differences(self, other: TrainConfig, ignore: Collection[str] = ()) -> list[str]:
        """`key: mine -> other's` for every dotted key whose value differs, less the keys in `ignore`."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = sorted((set(mine) | set(theirs)) - set(ignore))
        return [f"{k}: {mine.get(k)!r} -> {theirs.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k)]

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
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a config is a mapping of sections, got {type(d).__name__}")
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
    "train": LoopConfig,
}


def _set_dotted(d: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"section.key": value}."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    item = _dataclass_items(hint)
    if item is not None:
        value = () if value is None else value
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return tuple(_build(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        item = _tuple_item(options)
        return tuple(_convert(item, v, f"{where}[{i}]") if item else v for i, v in enumerate(value))
    return _scalar(options, value, where)


def _tuple_item(options: tuple[Any, ...]) -> Any:
    """The item type of a `tuple[float, ...]` / `tuple[int, int]` among `options`, else None."""
    for option in options:
        args = typing.get_args(option)
        if typing.get_origin(option) is tuple and args:
            return args[0]
    return None


_NUMBER_TYPES = {float: "a number", int: "an integer"}


def _scalar(options: tuple[Any, ...], value: Any, where: str) -> Any:
    """`value` as a key of type `options` (the members of its union) takes it: numbers are checked and, when
    YAML 1.1 read them as text (`2e-4`, `1e-3`), converted; null only where the key allows None."""
    wanted = next((t for t in _NUMBER_TYPES if t in options), None)
    if value is None:
        if wanted is None or type(None) in options:
            return value
        raise ValueError(f"{where} must be {_NUMBER_TYPES[wanted]}, got null")
    if wanted is None or (isinstance(value, str) and str in options):
        return value
    if wanted is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return number


def parse_override(text: str) -> tuple[str, Any]:
    """`--set KEY=VALUE` -> (dotted key, the VALUE read as YAML); ValueError naming the key when malformed."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set: expected KEY=VALUE (e.g. optim.lr=1e-3), got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {key}: {value!r} is not valid YAML ({_yaml_problem(exc)})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line of a YAML error: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + str(getattr(exc, "problem", None) or exc).replace("\n", " ")


def _dataclass_items(hint: Any) -> type | None:
    """The item class of a `tuple[SomeDataclass, ...]` hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None
