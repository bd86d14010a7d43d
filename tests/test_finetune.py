"""steel_seg.train.finetune: where a fine-tune stage's init weights come from, and what they must fit."""

from __future__ import annotations

import dataclasses

import pytest
from tiny_models import TINY_UNET

from steel_seg.formats.runs import RunInfo
from steel_seg.models import factory
from steel_seg.train.finetune import init_source


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    """A run dir of fold 2 whose run.json points at its best/ model dir."""
    run = tmp_path_factory.mktemp("unet-f2")
    factory.save(factory.build_model(TINY_UNET), TINY_UNET, run / "best")
    for name in ("folds.csv", "train.csv"):
        (run / name).write_text("")
    RunInfo(run, run.name, 2, run / "folds.csv", run / "train.csv", run, model_dir="best").save()
    return run


def test_a_run_dir_gives_its_model_dir_for_the_same_fold(crop_run):
    assert init_source(str(crop_run), 2, TINY_UNET) == crop_run / "best"
    assert init_source(str(crop_run / "best"), 0, TINY_UNET) == crop_run / "best"  # a model dir: no fold
    weights = crop_run / "best" / factory.WEIGHTS_FILE
    assert init_source(str(weights), 0, TINY_UNET) == weights


def test_another_fold_or_another_spec_is_refused_by_name(crop_run):
    with pytest.raises(ValueError, match=r"run.json: .*held out fold 2; this run holds out fold 0"):
        init_source(str(crop_run), 0, TINY_UNET)
    other = dataclasses.replace(TINY_UNET, mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match=r"best/spec.json: .*another spec .*differs in mean, std"):
        init_source(str(crop_run), 2, other)
