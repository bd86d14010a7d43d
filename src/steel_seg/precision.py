"""Mixed precision: which autocast dtype a run uses on a device."""

from __future__ import annotations

import contextlib

import torch


def autocast_context(device: torch.device, amp: str):
    """`torch.autocast` for CUDA with `amp` "bf16" or "fp16"; a no-op context for "off" and on the CPU."""
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
