"""Report building blocks on the real sample: contour drawing, EDA statistics, the evaluation pass.

- `draw_contours` (one erosion per class: inner boundary band) vs the textbook `cv2.findContours` +
  `cv2.drawContours` per class, same images, same run;
- `eda.collect` (decode each defect row once) vs the textbook loop over every image's four masks (same
  measurements: area, components, position sum);
- `evaluate.collect` per image with the default 9 curve thresholds vs only the rules' own threshold
  (what the Dice curves cost), on an OOF folder written from the real masks plus noise.

Each timing is the best of `--repeats`. Needs ../shared/data/severstal_sample.

    .venv/bin/python benchmarks/bench_report.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from steel_seg.formats.images import read_grey
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter, read_oofs
from steel_seg.postprocess.rules import Rules
from steel_seg.report import eda, evaluate
from steel_seg.report.overlay import CLASS_COLOURS, draw_contours, grey_to_rgb

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal_sample"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def textbook_contours(grey: np.ndarray, masks: np.ndarray, thickness: int = 2) -> np.ndarray:
    rgb = grey_to_rgb(grey)
    for k, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, CLASS_COLOURS[k + 1], thickness)
    return rgb


def textbook_eda(labels: Labels) -> None:
    """The same measurements (area, components, position sum) over every image's four masks."""
    heat = np.zeros((4, 256, 1600), np.int32)
    for image_id in labels.image_ids:
        for k, mask in enumerate(labels.masks(image_id)):
            if mask.any():
                np.count_nonzero(mask)
                cv2.connectedComponents(mask, connectivity=8)
                heat[k] += mask


def noisy_oof(labels: Labels, out: Path) -> Path:
    rng = np.random.default_rng(0)
    writer = OOFWriter(out, source="bench", fold=0, has_cls=False)
    for image_id in labels.image_ids:
        truth = labels.masks(image_id).astype(np.float32)
        probs = np.stack([cv2.GaussianBlur(m, (0, 0), 6) for m in truth]) * 0.9
        probs = np.clip(probs + rng.uniform(0, 0.3, probs.shape), 0, 1).astype(np.float32)
        writer.add(image_id, probs)
    return writer.close(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    labels = Labels.from_csv(SAMPLE / "train.csv", SAMPLE / "train_images")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    images = [(read_grey(SAMPLE / "train_images" / i), labels.masks(i)) for i in labels.image_ids]
    ours = best(lambda: [draw_contours(g, m) for g, m in images], repeats) / len(images)
    book = best(lambda: [textbook_contours(g, m) for g, m in images], repeats) / len(images)
    print(
        f"contours, {len(images)} images: ours {ours * 1e3:.2f} ms/image, findContours+drawContours "
        f"{book * 1e3:.2f} ms/image, ratio {book / ours:.2f}x"
    )
    ours = best(lambda: eda.collect(labels), repeats)
    book = best(lambda: textbook_eda(labels), repeats)
    print(
        f"EDA statistics, {len(labels.image_ids)} images / {len(labels.table)} masks: "
        f"ours {ours * 1e3:.0f} ms, "
        f"per-image 4-mask loop {book * 1e3:.0f} ms, ratio {book / ours:.2f}x"
    )
    with tempfile.TemporaryDirectory() as tmp:
        oof = read_oofs([noisy_oof(labels, Path(tmp) / "oof")])
        n = len(oof.image_ids)
        curves = best(lambda: evaluate.collect(oof, Rules()), repeats) / n
        bare = best(lambda: evaluate.collect(oof, Rules(), ()), repeats) / n
        print(
            f"evaluation pass, {n} images: {curves * 1e3:.0f} ms/image with "
            f"{len(evaluate.CURVE_THRESHOLDS)} curve thresholds, "
            f"{bare * 1e3:.0f} ms/image with the rules' only"
        )


if __name__ == "__main__":
    main()
