"""Training-step throughput (images/s) of a config's model, against a textbook fp32 loop in the same run.

    .venv/bin/python benchmarks/bench_train_step.py [--config configs/demo_cpu.yaml] [--device cpu|cuda]

"ours": the trainer's step as configured (forward under the config's AMP as `precision` resolves it, the
config's loss, AdamW/SGD step, EMA update when enabled, GradScaler for fp16). "textbook": fp32 forward, plain
BCE, backward, step. Both on random input of the config's crop and batch size (data loading excluded), with
random weights (the config's `encoder_weights` is not loaded: the step costs the same). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from steel_seg.models.factory import build_model, forward_logits  # noqa: E402
from steel_seg.models.precision import device_dtype  # noqa: E402
from steel_seg.train.checkpoint import Ema  # noqa: E402
from steel_seg.train.config import TrainConfig  # noqa: E402
from steel_seg.train.losses import ModelLoss  # noqa: E402
from steel_seg.train.optim import make_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def batch(cfg: TrainConfig, device: torch.device, batch_size: int):
    h, w = cfg.data.crop or (256, 1600)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, cfg.model.spec.in_channels, h, w, generator=g).to(device)
    mask = (torch.rand(batch_size, cfg.model.spec.classes, h, w, generator=g) > 0.95).float().to(device)
    return x, mask, mask.flatten(2).amax(-1)


def ours(cfg: TrainConfig, device: torch.device):
    model = build_model(cfg.model.spec).to(device).train()
    optimizer, loss_fn = make_optimizer(cfg.optim, model), ModelLoss(cfg.loss).to(device)
    ema = Ema(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    dtype = device_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def step(x, mask, presence):
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            seg, cls = forward_logits(model, cfg.model.spec, x)
        seg, cls = (None if t is None else t.float() for t in (seg, cls))
        loss = loss_fn(seg, cls, mask, presence)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema:
            ema.update(model)

    return step


def textbook(cfg: TrainConfig, device: torch.device):
    model = build_model(cfg.model.spec).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), cfg.optim.lr)

    def step(x, mask, presence):
        seg, cls = forward_logits(model, cfg.model.spec, x)
        loss = F.binary_cross_entropy_with_logits(seg, mask) if seg is not None else 0.0
        loss = loss + (F.binary_cross_entropy_with_logits(cls, presence) if cls is not None else 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def images_per_s(step, data, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step(*data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(*data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(data[0]) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_cpu.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="default: the config's data.batch_size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    cfg = TrainConfig.from_yaml(args.config, {"model.encoder_weights": None})
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    data = batch(cfg, device, args.batch_size or cfg.data.batch_size)
    textbook_ips = images_per_s(textbook(cfg, device), data, device, args.warmup, args.steps)
    ours_ips = images_per_s(ours(cfg, device), data, device, args.warmup, args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(json.dumps({
        "config": str(args.config), "device": name, "threads": torch.get_num_threads(),
        "batch": len(data[0]), "crop": list(data[0].shape[-2:]),
        "amp": str(device_dtype(device, cfg.train.amp)),
        "ours_images_per_s": round(ours_ips, 2), "textbook_images_per_s": round(textbook_ips, 2),
        "ratio_ours_vs_textbook": round(ours_ips / textbook_ips, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
