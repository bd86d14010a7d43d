"""RLE encode/decode throughput: steel_seg.formats.rle against the textbook Kaggle kernel functions, same run.

Mask kinds: the 13 real masks of the sample (when present), synthetic defect-like blobs, noisy prediction-like
masks (ragged edges, speckles: what a thresholded network output looks like before post-processing), empty
masks, full masks. Each timing is the best of several repeats; the ratio is textbook time / ours.

    .venv/bin/python benchmarks/bench_rle.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from steel_seg.competition import IMAGE_SHAPE
from steel_seg.formats import rle

H, W = IMAGE_SHAPE
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal_sample" / "train_new_format.csv"


def textbook_encode(img: np.ndarray) -> str:
    """The common Kaggle kernel's mask2rle."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def textbook_decode(mask_rle: str, shape=(H, W)) -> np.ndarray:
    """The common Kaggle kernel's loop-based rle2mask (returns a Fortran-ordered view)."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


def real_masks() -> list[np.ndarray]:
    if not SAMPLE.is_file():
        return []
    return [textbook_decode(e).copy() for e in pd.read_csv(SAMPLE).EncodedPixels]


def blob_masks(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """1-3 ellipses each, sizes like Severstal defects (hundreds to tens of thousands of pixels)."""
    y, x = np.ogrid[:H, :W]
    masks = []
    for _ in range(n):
        mask = np.zeros((H, W), np.uint8)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            ry, rx = rng.uniform(8, 90), rng.uniform(10, 300)
            mask |= (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1).astype(np.uint8)
        masks.append(mask)
    return masks


def noisy_masks(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A smooth random field plus pixel noise, thresholded to cover about 3-10% of the image."""
    masks = []
    for _ in range(n):
        field = cv2.resize(rng.random((16, 100), np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
        field += rng.normal(0, 0.08, (H, W)).astype(np.float32)
        masks.append((field > np.quantile(field, 1 - rng.uniform(0.03, 0.1))).astype(np.uint8))
    return masks


def best_times(funcs, items, repeats: int) -> list[float]:
    """Best over `repeats` of the mean seconds per item, for each function; the functions take turns within
    each repeat, so a burst of load from other processes hits both sides alike."""
    best = [float("inf")] * len(funcs)
    for _ in range(repeats):
        for k, func in enumerate(funcs):
            start = time.perf_counter()
            for item in items:
                func(item)
            best[k] = min(best[k], (time.perf_counter() - start) / len(items))
    return best


def textbook_decode_c(mask_rle: str) -> np.ndarray:
    """The textbook decode made C-contiguous: the fair baseline for a C-ordered result."""
    return np.ascontiguousarray(textbook_decode(mask_rle))


def bench_kind(name: str, masks: list[np.ndarray], repeats: int) -> dict:
    encoded = [textbook_encode(m) for m in masks]
    for mask, text in zip(masks, encoded, strict=True):
        assert rle.encode(mask) == text, f"{name}: encode differs from the textbook"
        assert np.array_equal(rle.decode(text), mask), f"{name}: decode differs"
    enc = best_times([textbook_encode, rle.encode], masks, repeats)
    dec = best_times([textbook_decode, textbook_decode_c, rle.decode], encoded, repeats)
    runs = np.mean([len(t.split()) // 2 for t in encoded])
    return {"kind": name, "n": len(masks), "runs": float(runs), "enc": enc, "dec": dec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    kinds = {
        "real (sample)": real_masks(),
        "blobs": blob_masks(40, rng),
        "noisy prediction": noisy_masks(20, rng),
        "empty": [np.zeros((H, W), np.uint8)] * 40,
        "full": [np.ones((H, W), np.uint8)] * 10,
    }
    rows = [bench_kind(name, masks, args.repeats) for name, masks in kinds.items() if masks]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}"
    print(f"{machine}, best of {args.repeats}, µs per mask")
    print()
    print("| masks | n | mean runs | encode: textbook | ours | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        (tb, ours) = r["enc"]
        print(f"| {r['kind']} | {r['n']} | {r['runs']:.0f} | {_us(tb)} | {_us(ours)} | {tb / ours:.1f}x |")
    print()
    print("| masks | textbook (F view) | textbook + copy to C | ours (C) | vs F view | vs C copy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        tb_f, tb_c, ours = r["dec"]
        times = f"{_us(tb_f)} | {_us(tb_c)} | {_us(ours)}"
        print(f"| {r['kind']} | {times} | {tb_f / ours:.1f}x | {tb_c / ours:.1f}x |")


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


if __name__ == "__main__":
    main()
