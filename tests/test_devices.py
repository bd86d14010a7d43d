"""Devices: `--devices` lists, and the start-up check of a card against this torch build's architectures."""

from __future__ import annotations

import pytest
import torch

from steel_seg.engine.devices import DeviceError, arch_supports, check, incompatibility, resolve

KAGGLE_TORCH = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "compute_90"]  # torch 2.10 + CUDA 12.8: no sm_60
P100, T4, L4, H100, BLACKWELL = (6, 0), (7, 5), (8, 9), (9, 0), (12, 0)
NO_GPU = not torch.cuda.is_available()


def test_cpu_lists():
    assert resolve("cpu") == (torch.device("cpu"),)
    assert resolve("cpu, cpu") == (torch.device("cpu"), torch.device("cpu"))


BAD_LISTS = [("", "expected a comma list"), ("tpu", "'tpu' is not a device"), ("mps", "only cuda and cpu")]


@pytest.mark.parametrize(("text", "message"), BAD_LISTS)
def test_bad_lists_are_named(text, message):
    with pytest.raises(DeviceError, match=message):
        resolve(text)


@pytest.mark.skipif(not NO_GPU, reason="a GPU is visible")
def test_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(DeviceError, match="no GPU is visible") as error:
        resolve("cuda")
    assert '"machine_shape": "NvidiaTeslaT4"' in str(error.value) and "--devices cpu" in str(error.value)


@pytest.mark.parametrize(
    ("capability", "arch_list", "runs"),
    [
        (T4, KAGGLE_TORCH, True),
        (P100, KAGGLE_TORCH, False),  # the card Kaggle used to hand out by default
        (L4, KAGGLE_TORCH, True),  # sm_86 cubins run on 8.9
        (H100, ["sm_90a"], True),
        (L4, ["sm_90"], False),  # a newer minor's cubin does not
        (T4, ["sm_80", "sm_86"], False),  # another major's cubins do not
        (BLACKWELL, KAGGLE_TORCH, True),  # PTX compute_90 is compiled for newer cards
        (P100, ["compute_70"], False),
        (T4, [], False),
    ],
)
def test_arch_supports(capability, arch_list, runs):
    assert arch_supports(capability, arch_list) is runs


def test_a_p100_is_refused_with_the_card_and_the_machine_shape():
    message = incompatibility("Tesla P100-PCIE-16GB", P100, KAGGLE_TORCH)
    assert message.startswith(
        "Tesla P100-PCIE-16GB (compute capability 6.0, sm_60) cannot run this torch build"
    )
    assert "sm_70 sm_75 sm_80 sm_86 sm_90 compute_90" in message and "no kernel image is available" in message
    assert '"machine_shape": "NvidiaTeslaT4"' in message and "--accelerator NvidiaTeslaT4" in message
    assert incompatibility("Tesla T4", T4, KAGGLE_TORCH) is None


def test_check_passes_the_cpu():
    check(resolve("cpu,cpu"))
