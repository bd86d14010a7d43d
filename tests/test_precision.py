"""steel_seg.models.precision: the autocast dtype of each flag per device; `train.amp: off` read from YAML."""

from __future__ import annotations

import pytest
import torch
import yaml

from steel_seg.models.precision import autocast, autocast_dtype, device_dtype
from steel_seg.train.config import LoopConfig, TrainConfig

T4, A100, H200 = (7, 5), (8, 0), (9, 0)


@pytest.mark.parametrize(
    ("device", "capability", "flag", "expected"),
    [
        ("cuda", H200, "auto", torch.bfloat16),
        ("cuda", A100, "auto", torch.bfloat16),
        ("cuda", T4, "auto", torch.float16),  # no native bf16: emulated bf16 leaves cuDNN
        ("cuda", (6, 0), "auto", torch.float16),
        ("cuda", None, "auto", torch.float16),
        ("cuda", T4, "bf16", torch.bfloat16),  # asked for explicitly: taken as asked
        ("cuda", H200, "fp16", torch.float16),
        ("cuda", H200, "off", None),
        ("cpu", None, "auto", None),
        ("cpu", None, "bf16", None),
        ("cpu", None, "fp16", None),
    ],
)
def test_autocast_dtype(device, capability, flag, expected):
    assert autocast_dtype(device, capability, flag) is expected


def test_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, fp16, off; got 'fp8'"):
        autocast_dtype("cuda", H200, "fp8")


def test_the_cpu_device_runs_float32():
    assert device_dtype(torch.device("cpu"), "auto") is None
    with autocast(torch.device("cpu"), device_dtype(torch.device("cpu"), "auto")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def test_yaml_off_reads_as_false_and_means_off(tmp_path):
    assert yaml.safe_load("amp: off") == {"amp": False}
    assert LoopConfig(amp=False).amp == "off" and LoopConfig().amp == "auto"
    config = {"data": {}, "model": {"arch": "Unet", "encoder": "resnet18"}, "train": {"amp": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert TrainConfig.from_yaml(path).train.amp == "off"
    assert TrainConfig.from_yaml(path, {"train.amp": yaml.safe_load("off")}).train.amp == "off"
    with pytest.raises(ValueError, match=r"c\.yaml: train\.amp must be one of auto, .*; got True"):
        TrainConfig.from_yaml(path, {"train.amp": True})
