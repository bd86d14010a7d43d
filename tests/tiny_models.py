"""The smallest real smp model the tests train and load (a depth-3 Unet on a timm mobilenet, 1 channel),
and the sigmoid of a model's outputs, the reference the tests compare the engine and training with."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from steel_seg.formats.runs import RunDir
from steel_seg.models import factory
from steel_seg.models.factory import ModelSpec, forward_logits
from steel_seg.train.config import DataConfig, ModelConfig, TrainConfig

TINY_UNET = ModelSpec(
    arch="Unet",
    encoder="tu-mobilenetv3_small_050",
    in_channels=1,
    encoder_depth=3,
    decoder_channels=(8, 8, 8),
)


def forward_probs(model: nn.Module, spec: ModelSpec, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Sigmoid probabilities of normalised `x (N, C, H, W)`: seg `(N, 4, H, W)`, cls `(N, 4)` (or None)."""
    seg, cls = forward_logits(model, spec, x)
    return (None if seg is None else seg.sigmoid()), (None if cls is None else cls.sigmoid())


def write_run(run_dir: Path, spec: ModelSpec, info: dict, seed: int = 0) -> Path:
    """A run dir as `steel-seg train` writes it, with a random-init model: best/, run.json (`info`) and the
    config.yaml of its data paths and fold."""
    torch.manual_seed(seed)
    factory.save(factory.build_model(spec), spec, run_dir / "best")
    data = DataConfig(train_csv=info["train_csv"], images_dir=info["images_dir"], folds_csv=info["folds_csv"],
                      fold=info["fold"])  # fmt: skip
    TrainConfig(data=data, model=ModelConfig(spec)).save_yaml(RunDir(run_dir).config)
    (run_dir / "run.json").write_text(json.dumps({"model_dir": "best", **info}))
    return run_dir
