"""The engine's dispatch on two devices, before and after issue 20, in the same run.

Before: batch k went to device k mod D with one batch in flight per device, so the slower device set the
pace and a device idled while the main thread took its result back. After (the engine as it is): the next
batch goes to whichever device has room, two queued per device, handed back in order. The old dispatch lives
here only, as `RoundRobinRunner` (the product has none). The third part of the change, no wait for the
device between models in `Ensemble.forward`, has nothing to show on a CPU (its ops are synchronous); it is
measured only on a GPU.

Workloads, each `predict_submission` (real JPEG decode, on-device threshold, component filtering, RLE, CSV)
on `--images` copies of the real sample's JPEGs (synthetic ones without ../shared), `--devices cpu,cpu`:
1. a real tiny smp Unet (tu-mobilenetv3_small_050, depth 3, random init): both "devices" share the CPU;
2. "GPU-like" devices: a real module that sleeps per batch (a sleep releases the GIL as CUDA work does),
   equal speeds;
3. the same with the second device twice as slow (mixed or throttled cards).
Old and new alternate, `--runs` times each; the medians and their ratio are printed, and both outputs are
checked to be byte-identical. Run: `.venv/bin/python benchmarks/bench_dispatch.py [--runs 3]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from steel_seg.engine import predict
from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.runner import PredictSettings, Runner
from steel_seg.models import factory
from steel_seg.postprocess.rules import ClassRule, Rules

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "severstal_sample" / "train_images"
RULES = Rules(tuple(ClassRule(k, 0.5, 150, 600) for k in range(1, 5)))
TINY = factory.ModelSpec(
    arch="Unet", encoder="tu-mobilenetv3_small_050", encoder_depth=3, decoder_channels=(8, 8, 8)
)


class RoundRobinRunner(Runner):
    """The dispatch before issue 20: batch k to device k mod D, one in flight per device, in order."""

    def _run(self, feed, workers, finish):
        inflight: deque = deque()
        last = time.perf_counter()
        for k in itertools.count():
            slot = k % len(workers)
            item = self._next(feed, slot, 0)
            if item is None:
                break
            inflight.append(workers[slot].submit(self._predict, slot, dict(self.plan), item, finish))
            if len(inflight) == len(workers):
                done = inflight.popleft().result()
                last = self._account(done, last)
                yield done.batch
        for future in inflight:
            done = future.result()
            last = self._account(done, last)
            yield done.batch


class SleepingDevice(nn.Module):
    """A real 1x1 convolution that sleeps `seconds[slot]` per batch on device slot `slot`'s thread."""

    def __init__(self, seconds: tuple[float, float]):
        super().__init__()
        self.seconds = seconds
        self.head = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = threading.current_thread().name  # "replica-<slot>-<device>"
        time.sleep(self.seconds[int(name.split("-")[1]) if name.startswith("replica-") else 0])
        return self.head(x)


def test_set(root: Path, n: int) -> tuple[Path, Path]:
    images = root / "test_images"
    images.mkdir(parents=True)
    sources = sorted(SAMPLE.glob("*.jpg")) if SAMPLE.is_dir() else []
    if not sources:
        rng = np.random.default_rng(0)
        for i in range(4):
            cv2.imwrite(str(images / f"src{i}.jpg"), rng.integers(0, 255, (256, 1600), dtype=np.uint8))
        sources = sorted(images.glob("src*.jpg"))
    ids = [f"{i:04d}.jpg" for i in range(n)]
    for i, image_id in enumerate(ids):
        shutil.copy(sources[i % len(sources)], images / image_id)
    sample = root / "sample_submission.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 409600,0\n" for i in ids))
    return images, sample


def timed(runner_class, ensemble, images, sample, out, settings) -> float:
    predict.Runner = runner_class  # the benchmark's one switch between the two dispatches
    try:
        start = time.perf_counter()
        predict.predict_submission(ensemble, RULES, images, sample, out, settings)
        return time.perf_counter() - start
    finally:
        predict.Runner = Runner


def compare(name: str, ensemble: Ensemble, images: Path, sample: Path, root: Path, n: int, runs: int) -> dict:
    settings = PredictSettings(
        device="cpu,cpu", batch_size=4, workers=1, progress=False, budget_s=float("inf")
    )
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(runs):
        for label, runner_class in (("old", RoundRobinRunner), ("new", Runner)):
            out = root / f"{label}.csv"
            seconds[label].append(timed(runner_class, ensemble, images, sample, out, settings))
    identical = (root / "old.csv").read_bytes() == (root / "new.csv").read_bytes()
    old, new = statistics.median(seconds["old"]), statistics.median(seconds["new"])
    result = {
        "workload": name,
        "old_images_per_s": n / old,
        "new_images_per_s": n / new,
        "ratio": old / new,
        "old_s": seconds["old"],
        "new_s": seconds["new"],
        "identical_output": identical,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.3, help="seconds per batch of the GPU-like device")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_dispatch_"))
    images, sample = test_set(root, args.images)
    torch.manual_seed(0)
    tiny = Ensemble([Member("tiny", "seg", factory.build_model(TINY).eval(), TINY)])
    sleep = args.sleep
    workloads = {
        "tiny smp Unet, cpu,cpu (both share the CPU)": tiny,
        f"GPU-like devices, {sleep:g} s a batch each": Ensemble(
            [Member("gpu", "seg", SleepingDevice((sleep, sleep)), TINY)]
        ),
        f"GPU-like devices, {sleep:g} s and {2 * sleep:g} s a batch": Ensemble(
            [Member("gpu", "seg", SleepingDevice((sleep, 2 * sleep)), TINY)]
        ),
    }
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    results = [compare(n, e, images, sample, root, args.images, args.runs) for n, e in workloads.items()]
    print("\n| workload | old: k mod D, 1 in flight | new: free device, 2 in flight | new / old |")
    print("|---|---|---|---|")
    for r in results:
        same = "" if r["identical_output"] else " (outputs differ!)"
        print(f"| {r['workload']} | {r['old_images_per_s']:.2f} images/s | {r['new_images_per_s']:.2f} "
              f"images/s | {r['ratio']:.2f}x{same} |")  # fmt: skip
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
