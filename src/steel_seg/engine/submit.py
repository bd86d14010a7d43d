"""Load -> predict -> validate: the one run path of the kernel script and `steel-seg predict`.

`load` makes every check that needs no image (the inputs exist, the output can be written and is none of
them, the sample reads, every device can run this torch build, each model's files, sha256 and spec fit, its
outputs are the competition's classes), builds the ensemble and runs one image through it on every device;
a problem there stops the run before any image is read. A model dir absent from the weights
dir is looked for by its weights' sha256 under `Inputs.search_root` (the kernel's input root: a renamed or
re-zipped upload). `run` streams the submission, which is complete whatever happens (rows predicted before a
failure or the deadline are kept, the rest written empty), and validates it against the sample.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steel_seg.competition import SUBMISSION
from steel_seg.engine import devices, locations
from steel_seg.engine.ensemble import Ensemble
from steel_seg.engine.predict import RunSummary, predict_submission
from steel_seg.engine.runner import PredictSettings, preflight
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
        """FileNotFoundError naming the first input that is missing; ValueError when the output is a folder,
        one of the inputs or inside an input folder, or its folder cannot be written."""
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir}: test image folder not found")
        if not self.sample_csv.is_file():
            raise FileNotFoundError(f"{self.sample_csv}: sample submission not found")
        if not self.weights_dir.is_dir():
            raise FileNotFoundError(f"{self.weights_dir}: weights folder not found")
        problem = self.output_problem()
        if problem:
            raise ValueError(f"{self.out_csv}: {problem}")

    def output_problem(self) -> str | None:
        """Why the submission cannot be written at `out_csv` (None when it can), checked before any model
        loads: a run that cannot write its file would otherwise predict for nothing."""
        out = self.out_csv.resolve()
        if out.is_dir():
            return f"--out is a folder; give the submission's file, e.g. {self.out_csv / SUBMISSION}"
        if out == self.sample_csv.resolve():
            return "--out is the sample submission this run reads; write the submission elsewhere"
        for folder, what in ((self.weights_dir, "weights folder"), (self.images_dir, "test image folder")):
            if folder.resolve() in out.parents:
                return f"--out is inside the {what} {folder}, an input of this run; write elsewhere"
        existing = next(p for p in out.parents if p.exists())
        if not existing.is_dir():
            return f"{existing} is a file, so the submission's folder cannot be made"
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            return f"cannot write in {existing} ({exc.strerror or exc})"
        return None


@dataclass
class Outcome:
    """What `run` did: the engine's summary (None when it failed), the failure, whether this run wrote the
    submission, and the file's problems."""

    summary: RunSummary | None
    error: str | None = None
    written: bool = True
    problems: list[str] = field(default_factory=list)


def load(
    inputs: Inputs,
    manifest: Manifest,
    rules: Rules,
    settings: PredictSettings,
    allow_recipe_mismatch: bool = False,
) -> Ensemble:
    """Every start-up check, then the ensemble on the first of `settings.devices()`, run once on every device
    (`runner.preflight`).

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
    ensemble = Ensemble.load(inputs.weights_dir, manifest, run_on[0])
    preflight(ensemble, settings)
    return ensemble


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
        outcome.written = False
        outcome.problems = [f"{inputs.out_csv}: no submission was written by this run"]
        return outcome
    try:
        outcome.problems = submission.validate(
            inputs.out_csv, inputs.sample_csv, final_format=settings.final_format
        )
    except ValueError as exc:  # the written file cannot be read back as a submission
        outcome.problems = [f"cannot be validated: {exc}"]
    return outcome


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime ns) of a file, None when absent: a file replaced by this run has another identity."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns
