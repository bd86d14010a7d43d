"""A fine-tune stage: a run that starts from the weights of an earlier run (`model.init_weights`).

The 31st place trained on crops and fine-tuned on full 256 x 1600 images, where its models then predict;
the 3rd trained at 256 x 800 and predicted at full size. `init_weights` names a run dir (its `run.json` says
which model dir: `best/`), a model dir (`spec.json` + `model.safetensors`) or a weights file; `{fold}` in it
is the config's `data.fold` (`TrainConfig`), so one config fine-tunes every fold from its own crop run.

A run or model dir must fit this run: the same held-out fold (else the fine-tune would train on the images
it validates on, through the weights) and the same spec (architecture, channels, normalisation), each an
error naming the file otherwise.
"""

from __future__ import annotations

from pathlib import Path

from steel_seg.formats.runs import RunDir, RunInfo
from steel_seg.models.factory import SPEC_FILE, ModelSpec

FOLD = "{fold}"


def init_path(init_weights: str) -> Path:
    """The model dir or weights file `init_weights` names: a run dir's model dir (`best/`), else itself."""
    path = Path(init_weights)
    return RunInfo.load(path).model_path if RunDir(path).run_json.is_file() else path


def init_source(init_weights: str, fold: int, spec: ModelSpec) -> Path:
    """`init_path(init_weights)`, checked against this run's `fold` (a run) and `spec` (a model dir)."""
    run = RunDir(Path(init_weights))
    if run.run_json.is_file() and (held_out := RunInfo.load(run.path).fold) != fold:
        raise ValueError(
            f"{run.run_json}: model.init_weights is a run that held out fold {held_out}; this "
            f"run holds out fold {fold} (its weights have seen this fold's images)"
        )
    path = init_path(init_weights)
    if (path / SPEC_FILE).is_file():
        theirs = ModelSpec.from_json(path / SPEC_FILE)
        if theirs != spec:
            changed = [k for k, v in spec.to_dict().items() if theirs.to_dict()[k] != v]
            raise ValueError(
                f"{path / SPEC_FILE}: model.init_weights has another spec than this config's model "
                f"(differs in {', '.join(changed)})"
            )
    return path
