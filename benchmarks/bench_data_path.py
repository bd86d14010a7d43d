"""Training data path per DataLoader worker: a config's sample pipeline vs bare JPEG decode, in the same run.

    .venv/bin/python benchmarks/bench_data_path.py [--config configs/unet_effb3.yaml] [--samples 300]

"pipeline": `SteelDataset[(index, seed)]` exactly as the trainer builds it from the config (grey JPEG decode,
the 4 class masks from train.csv's RLE, the config's crop, its albumentations pipeline, `models.to_tensor`),
in this process with one torch and one OpenCV thread: what one DataLoader worker does on one core. Also
split into its stages (the same calls, timed one by one). "DataLoader, 1 worker": the same dataset through a
real loader with one worker process and the config's batch size (adds collation and the transfer to the main
process). "decode": `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` of the same files. Images: the real sample's
train JPEGs (../shared/data/severstal_sample), cycled. The config's encoder weights are not loaded
(`model.encoder_weights` is set to null): normalisation costs the same with any per-channel values.
Prints one JSON line; `--gpu-images-per-s R` adds the workers a GPU training at R images/s needs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from steel_seg.formats.labels import Labels
from steel_seg.models.factory import to_tensor
from steel_seg.train.augment import augment, build_pipeline
from steel_seg.train.config import TrainConfig
from steel_seg.train.data import EpochSampler, SteelDataset, choose_crop

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "severstal_sample"


def dataset(cfg: TrainConfig) -> SteelDataset:
    """The training dataset of `cfg`, as `train.make_train_loader` builds it."""
    d = cfg.data
    labels = Labels.from_csv(d.train_csv, d.images_dir)
    pipeline = build_pipeline(d.augment, cfg.train.seed)
    spec = cfg.model.spec
    return SteelDataset(d.images_dir, labels.image_ids, labels, spec, d.crop, d.defect_crop_p, pipeline)


def keys(ds: SteelDataset, n: int) -> list[tuple[int, int]]:
    """n `(index, sample_seed)` keys as the trainer's sampler yields them, over as many epochs as needed."""
    sampler, out, epoch = EpochSampler(len(ds), seed=0), [], 0
    while len(out) < n:
        sampler.set_epoch(epoch)
        out += list(sampler)
        epoch += 1
    return out[:n]


def per_second(fn, items: list) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


def stage_ms(ds: SteelDataset, items: list[tuple[int, int]]) -> dict[str, float]:
    """Mean ms per sample of each stage of `SteelDataset.__getitem__` (same calls, timed one by one)."""
    totals = dict.fromkeys(("decode_jpeg", "masks_from_rle", "crop", "augment", "to_tensor"), 0.0)
    for index, seed in items:
        t0 = time.perf_counter()
        grey = cv2.imread(str(ds.images_dir / ds.image_ids[index]), cv2.IMREAD_GRAYSCALE)
        t1 = time.perf_counter()
        masks = ds.labels.masks(ds.image_ids[index])
        t2 = time.perf_counter()
        rng = np.random.default_rng(seed)
        if ds.crop:
            (y0, x0), (h, w) = choose_crop(masks, ds.crop, ds.defect_crop_p, rng), ds.crop
            grey, masks = grey[y0 : y0 + h, x0 : x0 + w], masks[:, y0 : y0 + h, x0 : x0 + w]
        t3 = time.perf_counter()
        ds.pipeline.set_random_seed(int(rng.integers(2**31)))
        grey, masks = augment(ds.pipeline, np.ascontiguousarray(grey), np.ascontiguousarray(masks))
        t4 = time.perf_counter()
        to_tensor(grey[None], ds.spec), torch.from_numpy(np.ascontiguousarray(masks)).float()
        t5 = time.perf_counter()
        for name, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            totals[name] += dt
    return {name: round(1000 * total / len(items), 2) for name, total in totals.items()}


def loader_per_second(ds: SteelDataset, items: list[tuple[int, int]], batch_size: int) -> float:
    """Samples/s through a DataLoader with ONE worker process (its first batch, the start-up, excluded)."""
    loader = DataLoader(ds, batch_size, sampler=items, num_workers=1)
    batches = iter(loader)
    next(batches)
    started, n = time.perf_counter(), 0
    for batch in batches:
        n += len(batch["index"])
    return n / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "unet_effb3.yaml")
    p.add_argument("--data", type=Path, default=SAMPLE, help="holds train.csv and train_images/")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--gpu-images-per-s", type=float, default=None, help="a measured GPU training rate")
    args = p.parse_args()
    overrides = {"data.train_csv": str(args.data / "train.csv"), "model.encoder_weights": None,
                 "data.images_dir": str(args.data / "train_images")}  # fmt: skip
    cfg = TrainConfig.from_yaml(args.config, overrides)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ds = dataset(cfg)
    items = keys(ds, args.samples)
    paths = [str(ds.images_dir / ds.image_ids[i]) for i, _ in items]
    per_second(ds.__getitem__, items[: len(ds)])  # warm the page cache and the pipeline
    decode = per_second(lambda path: cv2.imread(path, cv2.IMREAD_GRAYSCALE), paths)
    pipeline = per_second(ds.__getitem__, items)
    stages = stage_ms(ds, items)
    loader = loader_per_second(ds, items, cfg.data.batch_size)
    result = {
        "config": str(args.config), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": torch.multiprocessing.cpu_count(), "samples": len(items), "images": len(ds),
        "crop": list(cfg.data.crop or ()), "decode_per_s": round(decode, 1),
        "pipeline_per_s": round(pipeline, 1), "pipeline_vs_decode": round(pipeline / decode, 3),
        "dataloader_1_worker_per_s": round(loader, 1),
        "stage_ms": stages,
    }  # fmt: skip
    if args.gpu_images_per_s:
        result["workers_for_gpu"] = math.ceil(args.gpu_images_per_s / min(pipeline, loader))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
