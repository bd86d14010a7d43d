"""Where a model dir comes from: the training run it sits in (`runs/<name>/best`), the fold that run held
out, the folds.csv that fold is in (sha256), the config it was trained with (`TrainConfig.recipe_sha256`)
and what the model is. `steel-seg manifest` writes it into the manifest for `steel-seg oof --weights-dir`
and the recipe checks; `steel-seg oof --run` records it with the run's predictions.
"""

from __future__ import annotations

from pathlib import Path

from steel_seg.formats.runs import RunDir, RunInfo
from steel_seg.models.factory import SPEC_FILE, ModelSpec
from steel_seg.models.manifest import Provenance, sha256_file
from steel_seg.train.config import TrainConfig


def provenance_of(model_dir: str | Path) -> Provenance | None:
    """The provenance of a model dir inside a training run; None for a dir that is not in one (no run.json
    beside it): such a model has no held-out fold."""
    model_dir = Path(model_dir)
    run = RunDir(model_dir.parent)
    if not run.run_json.is_file():
        return None
    info = RunInfo.load(run.path)
    spec = ModelSpec.from_json(model_dir / SPEC_FILE)
    return Provenance(
        run=str(run.path),
        fold=info.fold,
        folds_sha256=sha256_file(info.folds_csv),
        config_sha256=TrainConfig.from_yaml(run.config).recipe_sha256(),
        arch=spec.arch,
        encoder=spec.encoder,
        classes=spec.classes,
        aux_head=spec.aux_head,
    )
