"""Mixed precision: which autocast dtype a flag means on a given device, for training and inference alike.

`auto` follows the hardware: bf16 from compute capability 8.0 (Ampere) up, fp16 below it (a T4, sm_75, has no
native bf16: `torch.cuda.is_bf16_supported()` says True there, but bf16 convolutions leave cuDNN and run
several times slower). Only CUDA autocasts; the CPU always runs float32.
"""

from __future__ import annotations

import torch

FLAGS = ("auto", "bf16", "fp16", "off")
BF16_CAPABILITY = (8, 0)


def autocast_dtype(device_type: str, capability: tuple[int, int] | None, flag: str) -> torch.dtype | None:
    """The autocast dtype of `flag` ("auto" | "bf16" | "fp16" | "off") on a device; None means float32.

    Args:
        device_type: "cuda", "cpu", ... (only "cuda" autocasts).
        capability: the CUDA compute capability `(major, minor)`, None when unknown or not CUDA.
    """
    if flag not in FLAGS:
        raise ValueError(f"amp must be one of {', '.join(FLAGS)}; got {flag!r}")
    if flag == "off" or device_type != "cuda":
        return None
    if flag == "auto":
        return torch.bfloat16 if capability is not None and capability >= BF16_CAPABILITY else torch.float16
    return torch.bfloat16 if flag == "bf16" else torch.float16


def device_capability(device: torch.device | str) -> tuple[int, int] | None:
    """The compute capability of a CUDA device, None for any other device."""
    device = torch.device(device)
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def device_autocast_dtype(device: torch.device | str, flag: str) -> torch.dtype | None:
    """`autocast_dtype` for a torch device (reads its capability)."""
    device = torch.device(device)
    return autocast_dtype(device.type, device_capability(device), flag)
