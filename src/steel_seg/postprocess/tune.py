"""Exact grid search of the post-processing rules on out-of-fold (OOF) predictions.

The mean Dice decomposes by class (every class has one pair per image), so each class is tuned alone.
Pixels are touched once: for every (image, class, pixel threshold) the collector records the 8-connected
components' sizes and their overlap with the truth, plus the image's gate score and truth area. Every
(min_component, min_area, gate) combination is then scored from those numbers alone:

- for a min_component value c, per image: kept area P = sum of sizes >= c, kept overlap I = sum of their
  overlaps (two `bincount`s over all components);
- the class survives when P >= min_area and gate score >= gate; Dice = 2I / (P + T), 1 when P + T = 0,
  and (T == 0) when the class is cleared;
- so the class's Dice sum over images for all (min_area, gate) pairs is one matrix product
  `(P >= a)ᵀ · diag(delta) · (score >= g)` plus the sum of the cleared Dice.

Thresholds are applied to the stored uint8 values exactly as `postprocess` applies them to `value / 255`
(float32 comparisons), so tuned rules reproduce the reported Dice through `postprocess` + `metric`.

Collection is the slow part (a connected-component pass per image, class and threshold, plus the PNG decode):
`map_oof` spreads contiguous chunks of the images over worker processes, and `Stats.concat` joins the
chunks' statistics into exactly the arrays one collector over all images would hold.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np

from steel_seg.competition import CLASSES, IMAGE_ID, N_CLASSES
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOF, dequantise, read_oofs
from steel_seg.postprocess.rules import ClassRule, Rules, bounding_box, components, value_cuts
from steel_seg.progress import Progress
from steel_seg.workers import cap_workers, exit_with_parent

if TYPE_CHECKING:
    from steel_seg.models.recipe import Recipe

log = logging.getLogger(__name__)
DEFAULT_RULE = ClassRule(CLASSES[0])
CHUNK_IMAGES = 64  # images per chunk of `map_oof`: a progress step of a few seconds, cheap to pickle
TIE_TOLERANCE = 1e-12  # grid points within this of the best mean Dice are tied
TIE_BREAK = (
    f"among the grid points within {TIE_TOLERANCE:g} of the best score, per parameter in the order "
    "pixel_threshold, min_component, min_area, gate, seg_gate: keep the median of the distinct values still "
    "tied (the lower middle one of an even count) and only the tied points with it"
)
GATES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
R = TypeVar("R")


@dataclass(frozen=True, kw_only=True)
class Grid:
    """Values searched per class; the defaults (0.5 / 0 / 0 / 0 / 0) are always added, sorted ascending.

    `gates` limit the image-level score (classifier, else aux head), `seg_gates` the max pixel probability;
    without an image-level score the two read the same number and only `seg_gates` is searched.
    """

    pixel_thresholds: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    min_components: tuple[int, ...] = (0, 50, 100, 150, 200, 300, 400, 600, 800)
    min_areas: tuple[int, ...] = (0, 200, 400, 600, 900, 1200, 1600, 2000, 3000)
    gates: tuple[float, ...] = GATES
    seg_gates: tuple[float, ...] = GATES
    one_class_per_pixel: bool = False

    def __post_init__(self) -> None:
        d = DEFAULT_RULE
        object.__setattr__(self, "pixel_thresholds", _sorted(self.pixel_thresholds, d.pixel_threshold, float))
        object.__setattr__(self, "min_components", _sorted(self.min_components, d.min_component, int))
        object.__setattr__(self, "min_areas", _sorted(self.min_areas, d.min_area, int))
        object.__setattr__(self, "gates", _sorted(self.gates, d.gate, float))
        object.__setattr__(self, "seg_gates", _sorted(self.seg_gates, d.seg_gate, float))
        for name in ("pixel_thresholds", "gates", "seg_gates"):
            if not all(0.0 <= v <= 1.0 for v in getattr(self, name)):
                raise ValueError(f"grid {name} must lie in [0, 1]")
        if min(self.min_components) < 0 or min(self.min_areas) < 0:
            raise ValueError("grid min_components and min_areas must be >= 0")

    def size(self) -> int:
        axes = (self.pixel_thresholds, self.min_components, self.min_areas, self.gates, self.seg_gates)
        return int(np.prod([len(a) for a in axes]))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _sorted(values: Sequence, default, kind) -> tuple:
    return tuple(sorted({kind(v) for v in values} | {kind(default)}))


@dataclass
class ClassStats:
    """One class over N images. Components at threshold index t: `sizes[t]`, `overlaps[t]` ((M_t,) int32:
    pixel count, pixels also in the truth), grouped by image in order, `counts[t]` ((N,) int32) per image.
    About 8 bytes per recorded component."""

    truth_area: np.ndarray  # (N,) int64
    image_score: np.ndarray  # (N,) float32: what `gate` limits (classifier, else aux head, else max pixel)
    seg_score: np.ndarray  # (N,) float32: the max pixel probability, what `seg_gate` limits
    sizes: list[np.ndarray]
    overlaps: list[np.ndarray]
    counts: list[np.ndarray]

    @classmethod
    def concat(cls, parts: Sequence[ClassStats]) -> ClassStats:
        """The statistics of consecutive image ranges, joined in order (the same values and dtypes as one
        collector's over all their images)."""

        def join(name: str) -> list[np.ndarray]:
            return [np.concatenate([getattr(p, name)[t] for p in parts]) for t in range(len(parts[0].sizes))]

        truth_area = np.concatenate([p.truth_area for p in parts])
        image_score = np.concatenate([p.image_score for p in parts])
        seg_score = np.concatenate([p.seg_score for p in parts])
        return cls(truth_area, image_score, seg_score, join("sizes"), join("overlaps"), join("counts"))


@dataclass
class Stats:
    """What the search needs of an OOF set: thresholds (T,), image ids, one ClassStats per class, and whether
    the image-level score came from a classifier or aux head (else it is the max pixel probability)."""

    thresholds: tuple[float, ...]
    one_class_per_pixel: bool
    image_ids: list[str]
    classes: list[ClassStats]
    has_cls: bool = False

    @classmethod
    def concat(cls, parts: Sequence[Stats]) -> Stats:
        """Statistics of consecutive image chunks (e.g. `map_oof`'s), joined in order; ValueError when the
        chunks were taken at other thresholds or argmax settings, or there are none."""
        if not parts:
            raise ValueError("no statistics to join")
        first = parts[0]
        for part in parts:
            if (part.thresholds, part.one_class_per_pixel) != (first.thresholds, first.one_class_per_pixel):
                raise ValueError(
                    f"statistics taken at {part.thresholds} / one_class_per_pixel "
                    f"{part.one_class_per_pixel} cannot join {first.thresholds} / "
                    f"{first.one_class_per_pixel}"
                )
        classes = [ClassStats.concat([p.classes[k] for p in parts]) for k in range(len(first.classes))]
        image_ids = [i for p in parts for i in p.image_ids]
        has_cls = any(p.has_cls for p in parts)
        return cls(first.thresholds, first.one_class_per_pixel, image_ids, classes, has_cls)


@dataclass
class StatsCollector:
    """Accumulates `Stats` one image at a time (`add`), then `finish()`."""

    thresholds: tuple[float, ...]
    one_class_per_pixel: bool = False
    image_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cuts = value_cuts(self.thresholds)
        self._truth_area: list[np.ndarray] = []
        self._image: list[np.ndarray] = []
        self._seg: list[np.ndarray] = []
        self._has_cls = False
        n_t = len(self.thresholds)
        self._parts: list[list[list[np.ndarray]]] = [[[] for _ in range(n_t)] for _ in range(N_CLASSES)]
        self._counts: list[list[list[int]]] = [[[] for _ in range(n_t)] for _ in range(N_CLASSES)]

    def add(self, image_id: str, values: np.ndarray, truth: np.ndarray, cls: np.ndarray | None) -> None:
        """`values: (4, H, W) uint8` stored probabilities, `truth: (4, H, W) uint8`, `cls: (4,)` or None."""
        peak = dequantise(values.reshape(N_CLASSES, -1).max(axis=1))
        self._seg.append(peak)
        self._image.append(peak if cls is None else np.asarray(cls, dtype=np.float32))
        self._has_cls = cls is not None
        self._truth_area.append(np.count_nonzero(truth.reshape(N_CLASSES, -1), axis=1))
        winner = values.argmax(axis=0) if self.one_class_per_pixel else None
        for k in range(N_CLASSES):
            parts = self._class_components(values[k], truth[k], None if winner is None else winner == k)
            for t, part in enumerate(parts):
                self._counts[k][t].append(0 if part is None else part.shape[1])
                if part is not None:
                    self._parts[k][t].append(part)
        self.image_ids.append(image_id)

    def _class_components(self, values, truth, allowed) -> list[np.ndarray | None]:
        """Per threshold: (2, M) int32 sizes and truth overlaps of the components of `values > cut`
        (and `allowed`, the argmax pixels), or None without any; labelled inside the lowest cut's box."""
        lowest = values > self._cuts.min()
        box = bounding_box(lowest if allowed is None else lowest & allowed)
        if box is None:
            return [None] * len(self._cuts)
        values, truth = values[box], truth[box].astype(bool)
        allowed = None if allowed is None else allowed[box]
        return [_components(values, cut, allowed, truth) for cut in self._cuts]

    def finish(self) -> Stats:
        """The statistics of every image added (call once: the per-image pieces are freed as joined)."""
        n = len(self.image_ids)
        truth_area = np.array(self._truth_area, dtype=np.int64).reshape(n, N_CLASSES)
        image, seg = (np.array(s, dtype=np.float32).reshape(n, N_CLASSES) for s in (self._image, self._seg))
        classes = []
        for k in range(N_CLASSES):
            joined = [_join(self._parts[k][t], self._counts[k][t]) for t in range(len(self.thresholds))]
            self._parts[k] = []
            sizes, overlaps, counts = ([j[i] for j in joined] for i in range(3))
            classes.append(ClassStats(truth_area[:, k], image[:, k], seg[:, k], sizes, overlaps, counts))
        ids = list(self.image_ids)
        return Stats(tuple(self.thresholds), self.one_class_per_pixel, ids, classes, self._has_cls)


def _components(values: np.ndarray, cut: int, allowed: np.ndarray | None, truth: np.ndarray):
    """(2, M) int32 sizes and truth overlaps of the components of `values > cut` [& allowed], or None."""
    mask = values > cut
    if allowed is not None:
        mask &= allowed
    labels, sizes = components(mask.view(np.uint8))
    if sizes.size == 1:
        return None
    overlap = np.bincount(labels[truth], minlength=sizes.size) if truth.any() else 0 * sizes
    return np.stack([sizes[1:], overlap[1:]]).astype(np.int32)


def _join(parts: list[np.ndarray], counts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    both = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.int32)
    return both[0], both[1], np.array(counts, dtype=np.int32)


def subset(oof: OOF, image_ids: Sequence[str]) -> OOF:
    """The OOF restricted to `image_ids` (in that order): their PNG paths, cls rows and truth only."""
    ids = list(image_ids)
    cls = None if oof.cls is None else oof.cls.loc[ids]
    table = oof.truth.table[oof.truth.table[IMAGE_ID].isin(set(ids))]
    truth = Labels(table, sorted(ids), oof.truth.shape)
    return dataclasses.replace(
        oof, image_ids=ids, cls=cls, truth=truth, png_paths={i: oof.png_paths[i] for i in ids}
    )


def chunk_ranges(n: int, workers: int) -> list[range]:
    """Contiguous index ranges covering 0..n-1: at most CHUNK_IMAGES long, at least one per worker when
    n allows; one empty range when n == 0."""
    size = max(1, min(CHUNK_IMAGES, n // workers))
    return [range(i, min(i + size, n)) for i in range(0, n, size)] or [range(0)]


def map_oof(fn: Callable[[OOF], R], oof: OOF, workers: int, desc: str) -> list[R]:
    """`fn` of each contiguous chunk of the OOF images (`subset`s), results in image order.

    `workers == 1` runs the chunks in this process; more runs them in a pool of spawned processes (clean
    interpreters: nothing inherited from a parent that may hold torch or OpenCV threads), each reading its
    chunk's PNGs itself, with OpenCV single-threaded, and ending when this process dies (`_init_worker`).
    `workers` is capped at the usable cores and memory (`workers.cap_workers`, logged). `fn` must pickle: a
    module-level function or a `functools.partial` of one. A `Progress` counts images per finished chunk; a
    summary line follows it.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = cap_workers(workers)
    chunks = [subset(oof, oof.image_ids[r.start : r.stop]) for r in chunk_ranges(len(oof.image_ids), workers)]
    workers = min(workers, len(chunks))
    start = time.perf_counter()
    with Progress(len(oof.image_ids), f"{desc}, workers {workers}") as bar:
        results = _run_chunks(fn, chunks, workers, bar)
    seconds = time.perf_counter() - start
    rate = len(oof.image_ids) / max(seconds, 1e-9)
    log.info(
        "%s: %d images in %.1f s, %.1f images/s, workers %d", desc, len(oof.image_ids), seconds, rate, workers
    )
    return results


def _run_chunks(fn: Callable[[OOF], R], chunks: list[OOF], workers: int, bar: Progress) -> list[R]:
    if workers == 1:
        results = []
        for chunk in chunks:
            results.append(fn(chunk))
            bar.update(len(chunk.image_ids))
        return results
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=spawn, initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(fn, chunk): chunk for chunk in chunks}
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(len(futures[future].image_ids))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        return [future.result() for future in futures]


def _init_worker(parent_pid: int) -> None:
    """A `map_oof` worker: ends when its parent dies (even by SIGKILL), runs OpenCV single-threaded."""
    exit_with_parent(parent_pid)
    cv2.setNumThreads(1)


def _chunk_stats(oof: OOF, thresholds: tuple[float, ...], one_class_per_pixel: bool) -> Stats:
    """Statistics of every image of `oof`, one image in memory at a time (a `map_oof` job)."""
    collector = StatsCollector(thresholds, one_class_per_pixel)
    for image_id in oof.image_ids:
        collector.add(image_id, oof.probs_u8(image_id), oof.truth.masks(image_id), oof.cls_of(image_id))
    return collector.finish()


def collect_stats(
    oof: OOF, thresholds: Sequence[float], one_class_per_pixel: bool = False, workers: int = 1
) -> Stats:
    """Statistics of every OOF image over `workers` processes (see `map_oof`); the same for any `workers`."""
    job = partial(_chunk_stats, thresholds=tuple(thresholds), one_class_per_pixel=one_class_per_pixel)
    return Stats.concat(map_oof(job, oof, workers, "OOF statistics"))


def score_class(stats: ClassStats, thresholds: Sequence[float], grid: Grid) -> np.ndarray:
    """Mean Dice of one class for every grid point: `(T, C, A, G, S) float64`, T over `thresholds`, G over
    `grid.gates`, S over `grid.seg_gates`."""
    n = stats.truth_area.size
    truth = stats.truth_area.astype(np.float64)
    cleared = (truth == 0).astype(np.float64)
    both = _gates_ok(stats, grid)
    areas = np.array(grid.min_areas, dtype=np.float64)
    out = np.empty((len(thresholds), len(grid.min_components), areas.size, both.shape[1]))
    for t in range(len(thresholds)):
        for c, min_component in enumerate(grid.min_components):
            kept, dice = _kept_dice(stats, t, min_component, truth)
            area_ok = (kept[:, None] >= areas).astype(np.float64)
            out[t, c] = (cleared.sum() + (area_ok * (dice - cleared)[:, None]).T @ both) / n
    return out.reshape(*out.shape[:3], len(grid.gates), len(grid.seg_gates))


def _gates_ok(stats: ClassStats, grid: Grid) -> np.ndarray:
    """`(N, G * S) float64`: 1 where the image clears gate g (image score) and seg_gate s (max pixel)."""
    image = stats.image_score[:, None] >= np.array(grid.gates, dtype=np.float32)
    seg = stats.seg_score[:, None] >= np.array(grid.seg_gates, dtype=np.float32)
    return (image[:, :, None] & seg[:, None, :]).reshape(len(image), -1).astype(np.float64)


def _kept_dice(stats: ClassStats, t: int, min_component: int, truth: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per image at threshold index t: the area the component filter keeps and its Dice with the truth."""
    n = truth.size
    sizes, overlaps = stats.sizes[t], stats.overlaps[t]
    images = np.repeat(np.arange(n, dtype=np.int32), stats.counts[t])
    keep = sizes >= min_component
    kept = np.bincount(images[keep], weights=sizes[keep], minlength=n)
    hit = np.bincount(images[keep], weights=overlaps[keep], minlength=n)
    denom = kept + truth
    return kept, np.where(denom == 0, 1.0, 2.0 * hit / np.maximum(denom, 1.0))


def image_dice(stats: ClassStats, thresholds: Sequence[float], rule: ClassRule) -> np.ndarray:
    """`(N,) float64`: each image's Dice for this class under `rule` (whose threshold is one of `thresholds`):
    the per-image numbers `score_class` averages, e.g. for the Dice of one fold's images."""
    truth = stats.truth_area.astype(np.float64)
    kept, dice = _kept_dice(stats, list(thresholds).index(rule.pixel_threshold), rule.min_component, truth)
    survives = (
        (kept >= rule.min_area)
        & (stats.image_score >= np.float32(rule.gate))
        & (stats.seg_score >= np.float32(rule.seg_gate))
    )
    return np.where(survives, dice, (truth == 0).astype(np.float64))


@dataclass(frozen=True)
class ClassResult:
    rule: ClassRule
    before: float  # OOF Dice with the defaults 0.5 / 0 / 0 / 0 / 0
    after: float  # OOF Dice with `rule`


def search_class(stats: ClassStats, thresholds: Sequence[float], grid: Grid, class_id: int) -> ClassResult:
    """Best grid point of one class, ties broken by `middle_of_ties` (the rule in TIE_BREAK)."""
    scores = score_class(stats, thresholds, grid)
    t, c, a, g, s = middle_of_ties(scores >= scores.max() - TIE_TOLERANCE)
    rule = ClassRule(
        class_id,
        float(thresholds[t]),
        grid.min_components[c],
        grid.min_areas[a],
        grid.gates[g],
        grid.seg_gates[s],
    )
    d = DEFAULT_RULE
    before = scores[
        list(thresholds).index(d.pixel_threshold),
        grid.min_components.index(d.min_component),
        grid.min_areas.index(d.min_area),
        grid.gates.index(d.gate),
        grid.seg_gates.index(d.seg_gate),
    ]
    return ClassResult(rule, float(before), float(scores[t, c, a, g, s]))


def middle_of_ties(tied: np.ndarray) -> tuple[int, ...]:
    """The index of one True point of `tied` (bool, any shape), in the middle of the tied region.

    Axis by axis in order (for `score_class`: threshold, min_component, min_area, gate, seg_gate): among the
    tied points still candidates, take the distinct indices along the axis, keep the median one (the lower
    middle of an even count) and only the candidates with it. Each step keeps at least one candidate,
    the last leaves exactly one: a tied point. A box of ties gives the middle of each range; without ties,
    the one best point. ValueError when nothing is tied.
    """
    points = np.argwhere(tied)
    if points.size == 0:
        raise ValueError("no tied point to choose from")
    for axis in range(tied.ndim):
        values = np.unique(points[:, axis])
        points = points[points[:, axis] == values[(values.size - 1) // 2]]
    return tuple(int(i) for i in points[0])


def search(stats: Stats, grid: Grid) -> list[ClassResult]:
    """Tune every class on the statistics (grid thresholds must be those the statistics were taken at).

    Without a classifier or aux head both gates read the max pixel probability: only `seg_gates` is searched
    (the image-level `gate` stays 0)."""
    if tuple(grid.pixel_thresholds) != tuple(stats.thresholds):
        raise ValueError(f"statistics were taken at {stats.thresholds}, grid has {grid.pixel_thresholds}")
    grid = grid if stats.has_cls else dataclasses.replace(grid, gates=(DEFAULT_RULE.gate,))
    return [search_class(s, stats.thresholds, grid, k + 1) for k, s in enumerate(stats.classes)]


def _dice_record(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "per_class": {str(k + 1): v for k, v in enumerate(values)}}


@dataclass(frozen=True, kw_only=True)
class Origin:
    """What the tuned OOF predictions are out of: the folds.csv (sha256, fold count, the folds covered) and
    the recipe of the ensemble that made them; None where the OOF dirs did not record it."""

    folds_sha256: str | None
    n_folds: int | None
    folds: list[int]
    recipe: Recipe | None

    def to_dict(self) -> dict[str, Any]:
        folds = {"sha256": self.folds_sha256, "n_folds": self.n_folds, "tuned": self.folds}
        return {"folds": folds} | ({} if self.recipe is None else {"recipe": self.recipe.to_dict()})


def check_origin(oof: OOF, allow_partial_folds: bool = False, allow_mixed: bool = False) -> Origin:
    """The folds and recipe the OOF dirs share.

    Raises:
        ValueError naming the dirs: predictions out of different folds.csv files or recipes, or written
        without that record (older OOF dirs), unless `allow_mixed`; predictions that do not cover every fold
        of their folds.csv, unless `allow_partial_folds`.
    """
    hashes = {str(d): o.folds_sha256 for d, o in zip(oof.dirs, oof.origins, strict=True)}
    covered = _covered(oof)
    if len(set(hashes.values())) > 1 or None in hashes.values():
        if not allow_mixed:
            listed = "; ".join(f"{d}: {h[:12] + '...' if h else 'none recorded'}" for d, h in hashes.items())
            raise ValueError(
                f"the OOF dirs are not out of one folds.csv (sha256 {listed}): re-run steel-seg oof on one "
                "folds file, or pass --allow-mixed to tune on them anyway"
            )
        return Origin(folds_sha256=None, n_folds=None, folds=covered, recipe=_recipe(oof, allow_mixed))
    n_folds = oof.origins[0].n_folds
    missing = sorted(set(range(n_folds or 0)) - set(covered))
    if missing and not allow_partial_folds:
        raise ValueError(
            f"the OOF dirs cover folds {covered} of the {n_folds} in their folds.csv, not {missing} (rules "
            "tuned on part of the folds would ship with every fold's models): predict them with steel-seg "
            "oof, or pass --allow-partial-folds"
        )
    sha = next(iter(hashes.values()))
    return Origin(folds_sha256=sha, n_folds=n_folds, folds=covered, recipe=_recipe(oof, allow_mixed))


def _covered(oof: OOF) -> list[int]:
    return sorted(set(oof.image_folds.values()))


def _recipe(oof: OOF, allow_mixed: bool) -> Recipe | None:
    """The OOF dirs' recipes merged (their folds together); None when one dir records none (`allow_mixed`)."""
    # Imported here: the OOF workers import this module, and they start in seconds without the model stack.
    from steel_seg.models.recipe import Recipe

    if any(o.recipe is None for o in oof.origins):
        return None
    recipe = Recipe.from_dict(oof.origins[0].recipe)
    for directory, origin in zip(oof.dirs[1:], oof.origins[1:], strict=True):
        try:
            recipe = recipe.merge(Recipe.from_dict(origin.recipe), str(directory))
        except ValueError:
            if not allow_mixed:
                raise
            return None
    return recipe


def _dice_record(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "per_class": {str(k + 1): v for k, v in enumerate(values)}}


def fold_dice(stats: Stats, rules: Rules, image_folds: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The mean Dice under `rules` of each fold's images (`image_folds`: ImageId -> fold), with their count:
    what the kernel on that fold's images alone scores."""
    per_image = np.mean(
        [image_dice(c, stats.thresholds, r) for c, r in zip(stats.classes, rules.classes, strict=True)],
        axis=0,
    )
    folds = np.array([image_folds.get(i, -1) for i in stats.image_ids])
    return {
        str(k): {"mean": float(per_image[folds == k].mean()), "n_images": int((folds == k).sum())}
        for k in sorted(set(folds.tolist()) - {-1})
    }


def tuned_rules(results: list[ClassResult], stats: Stats, grid: Grid, oof: OOF, origin: Origin) -> Rules:
    """The chosen rules with the "tuning" record: grid, OOF dirs, n images, what each gate read, Dice before
    and after (overall, per class, per fold), the folds and the recipe they were tuned on."""
    image_score = origin.recipe.image_score if origin.recipe else "classifier or aux head"
    rules = Rules(tuple(r.rule for r in results), grid.one_class_per_pixel)
    tuning = {
        "oof_dirs": [str(d) for d in oof.dirs],
        "n_images": len(stats.image_ids),
        "gate_source": f"{image_score} probability (cls.csv)" if stats.has_cls else "max pixel probability",
        "seg_gate_source": "max pixel probability",
        "grid": grid.to_dict(),
        "tie_break": TIE_BREAK,
        "dice_before": _dice_record([r.before for r in results]),
        "dice_after": _dice_record([r.after for r in results]),
        "dice_after_per_fold": fold_dice(stats, rules, oof.image_folds),
        **origin.to_dict(),
    }
    note = "tuned by `steel-seg tune` on the OOF predictions listed in tuning.oof_dirs"
    return dataclasses.replace(rules, tuning=tuning, note=note)


def tune_oof(
    oof_dirs: Sequence[str | Path],
    grid: Grid,
    workers: int = 1,
    *,
    allow_partial_folds: bool = False,
    allow_mixed: bool = False,
) -> Rules:
    """Read the OOF dirs, check they are out of one folds file and recipe (`check_origin`), collect
    statistics over `workers` processes, search; the returned rules carry the tuning record (which does not
    depend on `workers`)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    oof = read_oofs(oof_dirs)
    origin = check_origin(oof, allow_partial_folds, allow_mixed)
    stats = collect_stats(oof, grid.pixel_thresholds, grid.one_class_per_pixel, workers)
    return tuned_rules(search(stats, grid), stats, grid, oof, origin)


def summary(rules: Rules) -> str:
    """A short table of tuned rules: the chosen rule and OOF Dice before/after per class, then the means."""
    if rules.tuning is None:
        raise ValueError("rules carry no tuning record")
    before, after = rules.tuning["dice_before"], rules.tuning["dice_after"]
    lines = ["class  threshold  min_comp  min_area  gate  seg_gate  dice_before  dice_after"]
    for r in rules.classes:
        b, a = before["per_class"][str(r.class_id)], after["per_class"][str(r.class_id)]
        lines.append(
            f"{r.class_id:>5}  {r.pixel_threshold:>9.3f}  {r.min_component:>8}  {r.min_area:>8}"
            f"  {r.gate:>4.2f}  {r.seg_gate:>8.2f}  {b:>11.5f}  {a:>10.5f}"
        )
    lines.append(
        f"mean OOF Dice {before['mean']:.5f} -> {after['mean']:.5f} on {rules.tuning['n_images']} images"
    )
    per_fold = rules.tuning.get("dice_after_per_fold", {})
    lines += [f"  fold {k}: {v['mean']:.5f} on {v['n_images']} images" for k, v in per_fold.items()]
    lines.append(f"gate reads the {rules.tuning['gate_source']}; seg_gate the max pixel probability")
    return "\n".join(lines)
