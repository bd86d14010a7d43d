"""The shipped training configs at full size: train, oof, manifest and the built kernel, on the CPU.

Each of `unet_effb3.yaml`, `fpn_effb3.yaml`, `cls_resnet34.yaml` and the fine-tune stage
`unet_effb3_full.yaml` (from the Unet's run) runs unchanged but for its data and size (`--set`: batch 2, no
workers, random folds on a tiny synthetic set, 2 optimiser steps: 1 epoch of 2 batches, or for
`select: average` 2 epochs of 1 batch, both averaged): its real crop, architecture, loss, optimiser and
`encoder_weights: imagenet` with `mean/std: auto`, the ImageNet encoders planted in the test's Hugging Face
cache (`conftest.shipped_encoders`: random tensors, ImageNet's mean / std), so the pretrained path and the
auto normalisation run as they do for a user. Then `steel-seg oof` on a held-out image of each segmenter,
one manifest with all four models (three segmenters and the classifier that gates them), and the built
kernel, alone with its vendored smp, on 4 full-size test images.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from readme_walk import TWO_STEPS
from test_kernel import isolated_site, run_isolated

from steel_seg.cli import main as steel_seg_cli
from steel_seg.formats import oof, submission
from steel_seg.models import factory
from steel_seg.synthetic import dataset
from steel_seg.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"unet": "unet_effb3.yaml", "fpn": "fpn_effb3.yaml", "cls": "cls_resnet34.yaml",
           "unet_full": "unet_effb3_full.yaml"}  # fmt: skip
SMALL = ["data.folds_csv=null", "data.folds=random 6", "data.batch_size=2", "data.val_batch_size=2",
         "data.workers=0", "train.device=cpu", "train.progress=false"]  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """6 train images (5 train, 1 validates: random 6 folds) and 4 test images, full size."""
    out = tmp_path_factory.mktemp("full_size")
    dataset.write_dataset(out / "data", 6, 4, layout="original", seed=7, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(data, shipped_encoders) -> dict[str, Path]:
    """One training run per shipped config, then the OOF directory of each segmenter (`steel-seg oof` stores
    segmentation probabilities; a classifier has none)."""
    done = {}
    for name, config in CONFIGS.items():
        run, where = data / "runs" / name, data / "data"
        config_path = ROOT / "configs" / config
        paths = [f"data.train_csv={where / 'train.csv'}", f"data.images_dir={where / 'train_images'}"]
        steps = [f"{k}={v}" for k, v in TWO_STEPS[TrainConfig.from_yaml(config_path).train.select].items()]
        stage = [f"model.init_weights={done['unet']}"] if name == "unet_full" else []
        sets = [arg for value in [*paths, *SMALL, *steps, *stage] for arg in ("--set", value)]
        assert steel_seg_cli(["train", "--config", str(config_path), "--out", str(run), *sets]) == 0
        args = ["oof", "--run", str(run), "--out", str(data / "oof" / name), "--limit", "1",
                "--device", "cpu", "--workers", "0", "--batch-size", "1"]  # fmt: skip
        if name != "cls":
            assert steel_seg_cli(args) == 0
        done[name] = run
    return done


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_config_trains_two_steps_at_its_real_size(runs, name):
    run = runs[name]
    shipped = TrainConfig.from_yaml(ROOT / "configs" / CONFIGS[name])
    trained = TrainConfig.from_yaml(run / "config.yaml")
    assert trained.model.spec == shipped.model.spec and trained.data.crop == shipped.data.crop
    assert (trained.optim, trained.loss) == (shipped.optim, shipped.loss)
    assert trained.model.encoder_weights == "imagenet"
    spec = factory.ModelSpec.from_json(run / "best" / "spec.json")
    assert spec == shipped.model.spec
    assert (spec.mean, spec.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # planted ImageNet values
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and all(r["train_loss"] > 0 for r in log)
    if shipped.train.select == "average":
        assert [r["epoch"] for r in log] == [1, 2] and log[-1]["average"]["epochs"] == 2
    if spec.has_seg:
        held_out = oof.read_oof(run.parent.parent / "oof" / name)
        assert len(held_out.image_ids) == 1 and held_out.probs(held_out.image_ids[0]).shape == (4, 256, 1600)


def test_the_kernel_runs_all_four_with_its_vendored_smp(runs, data, tmp_path):
    weights = data / "weights"
    models_args = [arg for name, run in runs.items() for arg in ("--model", f"{name}={run}/best")]
    assert steel_seg_cli(["manifest", "--weights-dir", str(weights), *models_args, "--tta", "none"]) == 0
    shutil.copy(ROOT / "weights" / "thresholds.json", weights / "thresholds.json")
    build = [sys.executable, str(ROOT / "build_kernel.py"), "--weights-dir", str(weights), "--out"]
    assert subprocess.run([*build, str(tmp_path)], capture_output=True, timeout=120).returncode == 0
    sample, out = data / "data" / "sample_submission.csv", tmp_path / "submission.csv"
    args = [str(tmp_path / "kernel.py"), "--data-dir", str(data / "data"), "--weights-dir", str(weights),
            "--out", str(out), "--device", "cpu", "--limit", "4", "--batch-size", "2", "--workers", "0",
            "--no-progress", "--strict"]  # fmt: skip
    done = run_isolated({"site": isolated_site(tmp_path / "site")}, args, tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    where = rf"{re.escape(str(tmp_path))}/steel_seg_kernel_\w+/segmentation_models_pytorch"
    assert re.search(rf"INFO segmentation_models_pytorch \S+ from {where}\n", log), log[-4000:]
    assert submission.validate(out, sample) == []
    assert len(submission.read_sample(sample).image_ids) == 4
