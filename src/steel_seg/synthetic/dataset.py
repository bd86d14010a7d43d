"""A Severstal-like synthetic data set for the demo and the tests.

Grey 1600x256 JPEGs (three identical channels, like Kaggle's) with a steel-like surface: vertical rolling
streaks and drips, grain, uneven lighting, sometimes the dark background past the strip's edge. Four kinds of
drawn defects, each clearly visible but never identical:

- class 1, pitting: a cluster of small dark pits with bright glints;
- class 2, cracks: thin, jagged, dark vertical marks;
- class 3, scratches: long bright vertical bands with striations (the commonest and largest);
- class 4, patches: large dark irregular blotches.

The masks are the exact truth: a defect's pixels are exactly the pixels its renderer altered (classes never
overlap). Which classes an image carries and how large each mask is follow the real train set's statistics
(`SyntheticStats`, shipped as `stats.json`: `scripts/synthetic_stats.py` derives it from the per-image index).
A few train images come in near-duplicate clusters (one base image, slightly shifted, re-lit and re-noised),
like the real train set's, so `formats.folds` has something to find. Deterministic by seed: the same seed
gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from steel_seg import fileio
from steel_seg.competition import (
    CLASSES,
    HEIGHT,
    IMAGE_ID,
    IMAGE_SUFFIX,
    N_CLASSES,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_CSV,
    TRAIN_IMAGES,
    TRAIN_LAYOUTS,
    WIDTH,
    Layout,
)
from steel_seg.formats import rle
from steel_seg.progress import Progress

LAYOUTS = tuple(layout.value for layout in TRAIN_LAYOUTS)  # train.csv layouts by name, as the CLI takes them
STATS_PATH = Path(__file__).with_name("stats.json")
AREA_LEVELS = (0.0, 0.02, *(round(0.05 * i, 2) for i in range(1, 20)), 0.98, 1.0)
AREA_CLIP = (0.02, 0.98)  # areas are drawn between these quantiles: no 115 px class 3 nor 368k px monsters
JPEG_QUALITY = 92
DUPLICATE_FRACTION = 0.03  # share of train images that start a near-duplicate cluster
DRAW_ORDER = (4, 3, 2, 1)  # large kinds first, so the small ones still find free room


# ----------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class SyntheticStats:
    """What the generator imitates: class co-occurrence and per-class mask areas of the real train set.

    Attributes:
        n_images: images in the source index.
        combinations: "" (defect-free), "3", "1|3", ... (ClassIds present, "|"-joined) -> image count.
        area_levels: quantile levels in [0, 1].
        area_quantiles: ClassId -> non-empty mask area (px) of that class at each level (an observed value).
        source: file name the numbers were derived from.
    """

    n_images: int
    combinations: dict[str, int]
    area_levels: tuple[float, ...]
    area_quantiles: dict[int, tuple[int, ...]]
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "n_images": self.n_images,
            "combinations": dict(self.combinations),
            "area_levels": list(self.area_levels),
            "area_quantiles": {str(c): list(q) for c, q in self.area_quantiles.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticStats:
        return cls(
            n_images=int(d["n_images"]),
            combinations={str(k): int(v) for k, v in d["combinations"].items()},
            area_levels=tuple(float(x) for x in d["area_levels"]),
            area_quantiles={int(c): tuple(int(x) for x in q) for c, q in d["area_quantiles"].items()},
            source=str(d.get("source", "")),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path = STATS_PATH) -> SyntheticStats:
        """The shipped statistics by default; ValueError naming the file when it is not valid."""
        return fileio.load_json(path, "synthetic statistics file", cls.from_dict)


@dataclass
class Sample:
    """One synthetic image and its truth: grey (256, 1600) uint8, masks (4, 256, 1600) uint8 0/1."""

    grey: np.ndarray
    masks: np.ndarray


_ROWS = np.arange(HEIGHT, dtype=np.float32)[:, None]
_COLS = np.arange(WIDTH, dtype=np.float32)[None, :]


def sample_classes(rng: np.random.Generator, stats: SyntheticStats) -> tuple[int, ...]:
    """Draw which classes one image carries, with the real co-occurrence frequencies (() = defect-free)."""
    keys = list(stats.combinations)
    p = np.array([stats.combinations[k] for k in keys], np.float64)
    key = keys[rng.choice(len(keys), p=p / p.sum())]
    return tuple(int(c) for c in key.split("|")) if key else ()


def sample_area(rng: np.random.Generator, stats: SyntheticStats, class_id: int) -> float:
    """Draw a mask area (px) from the class's real distribution, clipped to its AREA_CLIP quantiles.

    Inverse-CDF sampling, log-linear between the stored quantiles.
    """
    u = rng.uniform(*AREA_CLIP)
    log_q = np.log(np.asarray(stats.area_quantiles[class_id], np.float64))
    return float(np.exp(np.interp(u, stats.area_levels, log_q)))


def generate_image(rng: np.random.Generator, stats: SyntheticStats) -> Sample:
    """One independent synthetic image: background, then each drawn class's defect on still-free pixels."""
    grey = _background(rng)
    x0, x1 = _steel_columns(rng)
    if x1 < WIDTH:
        grey[:, x1:] = grey[:, x1:] * 0.12 + 4
    elif x0 > 0:
        grey[:, :x0] = grey[:, :x0] * 0.12 + 4
    masks = np.zeros((N_CLASSES, HEIGHT, WIDTH), np.uint8)
    free = np.zeros((HEIGHT, WIDTH), bool)
    free[:, x0:x1] = True
    for c in sorted(sample_classes(rng, stats), key=DRAW_ORDER.index):
        masks[c - 1] = _draw_defect(rng, grey, free, c, sample_area(rng, stats, c), (x0, x1))
        free &= masks[c - 1] == 0
    return Sample(np.clip(grey, 0, 255).astype(np.uint8), masks)


def near_duplicate(base: Sample, rng: np.random.Generator) -> Sample:
    """A near-duplicate of `base`: shifted a few pixels (masks with it), re-lit, with fresh sensor noise."""
    dy, dx = int(rng.integers(-1, 2)), int(rng.integers(-6, 7))
    grey = np.roll(base.grey, (dy, dx), axis=(0, 1)).astype(np.float32)
    grey = grey * rng.uniform(0.95, 1.05) + rng.uniform(-5, 5)
    grey += _grain(rng, 1.5)
    masks = np.roll(base.masks, (dy, dx), axis=(1, 2))
    return Sample(np.clip(grey, 0, 255).astype(np.uint8), masks)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Steel surface, (256, 1600) float32: grain + vertical streaks + drips + blotches + lighting + dust."""
    grey = _grain(rng, rng.uniform(3, 7))
    columns = rng.uniform(60, 135) + (np.arange(WIDTH) / WIDTH - 0.5) * rng.uniform(-25, 25)
    for scale, amp in ((2, rng.uniform(2, 5)), (12, rng.uniform(3, 8)), (80, rng.uniform(4, 12))):
        columns += _smooth_1d(rng, WIDTH, scale) * amp
    grey += columns.astype(np.float32)[None, :]
    spot_x = np.exp(-(((_COLS - rng.uniform(0, WIDTH)) / rng.uniform(250, 900)) ** 2))
    spot_y = np.exp(-(((_ROWS - rng.uniform(-HEIGHT, 2 * HEIGHT)) / rng.uniform(150, 400)) ** 2))
    grey += (spot_y * rng.uniform(10, 35)) * spot_x + (_ROWS / HEIGHT - 0.5) * rng.uniform(-20, 20)
    grey += _low_res(rng, (4, 16)) * rng.uniform(4, 10)
    grey += np.minimum(_low_res(rng, (6, 320)), 0) * rng.uniform(4, 12)
    grey += _low_res(rng, (12, 60)) * rng.uniform(2, 7)
    n_dust = int(rng.integers(30, 200))
    ys, xs = rng.integers(0, HEIGHT, n_dust), rng.integers(0, WIDTH, n_dust)
    grey[ys, xs] += rng.choice([-1.0, 1.0], n_dust) * rng.uniform(25, 60, n_dust)
    return grey


def _grain(rng: np.random.Generator, std: float) -> np.ndarray:
    """(256, 1600) float32 zero-mean uniform noise of the given std (cheaper than Gaussian, looks alike)."""
    grain = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8).astype(np.float32)
    grain -= 127.5
    grain *= std / 73.9
    return grain


def _low_res(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(256, 1600) float32 smooth noise: unit-normal noise of `size` (h, w) stretched bilinearly."""
    return cv2.resize(
        rng.standard_normal(size, dtype=np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR
    )


def _smooth_1d(rng: np.random.Generator, n: int, scale: int) -> np.ndarray:
    """(n,) float32 noise with unit std and correlation length ~`scale` samples."""
    noise = rng.standard_normal(n // scale + 4, dtype=np.float32)
    smooth = cv2.resize(noise[None, :], (n + 4 * scale, 1), interpolation=cv2.INTER_CUBIC)[0]
    start = int(rng.integers(0, 2 * scale + 1))
    out = smooth[start : start + n]
    return (out - out.mean()) / (out.std() + 1e-6)


def _steel_columns(rng: np.random.Generator) -> tuple[int, int]:
    """Columns [x0, x1) that show steel; about one image in ten ends at the strip's edge."""
    if rng.random() >= 0.1:
        return 0, WIDTH
    width = int(rng.integers(800, 1450))
    return (0, width) if rng.random() < 0.7 else (WIDTH - width, WIDTH)


# -------------------------------------------------------------------------------------------------- defects
def _draw_defect(
    rng: np.random.Generator,
    grey: np.ndarray,
    free: np.ndarray,
    class_id: int,
    area: float,
    steel: tuple[int, int],
) -> np.ndarray:
    """Draw one class's defect on free pixels of `grey` ((256, 1600) float32, in place).

    Returns:
        (256, 1600) uint8 0/1: exactly the pixels altered. A shape that lands on taken pixels is re-placed:
        up to 6 tries for 80% of `area`, then on until it has any pixel (so the drawn class is present).
    """
    shape_fn, alter_fn = _KINDS[class_id]
    best = np.zeros((HEIGHT, WIDTH), np.uint8)
    for attempt in range(100):
        mask = shape_fn(rng, area, steel)
        mask[~free] = 0
        if mask.sum() > best.sum():
            best = mask
        if best.sum() >= 0.8 * area or (attempt >= 5 and best.any()):
            break
    on = best.astype(bool)
    grey[on] = alter_fn(rng, grey, on)
    return best


def _pits(rng: np.random.Generator, area: float, steel: tuple[int, int]) -> np.ndarray:
    """Class 1 shape: a cluster of small, mostly upright ellipses."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    n = int(np.clip(round(area / rng.uniform(250, 500)), 1, 14))
    spread = rng.uniform(15, 60)
    cx, cy = _centre(rng, steel, 40), rng.uniform(30, HEIGHT - 30)
    for _ in range(n):
        elong = rng.uniform(1.0, 2.5)
        minor = math.sqrt(area / n / (math.pi * elong))
        axes = (max(1, round(minor)), max(1, round(minor * elong)))
        centre = (
            round(cx + rng.normal(0, spread)),
            round(float(np.clip(cy + rng.normal(0, spread), 0, HEIGHT))),
        )
        cv2.ellipse(mask, centre, axes, rng.uniform(-25, 25), 0, 360, 1, -1)
    return mask


def _cracks(rng: np.random.Generator, area: float, steel: tuple[int, int]) -> np.ndarray:
    """Class 2 shape: one to three thin jagged vertical polylines."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    length = rng.uniform(130, HEIGHT)
    n = int(np.clip(round(area / (length * rng.uniform(6, 14))), 1, 3))
    thickness = int(np.clip(round(area / (n * length)), 2, 20))
    for _ in range(n):
        y0 = rng.uniform(0, HEIGHT - length)
        ys = np.linspace(y0, y0 + length, 24)
        xs = _centre(rng, steel, 20) + np.cumsum(rng.normal(0, 2.0, ys.size))
        points = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
        cv2.polylines(mask, [points], False, 1, thickness)
    return mask


def _bands(rng: np.random.Generator, area: float, steel: tuple[int, int]) -> np.ndarray:
    """Class 3 shape: long vertical bands with ragged, slightly slanted edges (several for large areas)."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    length = HEIGHT if rng.random() < 0.75 else rng.uniform(0.4, 1.0) * HEIGHT
    n = int(np.clip(math.ceil(area / (length * 110)), 1, 6))
    width = area / (n * length)
    for _ in range(n):
        y0 = rng.uniform(0, HEIGHT - length)
        ys = np.linspace(y0, y0 + length, 17)
        left = _centre(rng, steel, width) + np.linspace(0, rng.uniform(-25, 25), ys.size)
        left += np.cumsum(rng.normal(0, max(0.5, width * 0.04), ys.size))
        right = left + width * rng.uniform(0.85, 1.15, ys.size)
        outline = np.concatenate([np.stack([left, ys], 1), np.stack([right, ys], 1)[::-1]])
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
    return mask


def _patch(rng: np.random.Generator, area: float, steel: tuple[int, int]) -> np.ndarray:
    """Class 4 shape: an irregular blob, thresholded smooth noise under a radial fall-off."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    h = int(np.clip(math.sqrt(area * 1.8) * rng.uniform(0.8, 1.2), 24, HEIGHT))
    w = int(np.clip(area * 1.8 / h, 24, min(1000, steel[1] - steel[0])))
    noise = rng.standard_normal((max(2, h // 24), max(2, w // 24)), dtype=np.float32)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    ry = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * 2
    rx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * 2
    field -= 2.5 * (rx**2 + ry**2)
    fill = min(0.95, area / (h * w))
    blob = (field > np.quantile(field, 1 - fill)).astype(np.uint8)
    y0 = int(rng.integers(0, HEIGHT - h + 1))
    x0 = int(np.clip(_centre(rng, steel, w) - w / 2, steel[0], steel[1] - w))
    mask[y0 : y0 + h, x0 : x0 + w] = blob
    return mask


def _centre(rng: np.random.Generator, steel: tuple[int, int], margin: float) -> float:
    """A random column inside the steel part, `margin` px from its edges where it fits."""
    lo, hi = steel[0] + margin, steel[1] - margin
    return float(rng.uniform(lo, hi)) if hi > lo else (steel[0] + steel[1]) / 2


def _dark_pits(rng: np.random.Generator, grey: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Class 1 look: darkened by ~45%, with bright glints on ~12% of the pit pixels."""
    values = grey[on] * rng.uniform(0.45, 0.65)
    glint = rng.random(values.size) < 0.12
    return values + glint * rng.uniform(70, 110)


def _dark_crack(rng: np.random.Generator, grey: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Class 2 look: a deep dark line with a little roughness."""
    return grey[on] * rng.uniform(0.3, 0.5) + rng.normal(0, 4, int(on.sum()))


def _bright_scratch(rng: np.random.Generator, grey: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Class 3 look: brighter by 35-60 grey levels, with vertical striations (a per-column pattern)."""
    striation = _smooth_1d(rng, WIDTH, 3) * rng.uniform(8, 18)
    columns = np.nonzero(on)[1]
    return grey[on] + rng.uniform(35, 60) + striation[columns]


def _dark_patch(rng: np.random.Generator, grey: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Class 4 look: darkened to ~40-55% with a rough, blotchy texture."""
    return grey[on] * rng.uniform(0.4, 0.55) + _low_res(rng, (32, 200))[on] * 6


_KINDS: dict[int, tuple[Callable, Callable]] = {
    1: (_pits, _dark_pits),
    2: (_cracks, _dark_crack),
    3: (_bands, _bright_scratch),
    4: (_patch, _dark_patch),
}


# ------------------------------------------------------------------------------------------------- data set
@dataclass
class SyntheticSet:
    """What `write_dataset` wrote: ImageIds (sorted), near-duplicate clusters, per-class image counts."""

    out_dir: Path
    train_ids: list[str]
    test_ids: list[str]
    clusters: list[list[str]]
    class_counts: dict[int, int] = field(default_factory=dict)
    n_defect_free: int = 0

    def summary(self) -> str:
        per_class = "/".join(str(self.class_counts.get(c, 0)) for c in CLASSES)
        in_clusters = sum(len(c) for c in self.clusters)
        return (
            f"{len(self.train_ids)} train images ({self.n_defect_free} defect-free; "
            f"images per class 1/2/3/4: {per_class}; "
            f"{len(self.clusters)} near-duplicate clusters, {in_clusters} images) + "
            f"{len(self.test_ids)} test images in {self.out_dir}"
        )


def image_ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct Kaggle-like ImageIds: 9 lower-case hex digits + ".jpg"."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.update(f"{v:09x}{IMAGE_SUFFIX}" for v in rng.integers(0, 16**9, n - len(ids)).tolist())
    return sorted(ids)


def plan_units(rng: np.random.Generator, n: int, duplicates: bool) -> list[int]:
    """Split n images into units: 1 = an independent image, 2-4 = a near-duplicate cluster's size."""
    n_clusters = max(1, round(n * DUPLICATE_FRACTION)) if duplicates and n >= 8 else 0
    sizes = [int(rng.integers(2, 5)) for _ in range(n_clusters)]
    units = sizes + [1] * (n - sum(sizes))
    rng.shuffle(units)
    return units


def iter_samples(
    units: list[int], seed_seq: np.random.SeedSequence, stats: SyntheticStats
) -> Iterator[tuple[int, Sample]]:
    """(unit index, sample) for every image; a unit's images share a base. One child seed per unit."""
    for u, (size, child) in enumerate(zip(units, seed_seq.spawn(len(units)), strict=True)):
        rng = np.random.default_rng(child)
        base = generate_image(rng, stats)
        yield u, base
        for _ in range(size - 1):
            yield u, near_duplicate(base, rng)


def write_dataset(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    layout: str = Layout.RERELEASE.value,
    seed: int = 0,
    stats: SyntheticStats | None = None,
    progress: bool = True,
) -> SyntheticSet:
    """Write a synthetic Severstal data set into `out_dir`.

    Files: `train_images/*.jpg`, `test_images/*.jpg`, `train.csv` in `layout` ("original":
    `ImageId_ClassId,EncodedPixels`, 4 rows an image; "rerelease": `ImageId,ClassId,EncodedPixels`, defect
    rows only), `sample_submission.csv` in the matching layout (stage 1 / final), `test_truth.csv`
    (re-release layout), `near_duplicates.csv` (`ImageId,group`) and `synthetic.json` (the parameters).

    Raises:
        ValueError when `layout` is unknown, or an images folder already holds JPEGs of another set.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    train_layout = Layout(layout)
    stats = stats or SyntheticStats.load()
    out = Path(out_dir)
    seeds = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(seeds[0])
    ids = image_ids(rng, n_train + n_test)
    rng.shuffle(ids)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    train_units = plan_units(rng, n_train, duplicates=True)
    _check_folder(out / TRAIN_IMAGES, train_ids)
    _check_folder(out / TEST_IMAGES, test_ids)
    with Progress(n_train + n_test, "synth", bar=progress) as bar:
        train_rles, groups = _write_images(
            out / TRAIN_IMAGES, train_ids, iter_samples(train_units, seeds[1], stats), bar
        )
        test_rles, _ = _write_images(
            out / TEST_IMAGES, test_ids, iter_samples([1] * n_test, seeds[2], stats), bar
        )
    _write_train_csv(out / TRAIN_CSV, train_rles, train_layout)
    _write_sample_submission(out / SAMPLE_SUBMISSION, test_ids, train_layout)
    _write_train_csv(out / "test_truth.csv", test_rles, Layout.RERELEASE)
    clusters = _write_groups(out / "near_duplicates.csv", groups)
    (out / "synthetic.json").write_text(
        json.dumps(
            {
                "n_train": n_train,
                "n_test": n_test,
                "layout": layout,
                "seed": seed,
                "jpeg_quality": JPEG_QUALITY,
                "stats_source": stats.source,
            },
            indent=1,
        )
        + "\n"
    )
    return SyntheticSet(
        out_dir=out,
        train_ids=sorted(train_ids),
        test_ids=sorted(test_ids),
        clusters=clusters,
        class_counts={c: sum(bool(r[c - 1]) for r in train_rles.values()) for c in CLASSES},
        n_defect_free=sum(not any(r) for r in train_rles.values()),
    )


def _check_folder(folder: Path, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    foreign = sorted({p.name for p in folder.glob(f"*{IMAGE_SUFFIX}")} - set(ids))
    if foreign:
        raise ValueError(
            f"{folder}: holds {len(foreign)} JPEG(s) of another data set (e.g. {foreign[0]}); "
            "write into an empty folder"
        )


def _write_images(
    folder: Path, ids: list[str], samples: Iterator[tuple[int, Sample]], bar: Progress
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Encode each sample as a 3-channel JPEG; returns ImageId -> 4 RLEs and ImageId -> unit index."""
    rles: dict[str, list[str]] = {}
    units: dict[str, int] = {}
    for image_id, (unit, sample) in zip(ids, samples, strict=True):
        ok, data = cv2.imencode(
            IMAGE_SUFFIX, cv2.merge([sample.grey] * 3), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise ValueError(f"{folder / image_id}: JPEG encoding failed")
        (folder / image_id).write_bytes(data.tobytes())
        rles[image_id] = rle.encode_many(sample.masks)
        units[image_id] = unit
        bar.update()
    return rles, units


def _write_train_csv(path: Path, rles: dict[str, list[str]], layout: Layout) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(layout.columns)
        if layout is Layout.ORIGINAL:
            writer.writerows([f"{i}_{c}", rles[i][c - 1]] for i in sorted(rles) for c in CLASSES)
        else:
            writer.writerows([i, c, rles[i][c - 1]] for i in sorted(rles) for c in CLASSES if rles[i][c - 1])


def _write_sample_submission(path: Path, ids: list[str], train_layout: Layout) -> None:
    """Kaggle's sample of the same vintage: stage 1 (ORIGINAL) for an original train.csv, else FINAL."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if train_layout is Layout.ORIGINAL:
            writer.writerow(Layout.ORIGINAL.columns)
            writer.writerows([f"{i}_{c}", "1 1"] for i in sorted(ids) for c in CLASSES)
        else:
            writer.writerow(Layout.FINAL.columns)
            writer.writerows([i, f"1 {HEIGHT * WIDTH}", 0] for i in sorted(ids))


def _write_groups(path: Path, units: dict[str, int]) -> list[list[str]]:
    """Write the near-duplicate clusters (`ImageId,group`, group numbered 0..); returns them, sorted."""
    by_unit: dict[int, list[str]] = {}
    for image_id, unit in units.items():
        by_unit.setdefault(unit, []).append(image_id)
    clusters = sorted(sorted(ids) for ids in by_unit.values() if len(ids) > 1)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([IMAGE_ID, "group"])
        writer.writerows([i, g] for g, ids in enumerate(clusters) for i in ids)
    return clusters
