"""Mixed precision: which autocast dtype a run uses on a device, for training and inference alike.

bf16 runs natively only from compute capability 8.0 (Ampere) on. Below it (a Kaggle T4 is 7.5)
`torch.cuda.is_bf16_supported()` still answers True through emulation, and bf16 convolutions then leave
cuDNN and run several times slower, so "auto" means fp16 there (training adds a gradient scaler).
"""

from __future__ import annotations

import contextlib

import torch

AMP_FLAGS = ("auto", "bf16", "fp16", "off")
NATIVE_BF16 = (8, 0)


def autocast_dtype(device_type: str, capability: tuple[int, int] | None, flag: str) -> torch.dtype | None:
    """The autocast dtype for `flag` on a device: None (float32) on the CPU and for "off"; "auto" is bf16 from
    compute capability 8.0 on and fp16 below; "bf16"/"fp16" are taken as asked.

    Args:
        device_type: "cuda" or "cpu" (torch.device.type).
        capability: the CUDA device's (major, minor), None off CUDA.
        flag: one of AMP_FLAGS.
    """
    if flag not in AMP_FLAGS:
        raise ValueError(f"amp must be one of {', '.join(AMP_FLAGS)}; got {flag!r}")
    if flag == "off" or device_type != "cuda":
        return None
    if flag == "auto":
        return torch.bfloat16 if capability is not None and capability >= NATIVE_BF16 else torch.float16
    return torch.bfloat16 if flag == "bf16" else torch.float16


def device_dtype(device: torch.device, flag: str) -> torch.dtype | None:
    """`autocast_dtype` for a torch device, reading its compute capability."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return autocast_dtype(device.type, capability, flag)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device` (from `device_dtype`); a no-op context for None (float32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
