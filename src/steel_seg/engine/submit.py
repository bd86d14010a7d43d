"""Load -> predict -> validate: the one run path of the kernel script and `steel-seg predict`.

`load` makes every check that needs no image (the inputs exist, the sample reads, every device can run this
torch build, each model's files, sha256 and spec fit, its outputs are the competition's classes) and builds
the ensemble; a problem there stops the run before any image is read. A model dir absent from the weights
dir is looked for by its weights' sha256 under `Inputs.search_root` (the kernel's input root: a renamed or
re-zipped upload). `run` streams the submission, which is complete whatever happens (rows predicted before a
failure or the deadline are kept, the rest written empty), and validates it against the sample.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from steel_seg.engine import devices, locations
from steel_seg.engine.ensemble import Ensemble
from steel_seg.engine.predict import RunSummary, predict_submission
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import submission
from steel_seg.models.factory import WEIGHTS_FILE
from steel_seg.models.manifest import Manifest, ManifestError, ModelEntry, sha256_file
from steel_seg.models.recipe import check_tuned
from steel_seg.postprocess.rules import Rules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Inputs and output of one run; `search_root`: where to look for model dirs absent from `weights_dir`."""

    images_dir: Path
    sample_csv: Path
    weights_dir: Path
    out_csv: Path
    search_root: Path | None = None

    def check(self) -> None:
        """FileNotFoundError naming the first input that is missing."""
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir}: test image folder not found")
        if not self.sample_csv.is_file():
            raise FileNotFoundError(f"{self.sample_csv}: sample submission not found")
        if not self.weights_dir.is_dir():
            raise FileNotFoundError(f"{self.weights_dir}: weights folder not found")


@dataclass
class Outcome:
    """What `run` did: the engine's summary (None when it failed), the failure, the file's problems."""

    summary: RunSummary | None
    error: str | None = None
    problems: list[str] = field(default_factory=list)


def load(
    inputs: Inputs,
    manifest: Manifest,
    rules: Rules,
    settings: PredictSettings,
    allow_recipe_mismatch: bool = False,
) -> Ensemble:
    """Every start-up check, then the ensemble on the first of `settings.devices()`.

    Raises:
        OSError, ValueError (ManifestError), devices.DeviceError: naming the file or device at fault; also
        when the rules were tuned on another ensemble than `manifest` (`check_recipe`).
    """
    check_recipe(manifest, rules, allow_recipe_mismatch)
    inputs.check()
    submission.read_sample(inputs.sample_csv)
    run_on = settings.devices()
    devices.check(run_on)
    if inputs.search_root is not None:
        manifest = find_model_dirs(manifest, inputs.weights_dir, inputs.search_root)
    return Ensemble.load(inputs.weights_dir, manifest, run_on[0])


def check_recipe(manifest: Manifest, rules: Rules, allow_mismatch: bool) -> None:
    """ValueError listing what differs when the rules were tuned on another ensemble than `manifest` ships
    (`models.recipe.check_tuned`); with `allow_mismatch` the differences are logged instead."""
    problems, line = check_tuned(manifest, rules.tuning)
    if problems and not allow_mismatch:
        raise ValueError(
            "the rules were tuned on another ensemble than the manifest ships: " + "; ".join(problems)
        )
    for problem in problems:
        log.warning("recipe (allowed by --allow-recipe-mismatch): %s", problem)
    if line:
        log.info("%s", line)


def find_model_dirs(manifest: Manifest, weights_dir: Path, root: Path) -> Manifest:
    """The manifest with each model dir absent from `weights_dir` replaced by the folder up to
    `locations.SEARCH_DEPTH` levels under `root` whose weights file has the model's sha256.

    Raises:
        ManifestError: a model found nowhere; the message lists what `root` holds.
    """
    absent = [m for m in manifest.models if not (weights_dir / m.dir / WEIGHTS_FILE).is_file()]
    if not absent:
        return manifest
    by_sha = _weights_by_sha256(locations.files_named(root, WEIGHTS_FILE))
    lost = [m for m in absent if m.sha256 not in by_sha]
    if lost:
        raise ManifestError(_lost_message(lost, weights_dir, root))
    found = {m.name: by_sha[m.sha256] for m in absent}
    for name, model_dir in found.items():
        log.warning("model %r: not in %s; using %s (same sha256)", name, weights_dir, model_dir)
    models = tuple(dataclasses.replace(m, dir=str(found.get(m.name, m.dir))) for m in manifest.models)
    return dataclasses.replace(manifest, models=models)


def _weights_by_sha256(paths: list[Path]) -> dict[str, Path]:
    """sha256 -> the first model dir (sorted) whose weights file has it."""
    by_sha: dict[str, Path] = {}
    for path in paths:
        by_sha.setdefault(sha256_file(path), path.parent)
    return by_sha


def _lost_message(lost: list[ModelEntry], weights_dir: Path, root: Path) -> str:
    names = ", ".join(f"{m.name!r} (dir {m.dir}, sha256 {m.sha256[:12]}...)" for m in lost)
    return (
        f"model(s) {names}: not in {weights_dir} and no {WEIGHTS_FILE} with that sha256 up to "
        f"{locations.SEARCH_DEPTH} levels under {root}: is the weights dataset attached, and is it the "
        f"version the kernel was built with? {locations.listing(root)}"
    )


def run(ensemble: Ensemble, rules: Rules, inputs: Inputs, settings: PredictSettings) -> Outcome:
    """Predict the sample's images into `inputs.out_csv`, then validate it; never raises for a failed run."""
    before = _identity(inputs.out_csv)
    try:
        summary = predict_submission(
            ensemble, rules, inputs.images_dir, inputs.sample_csv, inputs.out_csv, settings
        )
        outcome = Outcome(summary)
    except Exception as exc:
        log.exception("prediction failed mid-run")
        outcome = Outcome(None, f"{type(exc).__name__}: {exc}")
    if _identity(inputs.out_csv) in (None, before):
        outcome.problems = [f"{inputs.out_csv}: no submission was written by this run"]
    else:
        outcome.problems = submission.validate(inputs.out_csv, inputs.sample_csv)
    return outcome


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime ns) of a file, None when absent: a file replaced by this run has another identity."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns
