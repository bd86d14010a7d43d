"""Scoring speed on a full-size test set: 5,506 images x 4 classes, truth and submission as real CSV files.

The data are generated deterministically (seed 0) with the competition's class frequencies (image shares
c1 7.1%, c2 2.0%, c3 41%, c4 6.4%, so ~86% of pairs are empty), elliptic defects whose areas are drawn from
the real per-class areas of train_index_full_12568.csv (lognormal fits when the sample is absent), and a
prediction that finds most defects with imperfect outlines, misses 15% and adds false positives on 3% of the
empty pairs. Timed: reading both files, `metric.score` on the tables, `metric.score_files` end to end, the
`steel-seg score --json` subprocess, and the textbook way (decode both masks of every pair with the loop
rle2mask and compute Dice on the arrays) in the same run.

    .venv/bin/python benchmarks/bench_score.py [--baseline-images N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from steel_seg.competition import IMAGE_SHAPE, Layout
from steel_seg.formats import metric, rle
from steel_seg.formats.labels import read_label_file
from steel_seg.formats.submission import Sample, SubmissionWriter

H, W = IMAGE_SHAPE
CLASS_SHARE = (0.071, 0.020, 0.410, 0.064)
MEDIAN_AREA = (3326, 2944, 11954, 25357)
N_IMAGES = 5506
INDEX = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "severstal_sample"
    / "train_index_full_12568.csv"
)


def class_areas(rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, a pool of defect areas (px): the real ones when the index is present."""
    if INDEX.is_file():
        index = pd.read_csv(INDEX)
        return [index[f"area_class_{c}"][index[f"area_class_{c}"] > 0].to_numpy() for c in range(1, 5)]
    return [rng.lognormal(np.log(m), 1.0, 1000).astype(int) + 100 for m in MEDIAN_AREA]


def radii_for(rng: np.random.Generator, area: float) -> np.ndarray:
    """(ry, rx) of an ellipse of about `area` px, wider than tall like most steel defects."""
    aspect = rng.uniform(1.5, 5)
    ry = float(np.clip(np.sqrt(area / (np.pi * aspect)), 4, 128))
    return np.array([ry, area / (np.pi * ry)])


def blob(rng: np.random.Generator, center, radii, ragged: float) -> np.ndarray:
    """(H, W) uint8 ellipse; `ragged` is the pixel noise on its distance field (outline roughness)."""
    mask = np.zeros((H, W), np.uint8)
    (cy, cx), (ry, rx) = center, radii
    y0, y1 = max(int(cy - ry) - 2, 0), min(int(cy + ry) + 3, H)
    x0, x1 = max(int(cx - rx) - 2, 0), min(int(cx + rx) + 3, W)
    if y0 >= y1 or x0 >= x1:
        return mask
    y, x = np.ogrid[y0:y1, x0:x1]
    field = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 + rng.normal(0, ragged, (y1 - y0, x1 - x0))
    mask[y0:y1, x0:x1] = field < 1
    return mask


def make_pair(rng: np.random.Generator, areas: np.ndarray | None, false_positive: bool) -> tuple[str, str]:
    """(truth RLE, prediction RLE) of one image-class pair; `areas` None when the truth is empty."""
    if areas is None:
        if not false_positive:
            return "", ""
        center = (rng.uniform(0, H), rng.uniform(0, W))
        return "", rle.encode(blob(rng, center, radii_for(rng, rng.uniform(200, 3000)), 0.05))
    center = np.array([rng.uniform(0, H), rng.uniform(0, W)])
    radii = radii_for(rng, rng.choice(areas))
    truth = rle.encode(blob(rng, center, radii, 0.02))
    if rng.random() < 0.15:
        return truth, ""
    shifted = center + rng.normal(0, 4, 2)
    return truth, rle.encode(blob(rng, shifted, radii * rng.uniform(0.85, 1.15, 2), 0.05))


def build(folder: Path, rng: np.random.Generator) -> tuple[Path, Path, int]:
    """truth.csv (original train layout) and submission.csv (final layout); returns the non-empty pairs."""
    image_ids = [f"{i:09x}.jpg" for i in rng.choice(16**9, N_IMAGES, replace=False)]
    truth_path, pred_path = folder / "truth.csv", folder / "submission.csv"
    n_defects = 0
    pools = class_areas(rng)
    with (
        open(truth_path, "w") as truth,
        SubmissionWriter(pred_path, Sample(Layout.FINAL, image_ids)) as writer,
    ):
        truth.write("ImageId_ClassId,EncodedPixels\n")
        for image_id in tqdm(image_ids, desc="generating", unit="image"):
            pairs = [
                make_pair(rng, pool if rng.random() < share else None, rng.random() < 0.03)
                for share, pool in zip(CLASS_SHARE, pools, strict=True)
            ]
            truth.writelines(f"{image_id}_{c},{t}\n" for c, (t, _) in enumerate(pairs, start=1))
            writer.write(image_id, [p for _, p in pairs])
            n_defects += sum(bool(t) for t, _ in pairs)
    return truth_path, pred_path, n_defects


def textbook_rle2mask(mask_rle: str) -> np.ndarray:
    """The common Kaggle kernel's loop-based decode (see bench_rle.py)."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    img = np.zeros(H * W, dtype=np.uint8)
    for lo, hi in zip(starts, starts + lengths, strict=True):
        img[lo:hi] = 1
    return img.reshape((H, W), order="F")


def textbook_score(truth, pred, image_ids) -> float:
    """Decode both masks of every pair, Dice on the arrays (the usual local-validation loop)."""
    t = dict(zip(zip(truth.ImageId, truth.ClassId, strict=True), truth.EncodedPixels, strict=True))
    p = dict(zip(zip(pred.ImageId, pred.ClassId, strict=True), pred.EncodedPixels, strict=True))
    dices = []
    for image_id in tqdm(image_ids, desc="textbook", unit="image", leave=False):
        for c in range(1, 5):
            a, b = textbook_rle2mask(p.get((image_id, c), "")), textbook_rle2mask(t.get((image_id, c), ""))
            total = a.sum() + b.sum()
            dices.append(1.0 if total == 0 else 2.0 * (a & b).sum() / total)
    return float(np.mean(dices))


def timed(func):
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-images", type=int, default=N_IMAGES, help="images for the textbook way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        truth_path, pred_path, n_defects = build(Path(tmp), np.random.default_rng(0))
        truth_mb, pred_mb = truth_path.stat().st_size / 1e6, pred_path.stat().st_size / 1e6
        (truth, pred), t_read = timed(lambda: (read_label_file(truth_path), read_label_file(pred_path)))
        result, t_score = timed(lambda: metric.score(truth.table, pred.table, truth.image_ids))
        _, t_files = timed(lambda: metric.score_files(truth_path, pred_path))
        exe = Path(sys.executable).parent / "steel-seg"
        cli = [str(exe), "score", "--truth", str(truth_path), "--pred", str(pred_path), "--json"]
        done, t_cli = timed(lambda: subprocess.run(cli, capture_output=True, text=True, check=True))
        _, t_import = timed(
            lambda: subprocess.run([sys.executable, "-c", "import steel_seg.cli as c; c.build_parser()"])
        )
        subset = truth.image_ids[: args.baseline_images]
        baseline, t_textbook = timed(lambda: textbook_score(truth.table, pred.table, subset))
    assert json.loads(done.stdout)["mean_dice"] == result.mean_dice
    if len(subset) == N_IMAGES:
        assert abs(baseline - result.mean_dice) < 1e-12, (baseline, result.mean_dice)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    sizes = f"truth.csv {truth_mb:.1f} MB, submission.csv {pred_mb:.1f} MB"
    print(
        f"{N_IMAGES} images, {result.n_pairs} pairs, {n_defects} non-empty truth pairs, {len(pred.table)} "
        f"non-empty predictions ({sizes}); mean Dice {result.mean_dice:.5f}"
    )
    print("| step | seconds |")
    print("|---|---|")
    print(f"| read + check both CSVs (`labels.read_label_file` x2) | {t_read:.2f} |")
    print(f"| `metric.score` on the tables | {t_score:.2f} |")
    print(f"| `metric.score_files` (read + score) | {t_files:.2f} |")
    print(f"| `steel-seg score --json` subprocess | {t_cli:.2f} |")
    print(f"| of which: interpreter start + `steel_seg.cli` imports (every subcommand) | {t_import:.2f} |")
    scale = N_IMAGES / len(subset)
    print(f"| textbook: decode + numpy Dice per pair, {len(subset)} images | {t_textbook:.2f} |")
    print(f"speed-up of metric.score_files over the textbook loop: {t_textbook * scale / t_files:.0f}x")


if __name__ == "__main__":
    main()
