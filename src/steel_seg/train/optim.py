"""The optimiser and its learning-rate schedule, from the config's `optim` and `schedule` sections."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from steel_seg.train.config import OptimConfig, ScheduleConfig


def make_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to `min_ratio` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    factor = functools.partial(
        lr_factor, total=total_steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
