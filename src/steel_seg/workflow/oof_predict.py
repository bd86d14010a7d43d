"""`steel-seg oof`: a training run's held-out fold, predicted at full resolution into an OOF directory.

Reads the run's `run.json` (`runs.RunInfo`), predicts the fold's images with the inference engine
(`predict.iter_probs`: the same batching/TTA code as the kernel) and stores them with `oof.OOFWriter`.
"""

from __future__ import annotations

from pathlib import Path

from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.predict import iter_probs
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats.folds import fold_ids, read_folds
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter
from steel_seg.formats.runs import RunInfo
from steel_seg.models import factory


def heldout_ids(info: RunInfo) -> list[str]:
    """The run's validation fold: its ImageIds, sorted; ValueError naming folds.csv when it has none."""
    return fold_ids(read_folds(info.folds_csv), info.fold, info.folds_csv)[1]


def predict_oof(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: PredictSettings | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the OOF directory of a run's held-out fold (default `oof/<run name>`); returns it. An existing
    directory is refused unless `overwrite`, and then replaced only when the new one is complete."""
    settings = settings or PredictSettings()
    info = RunInfo.load(run_dir)
    model, spec = factory.load(info.model_path, device="cpu")
    if not spec.has_seg:
        raise ValueError(f"{info.model_path}: a {spec.arch} has no segmentation output to store as OOF")
    ensemble = Ensemble([Member(info.name, "seg", model, spec)], settings.devices()[0])
    ids = heldout_ids(info)[: settings.limit]
    out = Path(out_dir or Path("oof") / info.name)
    writer = OOFWriter(out, str(info.run_dir), info.fold, spec.has_cls, overwrite)
    for image_id, probs, cls in iter_probs(ensemble, [info.images_dir / i for i in ids], settings):
        writer.add(image_id, probs, cls)
    return writer.close(Labels.from_csv(info.train_csv, info.images_dir))
