"""Training data path per DataLoader worker, before and after the uint8 hand-off, in the same run.

    .venv/bin/python benchmarks/bench_data_path.py [--config configs/unet_effb3.yaml] [--samples 300] \
        [--repeats 3]

"after": `SteelDataset[(index, seed)]` exactly as the trainer builds it from the config (grey JPEG decode,
the 4 class masks from train.csv's RLE packed into one bit mask, the config's crop, its albumentations
pipeline), shipping the uint8 grey crop and the uint8 bit mask. "before" (the baseline, the path the trainer
had until issue 21): the same items turned into what the workers used to ship, the normalised float32 image
of the model's channels (`models.to_tensor`) and 4 float32 masks. Each in this process with one torch and
one OpenCV thread (what one DataLoader worker does on one core), then through a real DataLoader with ONE
worker process and the config's batch size (adds collation and the hand-off to the main process), with the
main process's CPU time per sample while it receives the batches. "to_device on the CPU": what the main
process pays for `train.data.to_device` (normalisation, channel expansion, mask unpacking) when the device is
the CPU; on a GPU that work runs there. "decode": `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` of the same
files. The four rates (before / after, in-process / DataLoader) are taken in `--repeats` rounds, alternating,
and the fastest round of each is reported: a shared machine's load moves between them. Images: the real
sample's train JPEGs (../shared/data/severstal_sample), cycled. The config's encoder weights are not loaded
(`model.encoder_weights` is set to null): normalisation costs the same with any per-channel values. Prints
one JSON line; `--gpu-images-per-s R` adds the workers a GPU training at R images/s needs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from steel_seg.formats.labels import Labels
from steel_seg.models.factory import ModelSpec, to_tensor
from steel_seg.train.augment import augment_packed, build_pipeline, pack_masks, unpack_masks
from steel_seg.train.config import TrainConfig
from steel_seg.train.data import EpochSampler, SteelDataset, choose_crop, to_device

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "severstal_sample"


class ShippedFloat(Dataset):
    """The baseline: an item of `dataset` as the workers shipped it before, float32 image of the model's
    channels (normalised in the worker) and float32 (4, h, w) masks."""

    def __init__(self, dataset: SteelDataset, spec: ModelSpec):
        self.dataset, self.spec = dataset, spec

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        item = self.dataset[key]
        masks = unpack_masks(item["mask"].numpy(), len(item["presence"]))
        image = to_tensor(item["image"].numpy()[None], self.spec)[0]
        return {**item, "image": image, "mask": torch.from_numpy(masks).float()}


def dataset(cfg: TrainConfig) -> SteelDataset:
    """The training dataset of `cfg`, as `train.data.train_loader` builds it."""
    d = cfg.data
    labels = Labels.from_csv(d.train_csv, d.images_dir)
    pipeline = build_pipeline(d.augment, cfg.train.seed)
    return SteelDataset(d.images_dir, labels.image_ids, labels, d.crop, d.defect_crop_p, pipeline)


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
    totals = dict.fromkeys(("decode_jpeg", "masks_from_rle", "crop_and_pack", "augment"), 0.0)
    for index, seed in items:
        t0 = time.perf_counter()
        grey = cv2.imread(str(ds.paths[index]), cv2.IMREAD_GRAYSCALE)
        t1 = time.perf_counter()
        masks = ds.labels.masks(ds.image_ids[index])
        t2 = time.perf_counter()
        rng = np.random.default_rng(seed)
        if ds.crop:
            (y0, x0), (h, w) = choose_crop(masks, ds.crop, ds.defect_crop_p, rng), ds.crop
            grey, masks = grey[y0 : y0 + h, x0 : x0 + w], masks[:, y0 : y0 + h, x0 : x0 + w]
        packed = pack_masks(masks)
        t3 = time.perf_counter()
        ds.pipeline.set_random_seed(int(rng.integers(2**31)))
        augment_packed(ds.pipeline, np.ascontiguousarray(grey), packed)
        t4 = time.perf_counter()
        for name, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            totals[name] += dt
    return {name: round(1000 * total / len(items), 2) for name, total in totals.items()}


def in_process(ds: Dataset, items: list) -> dict[str, float]:
    """Samples/s of `ds[key]` in this process, and its CPU ms per sample."""
    started, cpu = time.perf_counter(), time.process_time()
    for item in items:
        ds[item]
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"per_s": len(items) / wall, "cpu_ms": 1000 * cpu / len(items)}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def through_loader(ds: Dataset, items: list[tuple[int, int]], batch_size: int) -> dict[str, float]:
    """Samples/s through a DataLoader with ONE worker process and the main process's CPU ms per sample while
    it receives them (the first batch, the start-up, excluded), and the worker's CPU ms per sample over all
    of them (start-up and collation included; counted once the worker has exited)."""
    children = children_cpu_s()
    loader = DataLoader(ds, batch_size, sampler=items, num_workers=1)
    batches = iter(loader)
    next(batches)
    started, cpu, n = time.perf_counter(), time.process_time(), 0
    for batch in batches:
        n += len(batch["index"])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    del batches, loader  # the worker exits and is joined: its CPU time is in RUSAGE_CHILDREN
    worker = children_cpu_s() - children
    return {"per_s": n / wall, "main_cpu_ms": 1000 * cpu / n, "worker_cpu_ms": 1000 * worker / len(items)}


def fastest_rounds(datasets: dict[str, Dataset], items: list, batch_size: int, repeats: int) -> dict:
    """`in_process` and `through_loader` of each dataset in `repeats` rounds alternating all four (a shared
    machine's load moves between them): per dataset the fastest rate and the least CPU time of any round."""
    rounds: dict[str, list[tuple[dict, dict]]] = {name: [] for name in datasets}
    for _ in range(repeats):
        for name, ds in datasets.items():
            rounds[name].append((in_process(ds, items), through_loader(ds, items, batch_size)))
    out = {}
    for name, runs in rounds.items():
        inside, loader = (max(r[k]["per_s"] for r in runs) for k in (0, 1))
        cpu, worker, main = (min(r[k][key] for r in runs) for k, key in ((0, "cpu_ms"), (1, "worker_cpu_ms"),
                                                                         (1, "main_cpu_ms")))  # fmt: skip
        out[name] = {
            "in_process_per_s": round(inside, 1), "dataloader_1_worker_per_s": round(loader, 1),
            "dataloader_vs_in_process": round(loader / inside, 3),
            "in_process_cpu_ms_per_sample": round(cpu, 3), "worker_cpu_ms_per_sample": round(worker, 3),
            "dataloader_vs_in_process_cpu": round(cpu / worker, 3), "main_cpu_ms_per_sample": round(main, 3),
        }  # fmt: skip
    return out


def to_device_ms(ds: SteelDataset, spec: ModelSpec, items: list, batch_size: int) -> float:
    """ms per sample of `to_device` on the CPU for collated batches of `ds`."""
    loader = DataLoader(ds, batch_size, sampler=items[: 4 * batch_size], num_workers=0)
    batches = list(loader)
    started = time.perf_counter()
    for batch in batches:
        to_device(batch, spec, torch.device("cpu"))
    return round(1000 * (time.perf_counter() - started) / sum(len(b["index"]) for b in batches), 3)


def bytes_per_sample(item: dict) -> int:
    return sum(item[k].numel() * item[k].element_size() for k in ("image", "mask", "presence"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "unet_effb3.yaml")
    p.add_argument("--data", type=Path, default=SAMPLE, help="holds train.csv and train_images/")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3, help="rounds of all four measurements; fastest kept")
    p.add_argument("--gpu-images-per-s", type=float, default=None, help="a measured GPU training rate")
    args = p.parse_args()
    overrides = {"data.train_csv": str(args.data / "train.csv"), "model.encoder_weights": None,
                 "data.images_dir": str(args.data / "train_images")}  # fmt: skip
    cfg = TrainConfig.from_yaml(args.config, overrides)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    after = dataset(cfg)
    before = ShippedFloat(after, cfg.model.spec)
    items = keys(after, args.samples)
    paths = [str(after.paths[i]) for i, _ in items]
    per_second(before.__getitem__, items[: len(after)])  # warm the page cache and the pipeline
    decode = per_second(lambda path: cv2.imread(path, cv2.IMREAD_GRAYSCALE), paths)
    rates = fastest_rounds({"before": before, "after": after}, items, cfg.data.batch_size, args.repeats)
    result = {
        "config": str(args.config), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": torch.multiprocessing.cpu_count(), "samples": len(items), "images": len(after),
        "crop": list(cfg.data.crop or ()), "batch_size": cfg.data.batch_size,
        "decode_per_s": round(decode, 1),
        "bytes_per_sample": {name: bytes_per_sample(ds[items[0]]) for name, ds in (("before", before),
                                                                                    ("after", after))},
        **rates,
        "after_vs_before": {
            key: round(rates["after"][f"{key}_per_s"] / rates["before"][f"{key}_per_s"], 3)
            for key in ("in_process", "dataloader_1_worker")
        },
        "to_device_on_cpu_ms_per_sample": to_device_ms(after, cfg.model.spec, items, cfg.data.batch_size),
        "stage_ms": stage_ms(after, items),
    }  # fmt: skip
    if args.gpu_images_per_s:
        rate = min(rates["after"]["in_process_per_s"], rates["after"]["dataloader_1_worker_per_s"])
        result["workers_for_gpu"] = math.ceil(args.gpu_images_per_s / rate)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
