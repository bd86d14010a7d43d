"""The weights manifest (`weights/manifest.json`): which models the ensemble runs, checked before inference.

Each entry names a model dir (spec.json + model.safetensors, relative to the weights dir), its role
("seg" segmenter or "cls" classifier), the sha256 of its safetensors file, its ensemble weight and its TTA
views, and, for a model taken from a training run, its `provenance` (the run, the fold it held out, the
folds.csv and config it was trained with, what the model is): what `steel-seg oof --weights-dir` groups by
fold and `models.recipe` compares with the recipe the rules were tuned on. `drop_order` says what the time
budget may drop first; `budget_s` is the run's time limit. `collect_models` (`steel-seg manifest`) builds a
weights dir's new state beside it and swaps it in whole, so the models and the manifest listing their sha256
never disagree on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from steel_seg import fileio
from steel_seg.fileio import sha256_file
from steel_seg.formats.runs import ALLOW_FLAG, check_model_dir_inputs
from steel_seg.models import factory
from steel_seg.models.factory import SPEC_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

TTA_VIEWS = ("none", "h", "v", "hv")
ROLES = ("seg", "cls")
DEFAULT_BUDGET_S = 3300.0
MANIFEST_FILE = "manifest.json"


class ManifestError(ValueError):
    """A manifest or a model dir that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a model of the manifest comes from and what it is.

    `run`: the training run (as given to `steel-seg manifest`); `fold`: the fold it held out; `folds_sha256`:
    of the folds.csv that fold is in; `config_sha256`: of the training config less the fold, the paths and the
    resumable keys (`train.config.TrainConfig.recipe_sha256`): one config's models of every fold share it.
    """

    run: str
    fold: int
    folds_sha256: str
    config_sha256: str
    arch: str
    encoder: str
    classes: int
    aux_head: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(frozen=True)
class ModelEntry:
    """One model of the ensemble, as the manifest lists it."""

    name: str
    role: str
    dir: str
    sha256: str
    weight: float = 1.0
    tta: tuple[str, ...] = ("none",)
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ManifestError(f"model {self.name!r}: role {self.role!r} is not one of {ROLES}")
        bad = [v for v in self.tta if v not in TTA_VIEWS]
        if bad or not self.tta or len(set(self.tta)) != len(self.tta):
            raise ManifestError(
                f"model {self.name!r}: tta {list(self.tta)} must be distinct views of {TTA_VIEWS}"
            )
        if not self.weight > 0:
            raise ManifestError(f"model {self.name!r}: weight {self.weight} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "dir": self.dir,
            "sha256": self.sha256,
            "weight": self.weight,
            "tta": list(self.tta),
        } | ({} if self.provenance is None else {"provenance": self.provenance.to_dict()})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEntry:
        provenance = d.get("provenance")
        return cls(
            name=str(d["name"]),
            role=str(d["role"]),
            dir=str(d["dir"]),
            sha256=str(d["sha256"]).lower(),
            weight=float(d.get("weight", 1.0)),
            tta=tuple(d.get("tta", ("none",))),
            provenance=None if provenance is None else Provenance.from_dict(provenance),
        )


@dataclass(frozen=True)
class Manifest:
    """The ensemble: its models, the order in which the budget may drop views/models, and the time limit."""

    models: tuple[ModelEntry, ...]
    drop_order: tuple[str, ...] = ()
    budget_s: float = DEFAULT_BUDGET_S

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ManifestError(f"model names must be unique, got {names}")
        if not any(m.role == "seg" for m in self.models):
            raise ManifestError("the manifest needs at least one model with role 'seg'")
        for step in self.drop_order:
            kind, _, what = step.partition(":")
            if not (kind == "tta" and what in TTA_VIEWS) and not (kind == "model" and what in names):
                raise ManifestError(
                    f"drop_order step {step!r}: expected 'tta:<view>' or 'model:<one of {names}>'"
                )
        if not self.budget_s > 0:
            raise ManifestError(f"budget_s {self.budget_s} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.to_dict() for m in self.models],
            "drop_order": list(self.drop_order),
            "budget_s": self.budget_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        budget = d.get("budget_s")
        return cls(
            models=tuple(ModelEntry.from_dict(m) for m in d["models"]),
            drop_order=tuple(d.get("drop_order", ())),
            budget_s=DEFAULT_BUDGET_S if budget is None else float(budget),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read a manifest.json; ManifestError naming the file on bad content."""
        return fileio.load_json(path, "manifest", cls.from_dict, ManifestError)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the manifest as JSON atomically (temp file + rename)."""
        return fileio.write_json(path, self.to_dict())


def check_model_dir(weights_dir: str | os.PathLike, entry: ModelEntry) -> Path:
    """Check one entry's files exist and its weights match the manifest's sha256; returns the model dir."""
    model_dir = Path(weights_dir) / entry.dir
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise ManifestError(f"{model_dir / name}: missing (model {entry.name!r})")
    actual = sha256_file(model_dir / WEIGHTS_FILE)
    if actual != entry.sha256:
        raise ManifestError(
            f"{model_dir / WEIGHTS_FILE}: sha256 {actual} does not match the manifest's "
            f"{entry.sha256} (model {entry.name!r}): wrong or corrupted weights"
        )
    return model_dir


def load_model(model_dir: Path, name: str, role: str | None = None, device: str = "cpu"):
    """`(model, spec)` of a model dir, loaded exactly as the kernel loads it (weights readable, spec and
    weights agree, one output per competition class, the arch fits `role` when given); ManifestError naming
    the model and the file otherwise. `steel-seg manifest` and `build_kernel.py` call it to refuse, before
    any upload, what would fail at kernel start-up."""
    try:
        model, spec = factory.load(model_dir, device=device)
        spec.check_classes(str(model_dir / SPEC_FILE))
    except (ValueError, KeyError) as exc:
        raise ManifestError(f"model {name!r}: {exc}") from exc
    if role is not None and (role == "seg") != spec.has_seg:
        raise ManifestError(
            f"{model_dir / SPEC_FILE}: arch {spec.arch} does not fit the manifest's role {role!r} "
            f"(model {name!r})"
        )
    return model, spec


def build_manifest(
    weights_dir: str | os.PathLike,
    model_dirs: Sequence[str | os.PathLike],
    *,
    tta: Sequence[str] = ("none", "h"),
    cls_tta: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    drop_order: Sequence[str] | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    provenance: Mapping[str, Provenance] | None = None,
) -> Manifest:
    """A manifest over model dirs inside `weights_dir`: name = dir name, role from the spec, sha256 computed,
    `provenance` by name (models of training runs).

    Segmenters get the views `tta`, classifiers `cls_tta` (None: the same views; the 1st place ran its
    classifiers with none/h/v too, and a classifier costs a fraction of a segmenter). Default `drop_order`:
    the views beyond "none", last listed first, then the segmenters after the first, last first.
    """
    weights_dir = Path(weights_dir)
    weights = [1.0] * len(model_dirs) if weights is None else list(weights)
    views = {"seg": tuple(tta), "cls": tuple(tta if cls_tta is None else cls_tta)}
    provenance = provenance or {}
    entries = [
        _entry(weights_dir, Path(d), w, views, provenance.get(Path(d).name))
        for d, w in zip(model_dirs, weights, strict=True)
    ]
    if drop_order is None:
        segs = [e.name for e in entries if e.role == "seg"]
        every = [*views["seg"], *(v for v in views["cls"] if v not in views["seg"])]
        drop_order = [f"tta:{v}" for v in reversed(every) if v != "none"] + [
            f"model:{n}" for n in segs[:0:-1]
        ]
    return Manifest(models=tuple(entries), drop_order=tuple(drop_order), budget_s=budget_s)


def parse_views(text: str) -> tuple[str, ...]:
    """A comma list of TTA views ("none,h,v") as a tuple; ValueError naming the bad ones."""
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in views if v not in TTA_VIEWS]
    if bad or not views:
        raise ValueError(f"views {text!r}: use a comma list of {', '.join(TTA_VIEWS)}")
    return views


def copy_model_dir(source: str | os.PathLike, weights_dir: str | os.PathLike, name: str) -> Path:
    """Copy a model dir (spec + weights, e.g. a run's `best/`) to `weights_dir/name`, the upload layout, once
    it has loaded as the kernel will load it (`load_model`); nothing is copied otherwise."""
    source, target = Path(source), Path(weights_dir) / name
    files = [source / SPEC_FILE, source / WEIGHTS_FILE]
    for path in files:
        if not path.is_file():
            raise ManifestError(f"{path}: missing (a model dir holds {SPEC_FILE} and {WEIGHTS_FILE})")
    load_model(source, name)
    for path in files:
        fileio.write_with(target / path.name, partial(shutil.copyfile, path), size=path.stat().st_size)
    return target


def collect_models(
    weights_dir: str | os.PathLike,
    models: Sequence[tuple[str, str | os.PathLike]],
    *,
    allow_changed_inputs: bool = False,
    describe: Callable[[Path], Provenance | None] | None = None,
    **kwargs: Any,
) -> Path:
    """`steel-seg manifest`: copy each `(name, model dir)` to `weights_dir/name` (`copy_model_dir`) and write
    manifest.json over exactly these models (`write_manifest(**kwargs)`); returns the manifest's path.

    The new weights dir is built in a hidden sibling holding everything the old one holds (hard links) and
    replaces it whole (`fileio.staging_copy`, `publish_dir`): a failure or a kill leaves the old one as it
    was. Nothing but `weights_dir/name/{spec.json,model.safetensors}` and manifest.json changes: other files
    (thresholds.json, other model dirs) stay. Refused (ManifestError / ValueError, before anything is
    written): a `weights_dir/name` that is not a model dir, a weights dir that is or holds a model dir it
    collects (other than its own `weights_dir/name`), a model of a run whose recorded input files changed
    (unless `allow_changed_inputs`). `describe(model dir)` gives each model's provenance, once its run's
    inputs are checked.
    """
    weights_dir = Path(weights_dir)
    for name, source in models:
        for change in check_model_dir_inputs(source, allow_changed_inputs):
            log.warning("%s: input of %s changed, going on: %s", ALLOW_FLAG, source, change)
        _check_slot(weights_dir / name)
    provenance = {name: describe(Path(source)) for name, source in models} if describe else {}
    outside = {f"model dir of {name!r}": source for name, source in models
               if Path(source).resolve().parent != weights_dir.resolve()}  # fmt: skip
    staging = fileio.staging_copy(weights_dir, outside)
    try:
        for name, source in models:
            copy_model_dir(source, staging, name)
        write_manifest(staging, [name for name, _ in models], provenance=provenance, **kwargs)
    except BaseException:
        fileio.discard(staging)
        raise
    return fileio.publish_dir(staging, weights_dir) / MANIFEST_FILE


def _check_slot(target: Path) -> None:
    """ManifestError when `target` exists and is not a model dir (the manifest replaces only those)."""
    if not target.exists():
        return
    own = {SPEC_FILE, WEIGHTS_FILE}
    if not target.is_dir() or (any(target.iterdir()) and not own & {p.name for p in target.iterdir()}):
        raise ManifestError(
            f"{target}: exists and is not a model dir ({SPEC_FILE} + {WEIGHTS_FILE}); the manifest replaces "
            "only model dirs: choose another NAME"
        )


def write_manifest(
    weights_dir: str | os.PathLike, model_dirs: Sequence[str | os.PathLike], **kwargs: Any
) -> Path:
    """`build_manifest` saved as `weights_dir/manifest.json`; returns its path."""
    return build_manifest(weights_dir, model_dirs, **kwargs).save(Path(weights_dir) / MANIFEST_FILE)


def _entry(
    weights_dir: Path,
    model_dir: Path,
    weight: float,
    views: dict[str, tuple[str, ...]],
    provenance: Provenance | None,
) -> ModelEntry:
    full = model_dir if model_dir.is_absolute() else weights_dir / model_dir
    try:
        rel = full.resolve().relative_to(weights_dir.resolve())
    except ValueError as exc:
        raise ManifestError(f"{full}: model dir is not inside the weights dir {weights_dir}") from exc
    spec_path, weights_path = full / SPEC_FILE, full / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise ManifestError(f"{path}: missing")
    try:
        spec = factory.ModelSpec.from_json(spec_path)
        spec.check_classes(str(spec_path))
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    role = "seg" if spec.has_seg else "cls"
    return ModelEntry(
        name=full.name,
        role=role,
        dir=rel.as_posix(),
        sha256=sha256_file(weights_path),
        weight=weight,
        tta=views[role],
        provenance=provenance,
    )
