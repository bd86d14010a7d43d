"""Exploratory statistics of a train set: class counts and co-occurrence, mask areas, positions, components.

One pass over the defect rows of the tidy labels (`formats.labels`): each mask is decoded once, measured and
added to its class's position map; nothing holds more than one mask at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from steel_seg.competition import CLASS_ID, CLASSES, ENCODED_PIXELS, IMAGE_SHAPE, N_CLASSES
from steel_seg.formats import folds, rle
from steel_seg.formats.labels import Labels
from steel_seg.progress import track

HEAT_STEP = 4  # position maps are summed over HEAT_STEP x HEAT_STEP blocks: (4, 64, 400) for 256x1600


@dataclass
class EdaStats:
    """What `collect` measures.

    presence: index ImageId (every image), bool columns 1..4.
    areas / components: per ClassId, one value per non-empty mask (pixels; 8-connected components), int64.
    heat: (4, H / HEAT_STEP, W / HEAT_STEP) float32, share of the class's masks covering each block.
    """

    presence: pd.DataFrame
    areas: dict[int, np.ndarray]
    components: dict[int, np.ndarray]
    heat: np.ndarray

    def class_table(self) -> pd.DataFrame:
        """Per class: images, % of all images, mask area (median, 2nd percentile), components (median)."""
        n = len(self.presence)
        rows = {}
        for c in CLASSES:
            areas, comps = self.areas[c], self.components[c]
            rows[f"class {c}"] = {
                "images": int(self.presence[c].sum()),
                "% of images": float(100 * self.presence[c].sum() / n) if n else np.nan,
                "median area px": float(np.median(areas)) if areas.size else np.nan,
                "2nd pct area px": float(np.percentile(areas, 2)) if areas.size else np.nan,
                "median components": float(np.median(comps)) if comps.size else np.nan,
            }
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "class"
        return table

    def classes_per_image(self) -> pd.DataFrame:
        """How many images carry 0, 1, 2, ... defect classes."""
        counts = self.presence[list(CLASSES)].sum(axis=1).value_counts().sort_index()
        table = pd.DataFrame({"images": counts.astype(int)})
        table.index = [f"{k} classes" for k in counts.index]
        table.index.name = "defect classes on the image"
        return table

    def cooccurrence(self) -> np.ndarray:
        """(4, 4) int64: images with both class i+1 and class j+1 (the diagonal: images with class i+1)."""
        p = self.presence[list(CLASSES)].to_numpy(dtype=np.int64)
        return p.T @ p


def collect(labels: Labels, shape: tuple[int, int] = IMAGE_SHAPE) -> EdaStats:
    """Measure every defect mask of `labels` once (progress over the masks)."""
    areas: dict[int, list[int]] = {c: [] for c in CLASSES}
    comps: dict[int, list[int]] = {c: [] for c in CLASSES}
    heat = np.zeros((N_CLASSES, *shape), np.int32)  # summed at full size (one add a mask), reduced at the end
    table = labels.table
    rows = zip(table[CLASS_ID].tolist(), table[ENCODED_PIXELS].tolist(), strict=True)
    for class_id, encoded in track(rows, "eda: masks", total=len(table), unit="masks"):
        mask = rle.decode(encoded, shape)
        area = int(np.count_nonzero(mask))
        if area == 0:
            continue
        c = int(class_id)
        areas[c].append(area)
        comps[c].append(cv2.connectedComponents(mask, connectivity=8)[0] - 1)
        heat[c - 1] += mask
    n_masks = np.array([max(len(areas[c]), 1) for c in CLASSES], np.float64)[:, None, None]
    return EdaStats(
        presence=labels.presence(),
        areas={c: np.asarray(areas[c], np.int64) for c in CLASSES},
        components={c: np.asarray(comps[c], np.int64) for c in CLASSES},
        heat=(np.stack([block_mean(h) for h in heat]) / n_masks).astype(np.float32),
    )


def block_mean(counts: np.ndarray, step: int = HEAT_STEP) -> np.ndarray:
    """`counts: (H, W)` -> `(H / step, W / step) float64` mean over each step x step block."""
    h, w = counts.shape
    return counts.reshape(h // step, step, w // step, step).mean(axis=(1, 3), dtype=np.float64)


def sample_images(presence: pd.DataFrame, class_id: int, n: int, seed: int = 0) -> list[str]:
    """Up to `n` ImageIds that carry `class_id`, drawn without replacement by a seeded generator, sorted."""
    ids = sorted(presence.index[presence[class_id]].tolist())
    if len(ids) <= n:
        return ids
    rng = np.random.default_rng(seed + class_id)
    return sorted(rng.choice(ids, size=n, replace=False).tolist())


def multi_member(clusters: Sequence[Sequence[str]]) -> list[list[str]]:
    """The clusters with at least two images, largest first (ties by first ImageId)."""
    groups = [sorted(c) for c in clusters if len(c) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def near_duplicate_clusters(
    image_ids: Sequence[str], images_dir: str | Path, threshold: int = folds.HASH_THRESHOLD
) -> list[list[str]]:
    """Groups of near-identical images as `formats.folds` finds them (pHash within `threshold` bits).

    Returns every group of two or more images, largest first, each sorted.
    """
    hashes = folds.hash_images([Path(images_dir) / i for i in image_ids])
    cluster = folds.cluster_ids(len(hashes), folds.near_pairs(hashes, threshold))
    groups: dict[int, list[str]] = {}
    for image_id, k in zip(image_ids, cluster.tolist(), strict=True):
        groups.setdefault(k, []).append(image_id)
    return multi_member(groups.values())
