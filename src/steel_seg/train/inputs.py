"""The files a training run reads, fingerprinted in `run.json` (`runs.InputFile`, by the config key that
names each): the train CSV of every source, the folds.csv, the init and encoder weights. A resumed run refuses
one that changed behind its unchanged path (an extra source's train.csv replaced, folds regenerated), since
it would go on training on other data than it started with."""

from __future__ import annotations

import logging
from pathlib import Path

from steel_seg.formats.runs import (
    ALLOW_FLAG,
    ENCODER_WEIGHTS,
    FOLDS_CSV,
    INIT_WEIGHTS,
    TRAIN_CSV,
    InputFile,
    RunDir,
    RunInfo,
    extra_csv_role,
    fingerprint,
)
from steel_seg.models.factory import WEIGHTS_FILE
from steel_seg.train.config import TrainConfig
from steel_seg.train.finetune import init_path

log = logging.getLogger(__name__)


def input_paths(cfg: TrainConfig, folds_csv: Path) -> dict[str, Path]:
    """role (config key) -> every input file `cfg` reads; `folds_csv` is the one the run resolved (a random
    folds.csv is written into the run dir); an `init_weights` run or model dir is the model.safetensors the
    run starts from (`finetune.init_path`)."""
    data, model = cfg.data, cfg.model
    paths = {TRAIN_CSV: Path(data.train_csv), FOLDS_CSV: Path(folds_csv)}
    paths |= {extra_csv_role(i): Path(source.train_csv) for i, source in enumerate(data.extra_sources)}
    if model.init_weights:
        init = init_path(model.init_weights)
        paths[INIT_WEIGHTS] = init / WEIGHTS_FILE if init.is_dir() else init
    if model.encoder_weights_path:
        paths[ENCODER_WEIGHTS] = Path(model.encoder_weights_path)
    return paths


def run_inputs(cfg: TrainConfig, folds_csv: Path) -> dict[str, InputFile]:
    """The fingerprints `run.json` records (`input_paths`, hashed now)."""
    return fingerprint(input_paths(cfg, folds_csv))


def check_resume(run: RunDir, allow: bool) -> None:
    """Before a run is resumed: ValueError naming run.json, each changed input file and both hashes
    (`RunInfo.check_inputs`); with `allow`, each change is logged and the run goes on (its run.json then
    records the files as they are now). A run dir without run.json, or one from before inputs were
    recorded, has nothing to compare."""
    if not run.run_json.is_file():
        return
    for change in RunInfo.load(run.path, check_paths=False).check_inputs(allow):
        log.warning("%s: input changed, going on: %s", ALLOW_FLAG, change)
