"""Per-class post-processing rules: pixel threshold, component and area minimums, two image-level gates.

Probabilities are read at the resolution OOF directories store them (`formats.oof.quantise`: the nearest
multiple of 1/255), in the kernel as in `tune`, so that rules tuned on OOF predictions reproduce their Dice
exactly. The rule for one class, in order (the exact semantics shared with `tune` and the kernel):

1. one-class-per-pixel (optional): a pixel stays only in the class with the highest quantised probability
   (first class on ties, as `argmax` in numpy and torch);
2. threshold: pixel on when its quantised probability `> pixel_threshold` (float32; `Rules.cuts()`);
3. components (8-connectivity): a component is kept when its size `>= min_component`
   (one labelling pass, then a keep-table indexed by the label image);
4. area: the class is cleared when the kept area `< min_area`;
5. gates: the class is cleared when its image-level score `< gate` or its max pixel probability
   `< seg_gate` (float32; 0 = off). The image-level score is the classifier's probability, else the aux
   head's, else (no image-level output: the rule of older thresholds.json files, unchanged) the max pixel
   probability. The 1st place used both: a classifier at 0.6 and the segmenters' own "label thresholds".

Steps 1-2 are `threshold` (also done on the accelerator by the engine with the same numbers:
`postprocess.on_device`), steps 3-5 are `filter_masks` (CPU, uint8 masks). By construction
`apply(probs, rules, cls) == filter_masks(threshold(probs, rules), rules, gate_scores(probs, cls))`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steel_seg import fileio
from steel_seg.competition import CLASSES, N_CLASSES
from steel_seg.formats.oof import dequantise, quantise

THRESHOLDS_FILE = "thresholds.json"  # the rules' file name in a weights dir


@dataclass(frozen=True)
class ClassRule:
    """Rule of one class (ClassId 1..4); the defaults change nothing but the 0.5 threshold. `gate` limits the
    image-level score (classifier, else aux head, else max pixel probability), `seg_gate` the max pixel
    probability; both must clear."""

    class_id: int
    pixel_threshold: float = 0.5
    min_component: int = 0
    min_area: int = 0
    gate: float = 0.0
    seg_gate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.pixel_threshold <= 1.0:
            raise ValueError(f"class {self.class_id}: pixel_threshold {self.pixel_threshold} not in [0, 1]")
        for name in ("gate", "seg_gate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"class {self.class_id}: {name} {getattr(self, name)} not in [0, 1]")
        if self.min_component < 0 or self.min_area < 0:
            raise ValueError(f"class {self.class_id}: min_component and min_area must be >= 0")


@dataclass(frozen=True)
class Rules:
    """The four class rules (index k = ClassId k+1), the argmax switch, and provenance kept verbatim
    through load/save: a free-text `note` and the `tuning` record written by `steel-seg tune`."""

    classes: tuple[ClassRule, ...] = tuple(ClassRule(c) for c in CLASSES)
    one_class_per_pixel: bool = False
    tuning: dict[str, Any] | None = field(default=None, compare=False)
    note: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        ids = [rule.class_id for rule in self.classes]
        if ids != list(CLASSES):
            raise ValueError(f"rules must list class_id {list(CLASSES)} in order, got {ids}")

    def thresholds(self) -> np.ndarray:
        """(4,) float32 pixel thresholds."""
        return np.array([rule.pixel_threshold for rule in self.classes], dtype=np.float32)

    def cuts(self) -> np.ndarray:
        """(4,) int64: a pixel is on when its quantised value (0..255) is `> cut` (`value_cuts`)."""
        return value_cuts(self.thresholds())

    def gates(self) -> np.ndarray:
        """(2, 4) float32 limits: row 0 the image-level `gate`s, row 1 the `seg_gate`s (as `gate_scores`)."""
        return np.array([[r.gate for r in self.classes], [r.seg_gate for r in self.classes]], np.float32)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "classes": [asdict(rule) for rule in self.classes],
            "one_class_per_pixel": self.one_class_per_pixel,
        }
        if self.note is not None:
            out["note"] = self.note
        if self.tuning is not None:
            out["tuning"] = self.tuning
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rules:
        """Rules of a thresholds.json's content; ValueError naming a misspelt or unknown key (which would
        otherwise silently leave that rule at its default)."""
        _check_keys(data, RULES_KEYS, "rules")
        for c in data["classes"]:
            _check_keys(c, CLASS_RULE_KEYS, f"class {c.get('class_id', '?')}")
        classes = tuple(
            ClassRule(
                class_id=int(c["class_id"]),
                pixel_threshold=float(c.get("pixel_threshold", 0.5)),
                min_component=int(c.get("min_component", 0)),
                min_area=int(c.get("min_area", 0)),
                gate=float(c.get("gate", 0.0)),
                seg_gate=float(c.get("seg_gate", 0.0)),
            )
            for c in data["classes"]
        )
        one_class = bool(data.get("one_class_per_pixel", False))
        return cls(classes, one_class, data.get("tuning"), data.get("note"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rules:
        """Read a thresholds.json; ValueError naming the file on bad content."""
        return fileio.load_json(path, "post-processing rules", cls.from_dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the rules as JSON atomically (temp file + rename)."""
        return fileio.write_json(path, self.to_dict())


RULES_KEYS = ("classes", "one_class_per_pixel", "tuning", "note")
CLASS_RULE_KEYS = ("class_id", "pixel_threshold", "min_component", "min_area", "gate", "seg_gate")


def _check_keys(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(known)}")


def value_cuts(thresholds: Sequence[float]) -> np.ndarray:
    """(T,) int64: the largest stored value v with `v / 255 <= t` (`quantise(p) / 255 > t`: `value > cut`)."""
    probs = dequantise(np.arange(256, dtype=np.uint8))
    return np.array([np.count_nonzero(probs <= np.float32(t)) - 1 for t in thresholds], dtype=np.int64)


def threshold(probs: np.ndarray, rules: Rules) -> np.ndarray:
    """Steps 1-2: `probs: (..., 4, H, W) float32` -> `(..., 4, H, W) uint8` 0/1 masks."""
    values = quantise(np.asarray(probs, dtype=np.float32))
    masks = values > rules.cuts()[:, None, None]
    if rules.one_class_per_pixel:
        winner = values.argmax(axis=-3)
        masks &= winner[..., None, :, :] == np.arange(N_CLASSES)[:, None, None]
    return masks.view(np.uint8)


def gate_scores(probs: np.ndarray, cls: np.ndarray | None = None) -> np.ndarray:
    """The two gates' scores, `(..., 2, 4) float32`: row 0 the image-level score (`cls (..., 4)` when given,
    else the max pixel probability), row 1 the max pixel probability of `probs (..., 4, H, W)` (quantised)."""
    peak = dequantise(quantise(np.max(np.asarray(probs, dtype=np.float32), axis=(-2, -1))))
    image = peak if cls is None else np.asarray(cls, dtype=np.float32)
    return np.stack([image, peak], axis=-2)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of `mask: (H, W) uint8`: labels `(H, W) int32` (0 = background) and
    sizes `(n,) int64` indexed by label (sizes[0] = background).

    `cv2.connectedComponents` + one `bincount`: several times faster than `connectedComponentsWithStats`
    here (which also computes boxes and float centroids); see benchmarks/BENCHMARKS.md.
    """
    n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    return labels, np.bincount(labels.ravel(), minlength=n)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns spanning every on pixel of `mask: (H, W)`, or None when it is empty.

    Components never cross the box, so labelling the crop is exact and much cheaper for local defects.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def drop_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """`mask: (H, W) uint8` -> same mask without the 8-connected components smaller than `min_size`.

    One labelling pass over the mask's bounding box and a look-up table indexed by the label image
    (never a pass per component).
    """
    box = bounding_box(mask) if min_size > 1 else None
    if box is None:
        return mask
    labels, sizes = components(np.ascontiguousarray(mask[box]))
    keep = (sizes >= min_size).astype(np.uint8)
    keep[0] = 0
    out = np.zeros_like(mask)
    out[box] = keep[labels]
    return out


def filter_masks(masks: np.ndarray, rules: Rules, gate_scores: np.ndarray) -> np.ndarray:
    """Steps 3-5 on thresholded masks: `masks (4, H, W) uint8`, `gate_scores (2, 4)` -> `(4, H, W) uint8`."""
    gated = (np.asarray(gate_scores, dtype=np.float32) < rules.gates()).any(axis=0)
    out = np.zeros_like(masks, dtype=np.uint8)
    for k, rule in enumerate(rules.classes):
        if gated[k] or np.count_nonzero(masks[k]) < max(rule.min_area, 1):
            continue  # gated, or too small even before the component filter
        kept = drop_small_components(np.ascontiguousarray(masks[k], dtype=np.uint8), rule.min_component)
        if np.count_nonzero(kept) >= rule.min_area:
            out[k] = kept
    return out


def apply(probs: np.ndarray, rules: Rules, cls: np.ndarray | None = None) -> np.ndarray:
    """All rules on one image: `probs: (4, H, W) float32`, `cls: (4,)` or None -> `(4, H, W) uint8`."""
    return filter_masks(threshold(probs, rules), rules, gate_scores(probs, cls))
