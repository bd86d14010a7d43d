"""Benchmark: `steel_seg.postprocess.tune` at the full train-set scale (12,568 images x 4 classes).

1. Collection rate: OOF statistics of `--rate-images` full-size (256 x 1600) synthetic images, generated on
   the fly, timed apart from the generation (the whole train set's maps never sit in memory or on disk).
2. Statistics of all `--images` images, at full size or, with `--scale s`, at (256/s) x (1600/s) with the
   defect areas divided by s^2 (cheaper maps; the per-image component counts stay comparable).
3. The grid search over those statistics: 9 pixel thresholds x 9 min components x 9 min areas x 9 gates
   per class (the default `Grid`), timed alone. Peak RSS (`resource.getrusage`) of the whole run.
4. Worker scaling (`--workers 2`): `--workers-images` full-size images written once as a real OOF dir
   (`OOFWriter` PNGs + truth.csv), then `collect_stats` over that dir in the same run: 1 worker (in this
   process) with OpenCV's own threads, 1 worker with one OpenCV thread, and each count of `--workers` (one
   OpenCV thread per worker process); wall and CPU time, PNG and RLE decoding included, `--repeats` rounds
   alternating the modes, fastest kept, the statistics asserted identical. Ratios, the parallel
   efficiency against the single-threaded worker, and a projection for `--project-cores` cores on
   `--images` images from that worker's per-image cost and the efficiency of the largest count measured.
   `--only-workers` skips steps 1-3.

Truth per image: the real per-class presence and areas of the 12,568 train images
(`train_index_full_12568.csv` of the shared sample), one ellipse per defect; probabilities: the model-like
maps of `bench_postprocess` (softened truth x confidence, plus false-positive noise blobs).

Run: .venv/bin/python benchmarks/bench_tune.py [--rate-images 200] [--scale 4] [--noisy]
     .venv/bin/python benchmarks/bench_tune.py --only-workers [--workers 2] [--workers-images 400]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from bench_postprocess import model_like_probs, synthetic_truth
from tqdm import tqdm

from steel_seg.competition import CLASSES, HEIGHT, IMAGE_SHAPE, N_CLASSES, TIDY_COLUMNS, WIDTH
from steel_seg.formats import rle
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOF, OOFWriter, dequantise, quantise, read_oof
from steel_seg.postprocess.tune import Grid, Stats, StatsCollector, collect_stats, search

INDEX = Path(__file__).resolve().parents[2] / "shared/data/severstal_sample/train_index_full_12568.csv"


def class_areas(path: Path, n: int) -> np.ndarray:
    """(n, 4) int pixel areas per class of the first n train images (0 = no defect)."""
    table = pd.read_csv(path)
    areas = table[[f"area_class_{c}" for c in CLASSES]].to_numpy(dtype=np.int64)
    return np.resize(areas, (n, N_CLASSES))


def collect(areas: np.ndarray, grid: Grid, scale: int, noisy: bool, seed: int) -> tuple[object, float, float]:
    """Statistics of len(areas) generated images; returns (stats, generation s, collection CPU s).

    CPU (process) time, not wall time: the machine is shared, and the collection is single-threaded
    apart from OpenCV's labelling."""
    rng = np.random.default_rng(seed)
    collector = StatsCollector(grid.pixel_thresholds, grid.one_class_per_pixel)
    shape = (HEIGHT // scale, WIDTH // scale)
    t_gen = t_add = 0.0
    for i, image_areas in enumerate(tqdm(areas, desc=f"stats at {shape[0]}x{shape[1]}", unit="img")):
        start = time.process_time()
        truth = synthetic_truth(rng, image_areas / scale**2, shape)
        values = quantise(model_like_probs(rng, truth, noisy))
        middle = time.process_time()
        collector.add(f"{i:09d}.jpg", values, truth, None)
        t_gen, t_add = t_gen + middle - start, t_add + time.process_time() - middle
    return collector.finish(), t_gen, t_add


def write_oof(out: Path, areas: np.ndarray, noisy: bool, seed: int) -> Path:
    """A full-size OOF dir of len(areas) generated images (PNGs, truth.csv, meta.json)."""
    rng = np.random.default_rng(seed)
    writer = OOFWriter(out, source="bench_tune", fold=0, has_cls=False)
    rows = []
    for i, image_areas in enumerate(tqdm(areas, desc="writing the OOF dir", unit="img")):
        image_id, truth = f"{i:09d}.jpg", synthetic_truth(rng, image_areas, IMAGE_SHAPE)
        writer.add(image_id, dequantise(quantise(model_like_probs(rng, truth, noisy))))
        rows += [(image_id, c, rle.encode(m)) for c, m in zip(CLASSES, truth, strict=True) if m.any()]
    return writer.close(Labels(pd.DataFrame(rows, columns=list(TIDY_COLUMNS)), writer.image_ids))


def arrays(stats: Stats) -> list[np.ndarray]:
    return [a for c in stats.classes for a in (c.truth_area, c.gate_score, *c.sizes, *c.overlaps, *c.counts)]


def same_stats(a: Stats, b: Stats) -> bool:
    pairs = zip(arrays(a), arrays(b), strict=True)
    return a.image_ids == b.image_ids and all(u.dtype == v.dtype and np.array_equal(u, v) for u, v in pairs)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_modes(oof: OOF, grid: Grid, modes: list[tuple[int, int]], repeats: int) -> list[tuple[float, float]]:
    """Per mode (workers, OpenCV threads of this process), (wall s, CPU s) of its fastest `collect_stats`
    run, rounds alternating the modes; every run's statistics asserted identical to the first."""
    best = [(float("inf"), 0.0)] * len(modes)
    reference, default_threads = None, cv2.getNumThreads()
    for _ in range(repeats):
        for i, (workers, threads) in enumerate(modes):
            cv2.setNumThreads(threads)
            start, cpu = time.perf_counter(), cpu_seconds()
            stats = collect_stats(oof, grid.pixel_thresholds, workers=workers)
            best[i] = min(best[i], (time.perf_counter() - start, cpu_seconds() - cpu))
            cv2.setNumThreads(default_threads)
            reference = stats if reference is None else reference
            assert same_stats(stats, reference), f"{workers} workers: statistics differ"
    return best


def compare_workers(args: argparse.Namespace, areas: np.ndarray, grid: Grid) -> None:
    """Step 4: the same OOF dir collected in this process (OpenCV's own threads, then one thread) and with
    each worker count of `args.workers` (one OpenCV thread per worker)."""
    counts = sorted({int(v) for v in args.workers.split(",")} - {1})
    modes = [(1, cv2.getNumThreads()), (1, 1), *((w, 1) for w in counts)]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_tune_") as tmp:
        oof = read_oof(write_oof(Path(tmp) / "oof", areas[: args.workers_images], args.noisy, seed=3))
        best = time_modes(oof, grid, modes, args.repeats)
    n, single = len(oof.image_ids), best[1][0]
    print(
        f"worker scaling, {n} full-size images of a real OOF dir, fastest of {args.repeats} rounds "
        f"(load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after); statistics identical:"
    )
    for (workers, threads), (wall, cpu) in zip(modes, best, strict=True):
        efficiency = f", efficiency {single / wall / workers:.0%}" if workers > 1 else ""
        print(
            f"  {workers} worker(s) x {threads} OpenCV thread(s): {wall:.1f} s wall ({1e3 * wall / n:.1f} "
            f"ms/img), {cpu:.1f} CPU s; {best[0][0] / wall:.2f}x of 1 worker, {single / wall:.2f}x of 1 "
            f"single-threaded worker{efficiency}"
        )
    top, top_wall = modes[-1][0], best[-1][0]
    efficiency, per_image = single / top_wall / top, single / n
    projected = args.images * per_image / (args.project_cores * efficiency)
    print(
        f"projection (not measured): {args.images} images x {1e3 * per_image:.1f} ms/img / "
        f"({args.project_cores} cores x {top}-worker efficiency {efficiency:.0%}) = {projected / 60:.1f} min"
    )


def steps_1_to_3(args: argparse.Namespace, areas: np.ndarray, grid: Grid) -> None:
    """Collection rate at full size, statistics of all images at `args.scale`, the grid search."""
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
    components = sum(s.size for c in stats.classes for s in c.sizes)
    print(
        f"statistics of {len(stats.image_ids)} images at scale 1/{args.scale}: {t_add:.1f} CPU s "
        f"collection, {components} components recorded"
    )

    start, cpu = time.perf_counter(), time.process_time()
    results = search(stats, grid)
    t_search, cpu_search = time.perf_counter() - start, time.process_time() - cpu
    for r in results:
        print(f"class {r.rule.class_id}: {r.rule}  dice {r.before:.4f} -> {r.after:.4f}")
    print(
        f"search: {t_search:.2f} s wall ({cpu_search:.2f} s CPU) for {N_CLASSES * grid.size()} grid points "
        f"over {len(stats.image_ids)} images"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=INDEX)
    parser.add_argument("--images", type=int, default=12568)
    parser.add_argument("--rate-images", type=int, default=200, help="full-size images timed for the rate")
    parser.add_argument("--scale", type=int, default=1, help="linear down-scale of the maps for step 2")
    parser.add_argument("--noisy", action="store_true", help="many small false-positive components")
    parser.add_argument("--workers", default="2", help="worker counts compared with 1 in step 4 (comma list)")
    parser.add_argument("--workers-images", type=int, default=400, help="full-size images of step 4")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of step 4 (best kept)")
    parser.add_argument("--project-cores", type=int, default=16, help="cores of step 4's projection")
    parser.add_argument("--only-workers", action="store_true", help="step 4 only")
    args = parser.parse_args()
    grid = Grid()
    areas = class_areas(args.index, args.images)
    if not args.only_workers:
        steps_1_to_3(args, areas, grid)
    compare_workers(args, areas, grid)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
