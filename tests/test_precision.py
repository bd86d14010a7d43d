"""The autocast dtype: a pure function of (device type, compute capability, flag)."""

from __future__ import annotations

import pytest
import torch

from steel_seg.models import ModelSpec
from steel_seg.precision import autocast_context, autocast_dtype
from steel_seg.trainer_config import DataConfig, ModelConfig, RunConfig, TrainConfig

T4, A100, H200 = (7, 5), (8, 0), (9, 0)


@pytest.mark.parametrize(
    ("device", "capability", "flag", "expected"),
    [
        ("cuda", T4, "auto", torch.float16),  # no native bf16: emulated bf16 leaves cuDNN
        ("cuda", A100, "auto", torch.bfloat16),
        ("cuda", H200, "auto", torch.bfloat16),
        ("cuda", (6, 0), "auto", torch.float16),
        ("cuda", T4, "bf16", torch.bfloat16),  # asked for explicitly: taken as asked
        ("cuda", H200, "fp16", torch.float16),
        ("cuda", H200, "off", None),
        ("cpu", None, "auto", None),
        ("cpu", None, "bf16", None),
    ],
)
def test_autocast_dtype(device, capability, flag, expected):
    assert autocast_dtype(device, capability, flag) is expected


def test_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match="amp 'half': expected one of auto, bf16, fp16, off"):
        autocast_dtype("cuda", T4, "half")


def test_cpu_context_runs_float32():
    with autocast_context(torch.device("cpu"), "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def test_training_takes_the_same_flags():
    model = ModelConfig(ModelSpec(arch="Unet", encoder="resnet18"))
    assert TrainConfig(DataConfig(), model, train=RunConfig(amp="auto")).train.amp == "auto"
    with pytest.raises(ValueError, match="train.amp must be one of auto, bf16, fp16, off, got 'half'"):
        TrainConfig(DataConfig(), model, train=RunConfig(amp="half"))
