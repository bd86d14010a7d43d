"""Benchmark: `steel_seg.tune` at the full train-set scale (12,568 images x 4 classes).

1. Collection rate: OOF statistics of `--rate-images` full-size (256 x 1600) synthetic images, generated on
   the fly, timed apart from the generation (the whole train set's maps never sit in memory or on disk).
2. Statistics of all `--images` images, at full size or, with `--scale s`, at (256/s) x (1600/s) with the
   defect areas divided by s^2 (cheaper maps; the per-image component counts stay comparable).
3. The grid search over those statistics: 9 pixel thresholds x 9 min components x 9 min areas x 9 gates
   per class (the default `Grid`), timed alone. Peak RSS (`resource.getrusage`) of the whole run.

Truth per image: the real per-class presence and areas of the 12,568 train images
(`train_index_full_12568.csv` of the shared sample), one ellipse per defect; probabilities: the model-like
maps of `bench_postprocess` (softened truth x confidence, plus false-positive noise blobs).

Run: .venv/bin/python benchmarks/bench_tune.py [--rate-images 200] [--scale 4] [--noisy]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_postprocess import model_like_probs, synthetic_truth
from tqdm import tqdm

from steel_seg.oof import quantise
from steel_seg.tune import Grid, StatsCollector, search

INDEX = Path(__file__).resolve().parents[2] / "shared/data/severstal_sample/train_index_full_12568.csv"


def class_areas(path: Path, n: int) -> np.ndarray:
    """(n, 4) int pixel areas per class of the first n train images (0 = no defect)."""
    table = pd.read_csv(path)
    areas = table[[f"area_class_{k}" for k in range(1, 5)]].to_numpy(dtype=np.int64)
    return np.resize(areas, (n, 4))


def collect(areas: np.ndarray, grid: Grid, scale: int, noisy: bool, seed: int) -> tuple[object, float, float]:
    """Statistics of len(areas) generated images; returns (stats, generation s, collection CPU s).

    CPU (process) time, not wall time: the machine is shared, and the collection is single-threaded
    apart from OpenCV's labelling."""
    rng = np.random.default_rng(seed)
    collector = StatsCollector(grid.pixel_thresholds, grid.one_class_per_pixel)
    shape = (256 // scale, 1600 // scale)
    t_gen = t_add = 0.0
    for i, image_areas in enumerate(tqdm(areas, desc=f"stats at {shape[0]}x{shape[1]}", unit="img")):
        start = time.process_time()
        truth = synthetic_truth(rng, image_areas / scale**2, shape)
        values = quantise(model_like_probs(rng, truth, noisy))
        middle = time.process_time()
        collector.add(f"{i:09d}.jpg", values, truth, None)
        t_gen, t_add = t_gen + middle - start, t_add + time.process_time() - middle
    return collector.finish(), t_gen, t_add


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=INDEX)
    parser.add_argument("--images", type=int, default=12568)
    parser.add_argument("--rate-images", type=int, default=200, help="full-size images timed for the rate")
    parser.add_argument("--scale", type=int, default=1, help="linear down-scale of the maps for step 2")
    parser.add_argument("--noisy", action="store_true", help="many small false-positive components")
    args = parser.parse_args()
    grid = Grid()
    areas = class_areas(args.index, args.images)
    print(
        f"grid {len(grid.pixel_thresholds)}x{len(grid.min_components)}x{len(grid.min_areas)}x"
        f"{len(grid.gates)} = {grid.size()} points per class; maps {'noisy' if args.noisy else 'clean'}"
    )

    _, t_gen, t_add = collect(areas[: args.rate_images], grid, 1, args.noisy, seed=1)
    rate = args.rate_images / t_add
    print(
        f"full-size collection: {rate:.1f} img/s CPU ({1e3 / rate:.1f} ms/img; generation {t_gen:.1f} s "
        f"apart) "
        f"-> {args.images / rate / 60:.1f} min extrapolated for {args.images} images"
    )

    stats, _, t_add = collect(areas, grid, args.scale, args.noisy, seed=2)
    components = sum(c.n_components() for c in stats.classes)
    print(
        f"statistics of {len(stats.image_ids)} images at scale 1/{args.scale}: {t_add:.1f} CPU s "
        f"collection, {components} components recorded"
    )

    start, cpu = time.perf_counter(), time.process_time()
    results = search(stats, grid)
    t_search, cpu_search = time.perf_counter() - start, time.process_time() - cpu
    for k, r in enumerate(results):
        print(f"class {k + 1}: {r.rule}  dice {r.before:.4f} -> {r.after:.4f}")
    print(
        f"search: {t_search:.2f} s wall ({cpu_search:.2f} s CPU) for {4 * grid.size()} grid points over "
        f"{len(stats.image_ids)} images"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
