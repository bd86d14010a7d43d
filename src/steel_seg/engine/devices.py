"""The devices an inference run uses, and the start-up check that each CUDA card can run this torch build.

`--devices` is a comma list: `cuda` (every visible GPU), `cuda:1`, `cpu`, or repeats such as `cpu,cpu` (two
workers sharing the CPU's model: how the multi-device path is tested without a GPU). A CUDA card is usable
only when this torch build carries kernels for its compute capability (`torch.cuda.get_arch_list()`: an
`sm_XY` of the same major and a minor at most the card's, or PTX `compute_XY` at or below it) and one small
op runs on it. Kaggle's torch 2.10 (CUDA 12.8) has no sm_60 kernels, so on a P100 (6.0) the run stops here,
naming the card and the `machine_shape` to ask for, before any model is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

DEFAULT_MACHINE_SHAPE = "NvidiaTeslaT4"  # Kaggle's "GPU T4 x2": two Tesla T4s (compute capability 7.5)
GPU_MACHINE_SHAPES = (
    "NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem",
    "NvidiaL4",
    "NvidiaL4X1",
    "NvidiaTeslaA100",
    "NvidiaH100",
    "NvidiaRtxPro6000",
)
RETIRED_MACHINE_SHAPES = {"NvidiaTeslaP100": "compute capability 6.0: Kaggle's torch has no sm_60 kernels"}
_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)[a-z]?$")


class DeviceError(ValueError):
    """A device the run cannot use; the message names it and what to do."""


def resolve(text: str) -> tuple[torch.device, ...]:
    """The devices of a `--devices` comma list; `cuda` means every visible GPU.

    Raises:
        DeviceError: an unknown name, a GPU index that is not visible, or `cuda` with no GPU visible.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise DeviceError(f"--devices {text!r}: expected a comma list such as cuda, cuda:1, cpu or cpu,cpu")
    return tuple(d for name in names for d in _devices(name))


def _devices(name: str) -> list[torch.device]:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--devices: {name!r} is not a device (use cuda, cuda:N or cpu)") from None
    if device.type == "cpu":
        return [device]
    if device.type != "cuda":
        raise DeviceError(f"--devices: {name!r}: only cuda and cpu devices are supported")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise DeviceError(f"--devices {name}: {no_gpu_message()}")
    if device.index is None:
        return [torch.device("cuda", i) for i in range(visible)]
    if device.index >= visible:
        raise DeviceError(f"--devices: {name} is not visible ({visible} GPU(s): cuda:0..cuda:{visible - 1})")
    return [device]


def no_gpu_message() -> str:
    return (
        f"no GPU is visible to torch {torch.__version__} (CUDA {torch.version.cuda}). On Kaggle the kernel "
        f'needs a GPU: kernel-metadata.json "enable_gpu": true and "machine_shape": '
        f'"{DEFAULT_MACHINE_SHAPE}" (written by build_kernel.py). For a local CPU dry run pass --devices cpu '
        f"(the full test set then takes hours)."
    )


def arch_supports(capability: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a build for `arch_list` (`sm_75`, `compute_90`, ...) runs on a card of `capability`.

    A cubin for sm_XY runs on cards of major X and minor >= Y; PTX for compute_XY is compiled for any card
    at or above X.Y.
    """
    for arch in arch_list:
        match = _ARCH.match(arch)
        if match is None:
            continue
        kind, built = match.group(1), (int(match.group(2)), int(match.group(3)))
        if built <= capability and (kind == "compute" or built[0] == capability[0]):
            return True
    return False


def incompatibility(name: str, capability: tuple[int, int], arch_list: Sequence[str]) -> str | None:
    """Why a card cannot run this torch build (None when it can): a pure function of what torch reports."""
    if arch_supports(capability, arch_list):
        return None
    major, minor = capability
    built = " ".join(arch_list) or "no CUDA architecture"
    return (
        f"{name} (compute capability {major}.{minor}, sm_{major}{minor}) cannot run this torch build: it "
        f"carries kernels for {built} only, so the first CUDA op would fail with "
        f'"no kernel image is available". {machine_shape_advice(name)}'
    )


def machine_shape_advice(name: str) -> str:
    return (
        f'Ask Kaggle for another card than the {name}: "machine_shape": "{DEFAULT_MACHINE_SHAPE}" in '
        f"kernel-metadata.json (python build_kernel.py writes it) and "
        f"`kaggle kernels push -p kernel --accelerator {DEFAULT_MACHINE_SHAPE}`."
    )


def check(devices: Sequence[torch.device]) -> None:
    """Stop before any model is loaded when a CUDA device cannot run this build or fails one small op.

    Raises:
        DeviceError: naming the card, its compute capability and the machine_shape to ask for.
    """
    for device in devices:
        if device.type != "cuda":
            continue
        name = torch.cuda.get_device_name(device)
        problem = incompatibility(name, torch.cuda.get_device_capability(device), torch.cuda.get_arch_list())
        if problem:
            raise DeviceError(f"{device}: {problem}")
        try:
            torch.ones(64, device=device).add_(1).sum().item()
        except RuntimeError as exc:
            raise DeviceError(f"{device} ({name}): a small CUDA op failed: {exc}. "
                              f"{machine_shape_advice(name)}") from exc  # fmt: skip


def describe() -> str:
    """The visible GPUs in one line, for the start-up log: names, capabilities, this build's archs."""
    if not torch.cuda.is_available():
        return "no GPU visible"
    cards = [
        f"cuda:{i} {torch.cuda.get_device_name(i)} ({'{}.{}'.format(*torch.cuda.get_device_capability(i))})"
        for i in range(torch.cuda.device_count())
    ]
    return f"{len(cards)} GPU(s): {', '.join(cards)}; torch built for {' '.join(torch.cuda.get_arch_list())}"
