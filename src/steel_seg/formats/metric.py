"""The competition metric: mean Dice over every (ImageId, ClassId) pair, with breakdowns.

Dice = 2|X∩Y| / (|X| + |Y|) per pair, 1 when prediction X and truth Y are both empty; the score is the mean
over all pairs of the given images and classes 1..4 (a pair absent from a table is empty).

`score` never decodes a mask: areas are sums of run lengths and each intersection comes from the two run
lists (one sweep over the run starts and ends of all pairs at once).

Which images count in `score_files`: the truth file's images (the original layout lists the defect-free ones
too); a re-release truth lists defect rows only, so there the union of truth and prediction images counts
(pass the images folder to check a submission's coverage fully); an images folder, when given, defines the
set instead (its *.jpg names). A prediction that does not match that set is refused unless `subset`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from steel_seg.competition import (
    CLASS_ID,
    CLASSES,
    ENCODED_PIXELS,
    IMAGE_ID,
    IMAGE_SHAPE,
    IMAGE_SUFFIX,
    N_CLASSES,
    Layout,
)
from steel_seg.formats import rle
from steel_seg.formats.labels import read_label_file


@dataclass(frozen=True)
class Breakdown:
    """Mean Dice over a subset of pairs (None where the subset is empty), overall and per class."""

    n_pairs: int
    mean_dice: float | None
    per_class: dict[int, float | None]
    n_per_class: dict[int, int]

    def to_dict(self) -> dict:
        return {
            "n_pairs": self.n_pairs,
            "mean_dice": self.mean_dice,
            "per_class": {str(c): v for c, v in self.per_class.items()},
            "n_per_class": {str(c): n for c, n in self.n_per_class.items()},
        }


@dataclass(frozen=True)
class Score:
    """The competition score of a prediction against the truth.

    Attributes:
        mean_dice: mean over all n_pairs = 4 x n_images pairs (the leaderboard number).
        per_class: mean Dice of each class over the images.
        empty_truth, nonempty_truth: the same restricted to pairs whose truth is empty / has a defect.
        pairs: one row per pair: ImageId, ClassId, truth_area, pred_area, intersection, dice.
    """

    mean_dice: float
    per_class: dict[int, float]
    n_pairs: int
    n_images: int
    empty_truth: Breakdown
    nonempty_truth: Breakdown
    pairs: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-pair rows); class keys are strings "1".."4"."""
        return {
            "mean_dice": self.mean_dice,
            "per_class": {str(c): v for c, v in self.per_class.items()},
            "n_pairs": self.n_pairs,
            "n_images": self.n_images,
            "empty_truth": self.empty_truth.to_dict(),
            "nonempty_truth": self.nonempty_truth.to_dict(),
        }


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice of one pair of masks (same shape, non-zero = on); 1.0 when both are empty."""
    if pred_mask.shape != true_mask.shape:
        raise ValueError(
            f"dice: prediction shape {pred_mask.shape} differs from truth shape {true_mask.shape}"
        )
    pred, true = pred_mask != 0, true_mask != 0
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(true))
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(pred & true) / total


def score(
    truth: pd.DataFrame, pred: pd.DataFrame, image_ids: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE
) -> Score:
    """Mean Dice of `pred` against `truth` over every (image, class) pair of `image_ids` x classes 1..4.

    Args:
        truth, pred: tidy tables (ImageId, ClassId 1..4, EncodedPixels); rows of other images are ignored,
            an (image, class) pair given twice is a ValueError.
        image_ids: the images that count (each once).
        shape: (H, W) of the masks.
    """
    image_ids = list(dict.fromkeys(image_ids))
    if not image_ids:
        raise ValueError("score: no images to score")
    position = pd.Series(np.arange(len(image_ids)), index=pd.Index(image_ids, dtype=object))
    n_pairs = len(image_ids) * N_CLASSES
    true_runs = _pair_runs(truth, position, n_pairs, shape, "truth")
    pred_runs = _pair_runs(pred, position, n_pairs, shape, "prediction")
    true_area = _areas(true_runs, n_pairs)
    pred_area = _areas(pred_runs, n_pairs)
    inter = _intersections(true_runs, pred_runs, n_pairs, shape[0] * shape[1])
    total = true_area + pred_area
    pair_dice = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    pairs = pd.DataFrame(
        {
            IMAGE_ID: np.repeat(np.array(image_ids, dtype=object), N_CLASSES),
            CLASS_ID: np.tile(np.array(CLASSES), len(image_ids)),
            "truth_area": true_area,
            "pred_area": pred_area,
            "intersection": inter,
            "dice": pair_dice,
        }
    )
    return _summarise(pairs, len(image_ids))


def score_files(
    truth_path: str | Path,
    pred_path: str | Path,
    images_dir: str | Path | None = None,
    shape: tuple[int, int] = IMAGE_SHAPE,
    subset: bool = False,
    only: Collection[str] | None = None,
) -> Score:
    """Score two CSVs of any label/submission layouts over the images the module docstring says.

    A prediction that does not match them is refused (ValueError with counts and examples): image ids without
    `.jpg`, images that are not scored, scored images left out by a prediction that lists every image (the
    original layout, or one with empty rows), a truth naming images outside `images_dir`. `subset=True`
    scores the images both sides know instead; `only` keeps only those of the scored images (the images a
    run did predict).
    """
    truth = read_label_file(truth_path, shape)
    pred = read_label_file(pred_path, shape, class_zero=True)
    predicted = set(pred.image_ids)
    every_image = pred.layout is Layout.ORIGINAL or predicted != set(pred.table[IMAGE_ID])
    if images_dir is not None:
        image_ids = image_files(images_dir)
    elif truth.layout is Layout.RERELEASE:
        image_ids = sorted(set(truth.image_ids) | predicted)
    else:
        image_ids = truth.image_ids
    problems = _set_problems(set(image_ids), set(truth.image_ids), predicted, every_image)
    if problems and not subset:
        raise ValueError(
            f"{pred_path} vs {truth_path}: " + "; ".join(problems) + " (--subset scores the overlap)"
        )
    if subset and every_image:
        image_ids = [i for i in image_ids if i in predicted]
    if only is not None:
        keep = set(only)
        image_ids = [i for i in image_ids if i in keep]
    return score(truth.table, pred.table, image_ids, shape)


def _set_problems(scored: set[str], truth: set[str], pred: set[str], every_image: bool) -> list[str]:
    """What is wrong between the scored images and those each file names, with counts and examples."""
    found = [
        (
            f"the prediction has {{n}} image id(s) without {IMAGE_SUFFIX}",
            {i for i in pred if not i.endswith(IMAGE_SUFFIX)},
        ),
        ("the prediction names {n} image(s) that are not scored", pred - scored),
        ("the truth names {n} image(s) that are not scored", truth - scored),
        ("the prediction has no rows for {n} of the scored images", scored - pred if every_image else set()),
    ]
    return [f"{text.format(n=len(ids))}, e.g. {sorted(ids)[:3]}" for text, ids in found if ids]


def image_files(images_dir: str | Path) -> list[str]:
    """Sorted *.jpg names of a folder; ValueError naming it when it is not a folder or holds none."""
    images_dir = Path(images_dir)
    names = sorted(p.name for p in images_dir.glob(f"*{IMAGE_SUFFIX}")) if images_dir.is_dir() else []
    if not names:
        raise ValueError(f"{images_dir}: not a folder of *.jpg images")
    return names


def _pair_runs(table: pd.DataFrame, position: pd.Series, n_pairs: int, shape, name: str):
    """(pair, starts, lengths) of every run of the table's rows within the images; pairs sorted ascending.

    pair = image position x 4 + class index; starts are 0-based column-major within the pair's mask.
    A missing (NaN) EncodedPixels is an empty mask.
    """
    encoded = table[ENCODED_PIXELS].fillna("").astype(str)
    rows = table.assign(**{ENCODED_PIXELS: encoded})[
        table[IMAGE_ID].isin(position.index) & (encoded.str.strip() != "")
    ]
    classes = rows[CLASS_ID].astype(np.int64).to_numpy()
    if np.any((classes < 1) | (classes > N_CLASSES)):
        raise ValueError(
            f"{name}: ClassId {sorted(set(classes) - set(CLASSES))} outside {CLASSES[0]}..{CLASSES[-1]}"
        )
    pair = position.loc[rows[IMAGE_ID].to_numpy()].to_numpy() * N_CLASSES + classes - 1
    if len(np.unique(pair)) < len(pair):
        twice = rows[pd.Series(pair).duplicated(keep=False).to_numpy()]
        raise ValueError(
            f"{name}: (image, class) pairs given more than once: {twice.iloc[:4, :2].values.tolist()}"
        )
    rows = rows.iloc[np.argsort(pair, kind="stable")]
    parsed = rle.parse_many(rows[ENCODED_PIXELS].tolist(), shape)
    if parsed.problems:
        k = min(parsed.problems)
        image_id, class_id = rows[IMAGE_ID].iloc[k], rows[CLASS_ID].iloc[k]
        raise ValueError(f"{name}: {image_id} class {class_id}: {parsed.problems[k]}")
    return np.sort(pair)[parsed.owner], parsed.starts, parsed.lengths


def _areas(runs, n_pairs: int) -> np.ndarray:
    pair, _, lengths = runs
    return np.bincount(pair, weights=lengths, minlength=n_pairs).astype(np.int64)


def _intersections(true_runs, pred_runs, n_pairs: int, n_pixels: int) -> np.ndarray:
    """|X∩Y| of every pair, from the run lists on one axis (pair x n_pixels + pixel).

    With the prediction's runs sorted and disjoint, the number of predicted pixels below any position x is
    `covered[j] - max(0, end[j-1] - x)` where j runs start below x; each truth run's overlap is that count at
    its end minus at its start (two binary searches per truth run, no mask, no sort).
    """
    true_pair, true_start, true_length = true_runs
    pred_pair, pred_start, pred_length = pred_runs
    pred_lo = pred_pair * n_pixels + pred_start
    pred_hi = pred_lo + pred_length
    covered = np.concatenate(([0], np.cumsum(pred_length)))

    def predicted_below(x: np.ndarray) -> np.ndarray:
        j = np.searchsorted(pred_lo, x)
        overhang = np.maximum(pred_hi[j - 1] - x, 0) if pred_hi.size else np.zeros_like(x)
        return covered[j] - np.where(j > 0, overhang, 0)

    true_lo = true_pair * n_pixels + true_start
    overlap = predicted_below(true_lo + true_length) - predicted_below(true_lo)
    return np.bincount(true_pair, weights=overlap, minlength=n_pairs).astype(np.int64)


def _summarise(pairs: pd.DataFrame, n_images: int) -> Score:
    empty = pairs["truth_area"] == 0
    return Score(
        mean_dice=float(pairs["dice"].mean()),
        per_class=_class_means(pairs),
        n_pairs=len(pairs),
        n_images=n_images,
        empty_truth=_breakdown(pairs[empty]),
        nonempty_truth=_breakdown(pairs[~empty]),
        pairs=pairs,
    )


def _class_means(pairs: pd.DataFrame) -> dict[int, float | None]:
    means = pairs.groupby(CLASS_ID)["dice"].mean()
    return {c: float(means[c]) if c in means.index else None for c in CLASSES}


def _breakdown(pairs: pd.DataFrame) -> Breakdown:
    counts = pairs[CLASS_ID].value_counts()
    return Breakdown(
        n_pairs=len(pairs),
        mean_dice=float(pairs["dice"].mean()) if len(pairs) else None,
        per_class=_class_means(pairs),
        n_per_class={c: int(counts.get(c, 0)) for c in CLASSES},
    )
