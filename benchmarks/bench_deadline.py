"""The hard deadline on the CPU: how far past `--budget-s` a run that cannot finish in time really ends.

1. Engine, sleeping model: `predict_submission` with a real nn.Module that sleeps `--sleep` s per image (so a
   batch has a known cost) on `--images` flat JPEGs, `--budget-s` far below the need, on one CPU "device" and
   on two (`cpu,cpu`). Overshoot = (end of predict + `submission.validate`) - budget, counted from the start
   the budget counts from.
2. The built kernel (`bundle.build`, a real tiny smp Unet, random init) as a subprocess on `--kernel-images`
   copies of the real sample's JPEGs (synthetic ones without ../shared), `--devices cpu --batch-size 4`.
   Overshoot = the process's wall time - budget (includes the interpreter's start, before the script's clock).
   The kernel's start-up (imports, checks) is printed too: the deadline cannot cut it, and on a loaded
   machine it can take longer than a small budget.

Each is run `--runs` times; the median and the range are printed.
Run: `.venv/bin/python benchmarks/bench_deadline.py [--runs 5]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from steel_seg import bundle
from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.predict import predict_submission
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import submission
from steel_seg.models import factory
from steel_seg.models.manifest import write_manifest
from steel_seg.postprocess.rules import ClassRule, Rules

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "severstal_sample" / "train_images"
RULES = Rules(tuple(ClassRule(k, 0.5, 150, 600) for k in range(1, 5)))
TINY = factory.ModelSpec(
    arch="Unet", encoder="tu-mobilenetv3_small_050", encoder_depth=3, decoder_channels=(8, 8, 8)
)


class SleepingSegmenter(nn.Module):
    """A real module that sleeps `seconds` per image, then a 1x1 convolution: a model of known cost."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.head = nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds * x.shape[0])
        return self.head(x)


def write_images(folder: Path, n: int) -> list[str]:
    """`n` JPEGs (the real sample cycled, else mid-grey) and a final-layout sample_submission.csv beside."""
    folder.mkdir(parents=True)
    sources = sorted(SAMPLE.glob("*.jpg"))
    if not sources:
        cv2.imwrite(str(folder.parent / "grey.jpg"), np.full((256, 1600), 128, np.uint8))
        sources = [folder.parent / "grey.jpg"]
    ids = [f"{i:05d}.jpg" for i in range(n)]
    for i, image_id in enumerate(ids):
        shutil.copy(sources[i % len(sources)], folder / image_id)
    rows = "".join(f"{i},1 409600,0\n" for i in ids)
    (folder.parent / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n" + rows)
    return ids


def engine_overshoot(root: Path, devices: str, budget_s: float, sleep_s: float) -> tuple[float, int]:
    """One run of the engine with the sleeping model: (seconds past the budget, images cut)."""
    ensemble = Ensemble([Member("sleepy", "seg", SleepingSegmenter(sleep_s), TINY)])
    sample, out = root / "sample_submission.csv", root / f"sub-{devices}.csv"
    start = time.perf_counter()
    settings = PredictSettings(
        device=devices, batch_size=4, workers=1, budget_s=budget_s, budget_start=start, progress=False
    )
    summary = predict_submission(ensemble, RULES, root / "test_images", sample, out, settings)
    problems = submission.validate(out, sample)
    overshoot = time.perf_counter() - start - budget_s
    if problems or not summary.cut:
        raise SystemExit(f"engine run did not end as expected: cut {summary.cut}, problems {problems[:3]}")
    return overshoot, summary.cut


def build_kernel(root: Path) -> tuple[Path, Path]:
    """A weights dir with the tiny real model, and the kernel built from it."""
    torch.manual_seed(0)
    weights = root / "weights"
    factory.save(factory.build_model(TINY), TINY, weights / "tiny")
    write_manifest(weights, ["tiny"], tta=("none",))
    RULES.save(weights / "thresholds.json")
    script = bundle.build(weights, root / "kernel", ROOT / "kernel" / "bootstrap.py.tmpl").script
    return weights, script


def kernel_overshoot(root: Path, weights: Path, script: Path, budget_s: float) -> tuple[float, int]:
    """One run of the built kernel: (process wall seconds past the budget, images cut); prints start-up."""
    out = root / "kernel-sub.csv"
    command = [sys.executable, str(script), "--data-dir", str(root), "--weights-dir", str(weights), "--out",
               str(out), "--devices", "cpu", "--batch-size", "4", "--budget-s", str(budget_s)]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    overshoot = time.perf_counter() - start - budget_s
    log = result.stdout + result.stderr
    if result.returncode != 0 or submission.validate(out, root / "sample_submission.csv"):
        raise SystemExit(f"kernel run failed (exit {result.returncode}):\n{log[-3000:]}")
    cut = re.search(r"DEADLINE: (\d+) of \d+ images were not reached", log)
    startup = re.search(r"start-up checks passed in ([\d.]+)s", log)
    startup_s = startup.group(1) if startup else "?"
    print(f"  kernel start-up {startup_s}s, overshoot {overshoot:.2f}s", flush=True)
    return overshoot, int(cut.group(1)) if cut else 0


def report(name: str, runs: list[tuple[float, int]]) -> dict:
    overshoots = [o for o, _ in runs]
    row = {
        "what": name,
        "median_overshoot_s": round(statistics.median(overshoots), 2),
        "min_s": round(min(overshoots), 2),
        "max_s": round(max(overshoots), 2),
        "runs": [round(o, 2) for o in overshoots],
        "images_cut": [c for _, c in runs],
    }
    print(json.dumps(row), flush=True)
    return row


def engine_runs(args: argparse.Namespace, root: Path) -> None:
    write_images(root / "test_images", args.images)
    for devices in ("cpu", "cpu,cpu"):
        runs = [engine_overshoot(root, devices, args.budget_s, args.sleep) for _ in range(args.runs)]
        what = f"engine, sleeping model {args.sleep}s/image, batch 4, --devices {devices}"
        report(f"{what}, budget {args.budget_s:g}s, {args.images} images", runs)


def kernel_runs(args: argparse.Namespace, root: Path) -> None:
    write_images(root / "test_images", args.kernel_images)
    weights, script = build_kernel(root)
    runs = [kernel_overshoot(root, weights, script, args.kernel_budget_s) for _ in range(args.runs)]
    what = "built kernel, tiny smp Unet, --devices cpu --batch-size 4"
    report(f"{what}, budget {args.kernel_budget_s:g}s, {args.kernel_images} images", runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--images", type=int, default=80, help="images for the engine runs")
    p.add_argument("--sleep", type=float, default=0.3, help="seconds per image of the sleeping model")
    p.add_argument("--budget-s", type=float, default=5.0, help="budget of the engine runs")
    p.add_argument("--kernel-images", type=int, default=200)
    p.add_argument("--kernel-budget-s", type=float, default=40.0)
    args = p.parse_args()
    torch.set_num_threads(2)
    print(f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        engine_runs(args, Path(tmp) / "engine")
        kernel_runs(args, Path(tmp) / "kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
