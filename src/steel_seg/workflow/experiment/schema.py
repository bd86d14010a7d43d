"""`experiment.yaml`: one ensemble's whole workflow, as typed frozen dataclasses, read strictly.

```yaml
out: experiments/gold                  # everything the experiment makes lives here
data: {train_csv: data/train.csv, train_images: data/train_images,
       test_images: data/test_images, sample_submission: data/sample_submission.csv}
folds: {k: 5, seed: 42, use: [0, 1, 2, 3, 4]}
models:                                # name -> training config + overrides, trained on every used fold
  unet: {config: configs/unet_effb3.yaml}
  fpn:  {config: configs/fpn_effb3.yaml, set: {optim.lr: 2.0e-4}, weight: 1.0}
  cls:  {config: configs/cls_resnet34.yaml}
tta: [none, h, v]
pseudo: {rounds: 0}
kernel: {kaggle_user: null, weights_dataset: steel-seg-weights, budget_s: 3100, dry_run_images: 50}
```
Paths are relative to the folder the experiment runs from, as every command's are. An unknown key, a value
of the wrong type, a YAML mapping that repeats a key (two models of one name) is an error naming the file
and the key's path (`models.fpn.sett`), like the training configs'. `load` reads and types the file, `check`
looks at the files it names; both before any step runs. This module stays light (no torch): `plan` of a
finished experiment reads it in well under a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# A model's name is a folder name and a manifest name (`NAME-f0`).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The training-config keys the experiment sets itself; a model's `set` may not give them.
OWNED_KEYS = ("data.train_csv", "data.images_dir", "data.folds_csv", "data.folds", "data.fold")
PSEUDO_KEYS = ("data.extra_sources", "data.extra_share")  # owned too once there are pseudo-label rounds
INIT_KEY = "model.init_weights"  # owned by a model that names `init`
EXECUTOR_CLUSTERS = ("slurm", "local")
INFERENCE_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class Data:
    """The competition's files (either train.csv layout; the sample in the layout to submit)."""

    train_csv: str
    train_images: str
    test_images: str
    sample_submission: str


@dataclass(frozen=True, kw_only=True)
class Folds:
    """`steel-seg folds --k K --seed S` into OUT/folds.csv; `use`: the folds trained (null: all).
    `hash_threshold`: null = the command's default."""

    k: int = 5
    seed: int = 0
    use: tuple[int, ...] | None = None
    hash_threshold: int | None = None

    @property
    def used(self) -> tuple[int, ...]:
        return tuple(range(self.k)) if self.use is None else self.use


@dataclass(frozen=True, kw_only=True)
class Model:
    """One ensemble member: its training config and dotted overrides (`set`), its ensemble `weight`, the GPUs
    one training job takes (`gpus_per_job` > 1 runs under torchrun) and, for a fine-tune stage, `init`: the
    model whose run of the same fold it starts from (`model.init_weights`)."""

    config: str
    set: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    gpus_per_job: int = 1
    init: str | None = None


@dataclass(frozen=True, kw_only=True)
class Pseudo:
    """Pseudo-label rounds (`steel-seg pseudo`): each labels the test images with the round before's tuned
    ensemble, then every model is trained again with those labels as an extra source (`weight`, `share`:
    `data.extra_sources[0].weight`, `data.extra_share`), predicted OOF and tuned.
    null limits: the command's."""

    rounds: int = 0
    positive: float | None = None
    negative: float | None = None
    min_pixel_confidence: float | None = None
    weight: float = 1.0
    share: float | None = None


@dataclass(frozen=True, kw_only=True)
class Reports:
    """`steel-seg report eda` of the train set and `report eval` of the final round's OOF."""

    eda: bool = True
    eval: bool = True


@dataclass(frozen=True, kw_only=True)
class Kernel:
    """`build_kernel.py` (`kaggle_user` null: no Kaggle metadata; `budget_s`, `batch_size` baked into the
    script) and the dry run of the built kernel on the first `dry_run_images` test images (null: all)."""

    kaggle_user: str | None = None
    weights_dataset: str = "steel-seg-weights"
    budget_s: float | None = None
    batch_size: int | None = None
    dry_run_images: int | None = 50


@dataclass(frozen=True, kw_only=True)
class Inference:
    """How the OOF, pseudo-label and dry-run steps run (not what they compute, so not part of a step's
    record): `devices` auto = the GPUs given to `run --gpus`, else the CPU."""

    devices: str = "auto"
    batch_size: int = 8
    workers: int = 2


@dataclass(frozen=True, kw_only=True)
class Slurm:
    """`run --executor slurm`: GPU steps go to SLURM through submitit (`cluster: local` is submitit's local
    executor: the same pickled job, run on this machine). `additional`: more sbatch options."""

    cluster: str = "slurm"
    partition: str | None = None
    time_min: int = 720
    cpus_per_task: int = 8
    mem_gb: int | None = None
    max_jobs: int = 64
    additional: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """The whole file; `path` is where it was read from."""

    out: str
    data: Data
    models: dict[str, Model]
    folds: Folds = field(default_factory=Folds)
    tta: tuple[str, ...] = ("none", "h", "v")
    cls_tta: tuple[str, ...] | None = None
    pseudo: Pseudo = field(default_factory=Pseudo)
    reports: Reports = field(default_factory=Reports)
    kernel: Kernel = field(default_factory=Kernel)
    inference: Inference = field(default_factory=Inference)
    slurm: Slurm = field(default_factory=Slurm)
    path: Path = field(default=Path("experiment.yaml"), metadata={"set_by": "load"})


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ValueError(f"line {line}: key {key!r} given twice (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load(path: str | Path) -> Experiment:
    """Read and type `path`; ValueError naming the file and the key's path for anything wrong in it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: experiment file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeys)
        return dataclasses.replace(_build(Experiment, raw or {}, ""), path=path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"{path}: not valid YAML: {where}{getattr(exc, 'problem', exc)}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _build(cls: type, value: Any, where: str) -> Any:
    """Dataclass `cls` from the mapping `value`: unknown and missing keys are errors naming `where`."""
    if not isinstance(value, dict):
        raise ValueError(f"{where or 'the file'}: must be a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if "set_by" not in f.metadata}
    unknown = sorted(set(value) - set(fields), key=str)
    if unknown:
        raise ValueError(f"{where or 'top level'}: unknown key(s) {unknown}; known: {sorted(fields)}")
    required = [n for n, f in fields.items() if _required(f) and n not in value]
    if required:
        raise ValueError(f"{where or 'top level'}: missing key(s) {required}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in value.items()})


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert(hint: Any, value: Any, where: str) -> Any:
    """`value` as type `hint`: dataclasses, `X | None`, tuples, string-keyed mappings and scalars."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        hint, args = args[0], typing.get_args(args[0])
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: must be a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        value = {} if value is None else value
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: must be a mapping of names, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    """A scalar of type `hint`; a number YAML 1.1 reads as text (`2e-4`) is read as one."""
    if hint is Any or hint is Path:
        return value
    if hint is float and isinstance(value, str | int) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            value = float(value)
    if hint is float and isinstance(value, float) and math.isfinite(value):
        return value
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    wanted = {float: "a finite number", int: "an integer", str: "text", bool: "true or false"}[hint]
    raise ValueError(f"{where}: must be {wanted}, got {value!r}")


def check(exp: Experiment) -> None:
    """Everything the file names, before any step runs: the data files and folders, each model's config,
    the folds, names, `init` and `set` keys. ValueError naming the file and every problem found."""
    problems = [
        *_data_problems(exp.data),
        *_fold_problems(exp.folds),
        *_model_problems(exp),
        *_option_problems(exp),
    ]
    if problems:
        raise ValueError(f"{exp.path}: " + "; ".join(problems))


def _data_problems(data: Data) -> list[str]:
    files = {"data.train_csv": data.train_csv, "data.sample_submission": data.sample_submission}
    folders = {"data.train_images": data.train_images, "data.test_images": data.test_images}
    problems = [f"{key} {path}: no such file" for key, path in files.items() if not Path(path).is_file()]
    return problems + [
        f"{key} {path}: no such folder" for key, path in folders.items() if not Path(path).is_dir()
    ]


def _fold_problems(folds: Folds) -> list[str]:
    problems = [] if folds.k >= 2 else [f"folds.k {folds.k}: needs 2 or more folds"]
    used = folds.used
    if not used or len(set(used)) != len(used) or not set(used) <= set(range(folds.k)):
        problems.append(f"folds.use {list(used)}: distinct folds among 0..{folds.k - 1}, at least one")
    return problems


def _model_problems(exp: Experiment) -> list[str]:
    if not exp.models:
        return ["models: name at least one"]
    problems = []
    for name, model in exp.models.items():
        where = f"models.{name}"
        if not NAME.match(name):
            problems.append(f"{where}: a name is letters, digits, '_', '.', '-' (a folder and manifest name)")
        if not Path(model.config).is_file():
            problems.append(f"{where}.config {model.config}: no such file")
        if model.init is not None and (model.init == name or model.init not in exp.models):
            problems.append(f"{where}.init {model.init!r}: not another model of this experiment")
        if model.gpus_per_job < 1 or not model.weight > 0:
            problems.append(f"{where}: gpus_per_job >= 1 and weight > 0")
        owned = (
            *OWNED_KEYS,
            *(PSEUDO_KEYS if exp.pseudo.rounds else ()),
            *((INIT_KEY,) if model.init else ()),
        )
        problems += [f"{where}.set {key}: set by the experiment itself" for key in model.set if key in owned]
    return problems + _init_cycles(exp)


def _init_cycles(exp: Experiment) -> list[str]:
    for name in exp.models:
        seen, current = {name}, exp.models[name].init
        while current in exp.models:
            if current in seen:
                return [f"models.{name}.init: a cycle of init models ({', '.join(sorted(seen))})"]
            seen.add(current)
            current = exp.models[current].init
    return []


def _option_problems(exp: Experiment) -> list[str]:
    problems = []
    if exp.pseudo.rounds < 0:
        problems.append(f"pseudo.rounds {exp.pseudo.rounds}: 0 or more")
    if exp.kernel.dry_run_images is not None and exp.kernel.dry_run_images < 1:
        problems.append(f"kernel.dry_run_images {exp.kernel.dry_run_images}: 1 or more (null: all)")
    if exp.inference.devices not in INFERENCE_DEVICES:
        problems.append(f"inference.devices {exp.inference.devices!r}: one of {', '.join(INFERENCE_DEVICES)}")
    if exp.slurm.cluster not in EXECUTOR_CLUSTERS:
        problems.append(f"slurm.cluster {exp.slurm.cluster!r}: one of {', '.join(EXECUTOR_CLUSTERS)}")
    return problems
