"""`steel-seg oof`: a training run's held-out fold, predicted at full resolution into an OOF directory.

Reads the run's `run.json` (`runs.RunInfo`), predicts the fold's images with the inference engine
(`predict.iter_probs`: the same batching/TTA code as the kernel) and stores them with `oof.OOFWriter`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.predict import iter_probs
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats.folds import fold_ids, read_folds
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter
from steel_seg.formats.runs import ALLOW_FLAG, RunInfo
from steel_seg.models import factory

log = logging.getLogger(__name__)


def heldout_ids(info: RunInfo) -> list[str]:
    """The run's validation fold: its ImageIds, sorted; ValueError naming folds.csv when it has none."""
    return fold_ids(read_folds(info.folds_csv), info.fold, info.folds_csv)[1]


def predict_oof(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: PredictSettings | None = None,
    overwrite: bool = False,
    allow_changed_inputs: bool = False,
) -> Path:
    """Write the OOF directory of a run's held-out fold (default `oof/<run name>`); returns it. An existing
    directory is refused unless `overwrite` (and unless it is an OOF dir), and then replaced only when the
    new one is complete; an `out_dir` that is or holds one of the run's inputs is refused. So is a run whose
    recorded input files (folds.csv, train CSVs, weights) changed since it read them, unless
    `allow_changed_inputs`."""
    settings = settings or PredictSettings()
    info = RunInfo.load(run_dir)
    for change in info.check_inputs(allow_changed_inputs):
        log.warning("%s: input changed, going on: %s", ALLOW_FLAG, change)
    model, spec = factory.load(info.model_path, device="cpu")
    if not spec.has_seg:
        raise ValueError(f"{info.model_path}: a {spec.arch} has no segmentation output to store as OOF")
    ensemble = Ensemble([Member(info.name, "seg", model, spec)], settings.devices()[0])
    ids = heldout_ids(info)[: settings.limit]
    out = Path(out_dir or Path("oof") / info.name)
    inputs = {"run dir": info.run_dir, "images folder": info.images_dir, "train.csv": info.train_csv,
              "folds.csv": info.folds_csv}  # fmt: skip
    with OOFWriter(out, str(info.run_dir), info.fold, spec.has_cls, overwrite, inputs) as writer:
        for image_id, probs, cls in iter_probs(ensemble, [info.images_dir / i for i in ids], settings):
            writer.add(image_id, probs, cls)
        return writer.close(Labels.from_csv(info.train_csv, info.images_dir))
