"""Training throughput (images/s) of a config: the step alone against a textbook fp32 loop, or the whole loop
with its data path at 1..N loader workers.

    .venv/bin/python benchmarks/bench_train_step.py [--config configs/demo_cpu.yaml] [--device cpu|cuda]
    .venv/bin/python benchmarks/bench_train_step.py --device cuda --config configs/unet_effb3.yaml \
        --workers 1,2,4,8 --images 256 --steps 30

Step mode (default): "ours" is the trainer's step as configured (forward under the config's AMP as
`precision` resolves it, the config's loss, optimiser step, EMA update when enabled, GradScaler for fp16),
"textbook" fp32 forward, plain BCE, backward, AdamW step; both on random input of the config's crop and batch
size (data loading excluded).

Loop mode (`--workers`): the real `Trainer` on a synthetic Severstal-like train set of `--images` JPEGs
(`synthetic.dataset`, written to a temporary folder): its DataLoader at each worker count (uint8 crops and
bit masks from the workers, `to_device` normalising on the device), `Trainer.train_batch` per batch. After
`--warmup` batches (worker start, cudnn autotuning), `--steps` batches are timed: images/s, the share of
the wall time spent waiting for the next batch (data wait), and the device's peak memory. One run of this
mode on a GPU answers how many workers keep it fed.

Both modes use random weights (the config's `encoder_weights` is not loaded: a step costs the same). Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from steel_seg.formats.runs import RunDir  # noqa: E402
from steel_seg.models.factory import build_model, forward_logits  # noqa: E402
from steel_seg.models.precision import device_dtype  # noqa: E402
from steel_seg.synthetic.dataset import write_dataset  # noqa: E402
from steel_seg.train.checkpoint import Ema  # noqa: E402
from steel_seg.train.config import TrainConfig  # noqa: E402
from steel_seg.train.distributed import init_dist  # noqa: E402
from steel_seg.train.loop import Trainer  # noqa: E402
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_run(cfg: TrainConfig, run: Path, warmup: int, steps: int) -> dict:
    """The trainer's own loop over its own loader: images/s, data-wait share and peak memory of `steps`
    batches after `warmup` batches."""
    trainer = Trainer(cfg, RunDir(run), init_dist(cfg.train.device))
    device = trainer.dist.device
    trainer.model.train()
    batches, wait, images = iter(trainer.data.loader), 0.0, 0
    for _ in range(warmup):
        trainer.train_batch(next(batches))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - asked
        trainer.train_batch(batch)
        sync(device)
        images += len(batch["index"])
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": round(images / wall, 2), "data_wait_share": round(wait / wall, 3),
            "peak_memory_gib": None if peak is None else round(peak, 2),
            "seconds": round(wall, 2)}  # fmt: skip


def loop_mode(args: argparse.Namespace) -> dict:
    """Loop mode at each worker count (see the module doc), on one synthetic train set."""
    workers = [int(w) for w in args.workers.split(",")]
    per_batch = args.batch_size or TrainConfig.from_yaml(args.config).data.batch_size
    need = (args.warmup + args.steps) * per_batch
    if need > args.images * 4 // 5:
        raise SystemExit(f"--images {args.images}: its 4 training folds hold fewer than the {need} images of "
                         "--warmup + --steps batches; give more images or fewer steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, args.images, 0, progress=False)
        sets = {"data.train_csv": str(data / "train.csv"), "data.images_dir": str(data / "train_images"),
                "data.folds_csv": None, "data.folds": "random 5", "data.batches_per_epoch": None,
                "data.batch_size": per_batch, "model.encoder_weights": None, "train.device": args.device,
                "train.progress": False, "train.checkpoint_every": 0}  # fmt: skip
        runs = {}
        for n in workers:
            cfg = TrainConfig.from_yaml(args.config, {**sets, "data.workers": n})
            runs[str(n)] = loop_run(cfg, Path(tmp) / f"run{n}", args.warmup, args.steps)
            print(f"{n} worker(s): {runs[str(n)]}", flush=True)
    amp = device_dtype(torch.device(args.device), cfg.train.amp)
    return {"amp": str(amp), "batch": per_batch, "crop": list(cfg.data.crop or (256, 1600)),
            "train_images": args.images, "workers": runs}  # fmt: skip


def step_mode(args: argparse.Namespace) -> dict:
    """Step mode (see the module doc): ours against the textbook step, data loading excluded."""
    cfg = TrainConfig.from_yaml(args.config, {"model.encoder_weights": None})
    device = torch.device(args.device)
    data = batch(cfg, device, args.batch_size or cfg.data.batch_size)
    textbook_ips = images_per_s(textbook(cfg, device), data, device, args.warmup, args.steps)
    ours_ips = images_per_s(ours(cfg, device), data, device, args.warmup, args.steps)
    return {
        "batch": len(data[0]), "crop": list(data[0].shape[-2:]),
        "amp": str(device_dtype(device, cfg.train.amp)),
        "ours_images_per_s": round(ours_ips, 2), "textbook_images_per_s": round(textbook_ips, 2),
        "ratio_ours_vs_textbook": round(ours_ips / textbook_ips, 3),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_cpu.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="default: the config's data.batch_size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--workers", help="loop mode: comma list of loader worker counts, e.g. 1,2,4,8")
    p.add_argument("--images", type=int, default=256, help="loop mode: synthetic train images")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    result = loop_mode(args) if args.workers else step_mode(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(json.dumps({"config": str(args.config), "device": name, "threads": torch.get_num_threads(),
                      "cpus": os.cpu_count(), **result}))  # fmt: skip


if __name__ == "__main__":
    main()
