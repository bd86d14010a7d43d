"""Training state on disk and the weight EMA.

`checkpoint.pt` holds only tensors, numbers, strings and containers of them, so it loads with
`torch.load(weights_only=True)` (no arbitrary pickle). It is written to a temp file and moved into place, so a
kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steel_seg import fileio


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically (temp file in the same dir + os.replace), after checking that its
    file system has room for its tensors (`fileio.DiskFullError` otherwise: the last checkpoint stays)."""
    fileio.write_with(path, lambda tmp: torch.save(state, tmp), size=tensor_bytes(state))


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list/tuple (what a checkpoint of it needs, less its headers)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_state` (weights_only); ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read checkpoint: {exc}") from exc


class Ema:
    """Exponential moving average of a model's weights; buffers (BatchNorm statistics) are copied.

    The decay ramps up as `min(decay, (1 + n) / (10 + n))` over the first updates, so early weights fade fast.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
