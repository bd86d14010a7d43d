"""Load -> predict -> validate: the one run path of the kernel script and `steel-seg predict`.

`load` makes every check that needs no image (the inputs exist, the sample reads, the rules parse, each
model's files, sha256 and spec fit, its outputs are the competition's classes) and builds the ensemble; a
problem there stops the run before any image is read. `run` streams the submission, which is complete
whatever happens (rows predicted before a failure are kept, the rest written empty), and validates it against
the sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from steel_seg import submission
from steel_seg.ensemble import Ensemble
from steel_seg.manifest import Manifest
from steel_seg.postprocess import Rules
from steel_seg.predict import PredictSettings, RunSummary, predict_submission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Inputs and output of one run."""

    images_dir: Path
    sample_csv: Path
    weights_dir: Path
    out_csv: Path

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


def load(inputs: Inputs, manifest: Manifest, rules: Rules, settings: PredictSettings) -> Ensemble:
    """Every start-up check, then the ensemble on `settings.device`; raises naming the file at fault."""
    inputs.check()
    submission.read_sample(inputs.sample_csv)
    return Ensemble.load(inputs.weights_dir, manifest, settings.device)


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
