"""`steel-seg oof`: out-of-fold predictions at full resolution into an OOF directory, of one training run
(`predict_oof`) or of the very ensemble a weights dir ships (`predict_ensemble_oof`).

Both predict with the inference engine (`predict.iter_probs`: the kernel's batching, TTA, ensemble averaging
and precision rule) and store the probabilities with `oof.OOFWriter`, recording what they are out of: the
folds.csv (sha256, number of folds), each image's fold and the recipe (`models.recipe`). `steel-seg tune`
checks and keeps that record, `build_kernel.py` and the kernel compare it with what they ship.
"""

from __future__ import annotations

import logging
from pathlib import Path

from steel_seg.engine.ensemble import Ensemble
from steel_seg.engine.predict import iter_probs
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats.folds import fold_ids, read_folds
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter, Origin
from steel_seg.formats.runs import ALLOW_FLAG, RunInfo
from steel_seg.models import factory
from steel_seg.models.manifest import MANIFEST_FILE, Manifest, ModelEntry, sha256_file
from steel_seg.models.recipe import Recipe
from steel_seg.workflow.provenance import provenance_of

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
    `allow_changed_inputs`. The recipe recorded is the run's model alone, weight 1, with `settings.tta`
    (default: no flip)."""
    settings = settings or PredictSettings()
    info = RunInfo.load(run_dir)
    for change in info.check_inputs(allow_changed_inputs):
        log.warning("%s: input changed, going on: %s", ALLOW_FLAG, change)
    spec = factory.ModelSpec.from_json(info.model_path / factory.SPEC_FILE)
    if not spec.has_seg:
        raise ValueError(
            f"{info.model_path}: a {spec.arch} has no segmentation output to store as OOF; its out-of-fold "
            "probabilities come with its ensemble's: steel-seg oof --weights-dir"
        )
    entry = ModelEntry(
        name=info.name,
        role="seg",
        dir=str(info.model_path),
        sha256=sha256_file(info.model_path / factory.WEIGHTS_FILE),
        tta=tuple(settings.tta or ("none",)),
        provenance=provenance_of(info.model_path),
    )
    manifest = Manifest(models=(entry,))
    origin = _origin(Recipe.of(manifest), info.folds_csv)
    ensemble = Ensemble.load(".", manifest, settings.devices()[0])
    out = Path(out_dir or Path("oof") / info.name)
    ids = heldout_ids(info)[: settings.limit]
    inputs = {"run dir": info.run_dir, "images folder": info.images_dir, "train.csv": info.train_csv,
              "folds.csv": info.folds_csv}  # fmt: skip
    with OOFWriter(out, str(info.run_dir), info.fold, spec.has_cls, overwrite, inputs, origin) as writer:
        for image_id, probs, cls in iter_probs(ensemble, [info.images_dir / i for i in ids], settings):
            writer.add(image_id, probs, cls)
        return writer.close(Labels.from_csv(info.train_csv, info.images_dir))


def predict_ensemble_oof(
    weights_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: PredictSettings | None = None,
    overwrite: bool = False,
    allow_changed_inputs: bool = False,
) -> Path:
    """Write the OOF directory of the ensemble `weights_dir/manifest.json` ships (default `oof/<weights dir
    name>`): each fold's validation images predicted by exactly that fold's members, with their manifest
    weights and views, the classifier's or aux head's probabilities in cls.csv. Returns the directory.

    Raises:
        ValueError (ManifestError): a model without a held-out fold, members of different folds.csv files, a
            fold that lacks a member, a folds.csv changed since training, a member run's recorded inputs
            changed (unless `allow_changed_inputs`), views asked in `settings.tta`.
    """
    settings = settings or PredictSettings()
    if settings.tta is not None:
        raise ValueError("--tta: the ensemble's OOF predictions use each model's manifest views")
    weights_dir = Path(weights_dir)
    manifest = Manifest.load(weights_dir / MANIFEST_FILE)
    recipe = Recipe.of(manifest)
    runs = [RunInfo.load(m.provenance.run) for m in manifest.models]
    for change in (c for run in runs for c in run.check_inputs(allow_changed_inputs)):
        log.warning("%s: input changed, going on: %s", ALLOW_FLAG, change)
    info = runs[0]
    origin = _origin(recipe, info.folds_csv)
    folds = read_folds(info.folds_csv)
    out = Path(out_dir or Path("oof") / weights_dir.resolve().name)
    inputs = {"weights dir": weights_dir, "images folder": info.images_dir, "train.csv": info.train_csv,
              "folds.csv": info.folds_csv}  # fmt: skip
    has_cls = recipe.image_score is not None
    with OOFWriter(out, str(weights_dir), None, has_cls, overwrite, inputs, origin) as writer:
        for fold in recipe.folds:
            fold_manifest = recipe.fold_models(manifest, fold)
            ensemble = Ensemble.load(weights_dir, fold_manifest, settings.devices()[0])
            ids = fold_ids(folds, fold, info.folds_csv)[1][: settings.limit]
            log.info("fold %d: %d images, models %s", fold, len(ids), ", ".join(ensemble.members))
            for image_id, probs, cls in iter_probs(ensemble, [info.images_dir / i for i in ids], settings):
                writer.add(image_id, probs, cls, fold=fold)
        return writer.close(Labels.from_csv(info.train_csv, info.images_dir))


def _origin(recipe: Recipe, folds_csv: Path) -> Origin:
    """The OOF record of `recipe`, once its folds.csv is checked unchanged since its models were trained."""
    now = sha256_file(folds_csv)
    if now != recipe.folds_sha256:
        raise ValueError(
            f"{folds_csv}: sha256 {now[:12]}... now, {recipe.folds_sha256[:12]}... when the models' manifest "
            "was written: the folds changed after training, so these predictions would not be out of fold"
        )
    return Origin(folds_sha256=now, n_folds=int(read_folds(folds_csv).nunique()), recipe=recipe.to_dict())
