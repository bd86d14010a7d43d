"""The optimiser and its learning-rate schedule, from the config's `optim` and `schedule` sections.

Parameters form one group, or two when `optim.encoder_lr` / `encoder_weight_decay` is set: the encoder's
(`model.encoder`, every smp model and the classifier have one) and the rest (decoder and heads), as
khornlund's RAdam runs had them (encoder lr 7e-5, decoder 3e-3; sever/main.py `_setup_param_groups`).
The schedule scales every group's own learning rate by the same factor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from steel_seg.train.config import OptimConfig, ScheduleConfig

OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "adamw": lambda groups, c: torch.optim.AdamW(groups, c.lr, weight_decay=c.weight_decay),
    "sgd": lambda groups, c: torch.optim.SGD(groups, c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    # RAdam with decoupled weight decay (p -= lr * wd * p), as the RAdam khornlund trained with applies it
    "radam": lambda groups, c: torch.optim.RAdam(
        groups, c.lr, weight_decay=c.weight_decay, decoupled_weight_decay=True
    ),
}


def param_groups(cfg: OptimConfig, model: nn.Module) -> list[dict]:
    """[the rest, the encoder] with the encoder's own lr / weight decay when the config sets one, else one
    group of every parameter. The rest comes first: its lr is the one a run logs."""
    if cfg.encoder_lr is None and cfg.encoder_weight_decay is None:
        return [{"params": list(model.parameters())}]
    encoder = list(model.encoder.parameters())
    mine = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in mine]
    lr = cfg.lr if cfg.encoder_lr is None else cfg.encoder_lr
    decay = cfg.weight_decay if cfg.encoder_weight_decay is None else cfg.encoder_weight_decay
    return [{"params": rest}, {"params": encoder, "lr": lr, "weight_decay": decay}]


def make_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](param_groups(cfg, model), cfg)


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
