"""Pseudo-labels: the kernel's ensemble and rules on unlabelled images; the images it is sure of are labels.

The 1st place's last step: label the test images with the ensemble, keep the confident ones, train again on
train + those. The ensemble of a weights dir is loaded with the kernel's checks (`Ensemble.load`), run
through the engine (`predict.iter_probs`: the kernel's batching and TTA) and post-processed with the kernel's
rules (`apply`). An image is selected when every class is sure:

- no defect: its gate score (`gate_scores`) is <= `negative`, and the rules left no mask;
- defect: its gate score is >= `positive`, the rules left a mask, and the mean ensemble probability over
  that mask's pixels is >= `min_pixel_confidence`; the mask becomes the label.

Anything else leaves the image out, with the reason: a gate in between, a positive gate whose mask the rules
cleared, a mask of low pixel confidence, a mask under a negative gate, or (for an image that would be
selected) a file that does not read at the competition's size, as training would read it. Gates and limits
are compared in float32, as `postprocess` compares its gates.

Outputs (`write_outputs`): `train.csv` in the original layout (4 rows per selected image, empty = no
defect: the selection is explicit), `selection.csv` (every image: gate scores, mask areas and confidences,
selected or why not) and `summary.json`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from steel_seg import fileio
from steel_seg.competition import CLASSES, IMAGE_ID, TRAIN_CSV, Layout
from steel_seg.engine.ensemble import Ensemble
from steel_seg.engine.predict import iter_probs
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import metric, rle
from steel_seg.formats.images import ImageError, read_grey
from steel_seg.models.manifest import MANIFEST_FILE, Manifest
from steel_seg.postprocess.rules import THRESHOLDS_FILE, Rules, apply, gate_scores
from steel_seg.progress import Progress

# A class's verdict: sure (DEFECT, CLEAN), or why it is not.
DEFECT, CLEAN = "defect", "no defect"
UNCERTAIN = "uncertain gate"
CLEARED = "positive gate, no mask"
LOW_CONFIDENCE = "low pixel confidence"
CONTRADICTED = "negative gate, mask"
UNREADABLE = "unreadable image"  # an image-level reason
SURE = (DEFECT, CLEAN)
SELECTION_CSV, SUMMARY_JSON = "selection.csv", "summary.json"
# What `--overwrite` may replace: a folder of these three files only, summary.json (written last) among them.
ROUND = fileio.Output(
    "a pseudo-label round", frozenset({TRAIN_CSV, SELECTION_CSV, SUMMARY_JSON}), SUMMARY_JSON
)


@dataclass(frozen=True)
class Confidence:
    """When a class counts as sure (the module docstring); the defaults are argued in the README."""

    positive: float = 0.9
    negative: float = 0.1
    min_pixel_confidence: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative < self.positive <= 1.0:
            raise ValueError(f"need 0 <= negative < positive <= 1, got {self.negative} and {self.positive}")
        if not 0.0 <= self.min_pixel_confidence <= 1.0:
            raise ValueError(f"min_pixel_confidence {self.min_pixel_confidence} is not in [0, 1]")


def mask_confidence(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean probability over each class's mask: `probs (4, H, W) float`, `masks (4, H, W) uint8` ->
    `(4,) float32`, NaN where a mask is empty."""
    on = masks.reshape(len(masks), -1) != 0
    sums = np.where(on, probs.reshape(len(probs), -1), 0.0).sum(axis=1, dtype=np.float64)
    counts = on.sum(axis=1)
    mean = np.divide(sums, counts, out=np.full(len(counts), np.nan), where=counts > 0)
    return mean.astype(np.float32)


def class_verdict(gate: float, area: int, confidence: float, limits: Confidence) -> str:
    """One class's verdict from its gate score, its post-processed mask's area and mean probability."""
    gate32 = np.float32(gate)
    if gate32 <= np.float32(limits.negative):
        return CLEAN if area == 0 else CONTRADICTED
    if gate32 < np.float32(limits.positive):
        return UNCERTAIN
    if area == 0:
        return CLEARED
    return DEFECT if np.float32(confidence) >= np.float32(limits.min_pixel_confidence) else LOW_CONFIDENCE


def image_verdicts(
    gates: np.ndarray, areas: np.ndarray, confidences: np.ndarray, limits: Confidence
) -> tuple[str, ...]:
    """The 4 class verdicts of an image: `gates`, `areas`, `confidences` each `(4,)`."""
    return tuple(
        class_verdict(float(g), int(a), float(c), limits)
        for g, a, c in zip(gates, areas, confidences, strict=True)
    )


def is_selected(verdicts: Sequence[str]) -> bool:
    """Selected: every class is sure."""
    return all(v in SURE for v in verdicts)


@dataclass(frozen=True)
class Decision:
    """One image's outcome.

    Attributes:
        image_id: the file name.
        gates, confidences: `(4,) float32` gate scores and mask confidences (NaN: no mask).
        areas: `(4,) int64` post-processed mask areas.
        verdicts: the 4 class verdicts.
        rles: the label (4 RLE strings, "" = no defect) of a selected image, else None.
        problem: why a would-be-selected image could not be used (unreadable), else "".
    """

    image_id: str
    gates: np.ndarray
    areas: np.ndarray
    confidences: np.ndarray
    verdicts: tuple[str, ...]
    rles: tuple[str, ...] | None
    problem: str = ""

    @property
    def selected(self) -> bool:
        return self.rles is not None

    def reasons(self) -> list[str]:
        """Why the image was left out, one kind per entry ([] when selected)."""
        if self.problem:
            return [UNREADABLE]
        return sorted({v for v in self.verdicts if v not in SURE})

    def reason(self) -> str:
        """'' when selected, else e.g. `class 2: uncertain gate; class 3: low pixel confidence`."""
        if self.problem:
            return f"{UNREADABLE}: {self.problem}"
        unsure = [(c, v) for c, v in zip(CLASSES, self.verdicts, strict=True) if v not in SURE]
        return "; ".join(f"class {c}: {v}" for c, v in unsure)


def decide(
    image_id: str, probs: np.ndarray, cls: np.ndarray | None, rules: Rules, limits: Confidence
) -> Decision:
    """The kernel's rules on one image's ensemble output, then the verdicts.

    Args:
        probs: `(4, H, W) float32` ensemble probabilities; cls: `(4,)` image-level ones, or None.
    """
    masks = apply(probs, rules, cls)
    gates = gate_scores(probs, cls)[0]  # the image-level score: classifier, else aux head, else max pixel
    areas = np.count_nonzero(masks.reshape(len(masks), -1), axis=1).astype(np.int64)
    confidences = mask_confidence(probs, masks)
    verdicts = image_verdicts(gates, areas, confidences, limits)
    rles = tuple(rle.encode_many(masks)) if is_selected(verdicts) else None
    return Decision(image_id, gates, areas, confidences, verdicts, rles)


def check_readable(decision: Decision, path: Path) -> Decision:
    """The decision, or its image left out when the file does not read at the competition's size."""
    try:
        read_grey(path)
    except ImageError as exc:
        return dataclasses.replace(decision, rles=None, problem=exc.reason)
    return decision


def pseudo_label(
    ensemble: Ensemble,
    rules: Rules,
    paths: Sequence[Path],
    limits: Confidence,
    settings: PredictSettings,
) -> Iterator[Decision]:
    """Every image's decision, in order, streamed from the engine (nothing holds the probabilities)."""
    by_name = {path.name: path for path in paths}
    for image_id, probs, cls in iter_probs(ensemble, paths, settings):
        decision = decide(image_id, probs, cls, rules, limits)
        yield check_readable(decision, by_name[image_id]) if decision.selected else decision


@dataclass(frozen=True)
class Summary:
    """What a pseudo-label run selected.

    Attributes:
        images, selected: images predicted, images selected.
        per_class: ClassId -> verdict (DEFECT, CLEAN) -> selected images labelled so.
        left_out: reason kind -> images left out for it (an image counts once per kind it has).
        limits: the confidence limits used.
        paths: weights_dir, images_dir, out_dir (absolute).
    """

    images: int
    selected: int
    per_class: dict[int, dict[str, int]]
    left_out: dict[str, int]
    limits: Confidence
    paths: dict[str, str]

    @classmethod
    def of(cls, decisions: Sequence[Decision], limits: Confidence, paths: dict[str, str]) -> Summary:
        chosen = [d for d in decisions if d.selected]
        per_class = {
            c: {v: sum(d.verdicts[k] == v for d in chosen) for v in SURE} for k, c in enumerate(CLASSES)
        }
        left_out = Counter(kind for d in decisions if not d.selected for kind in d.reasons())
        return cls(len(decisions), len(chosen), per_class, dict(sorted(left_out.items())), limits, paths)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "selected": self.selected,
            "per_class": {str(c): counts for c, counts in self.per_class.items()},
            "left_out": self.left_out,
            "limits": dataclasses.asdict(self.limits),
            **self.paths,
        }

    def text(self) -> str:
        """A few lines for the end of a run, with the config entry that trains on the selection (YAML, quoted
        where a path needs it), or why there is none."""
        per_class = "  ".join(f"c{c} {n[DEFECT]}/{n[CLEAN]}" for c, n in self.per_class.items())
        left_out = ", ".join(f"{n} {kind}" for kind, n in self.left_out.items()) or "none"
        out = self.paths["out_dir"]
        return "\n".join([
            f"pseudo-labelled {self.images} images: {self.selected} selected -> {out}/{TRAIN_CSV}",
            f"  selected per class (defect/no defect): {per_class}",
            f"  left out (images per reason): {left_out}",
            f"  train on them: data.extra_sources: {self.extra_source()}" if self.selected else
            "  nothing to train on: no image was sure enough (loosen --positive, --negative or "
            "--min-pixel-confidence, or label more images); do not add this round to data.extra_sources",
        ])  # fmt: skip

    def extra_source(self) -> str:
        """`data.extra_sources` as a one-line YAML list holding this selection."""
        entry = {"train_csv": f"{self.paths['out_dir']}/{TRAIN_CSV}", "images_dir": self.paths["images_dir"],
                 "weight": 1.0}  # fmt: skip
        return yaml.safe_dump([entry], default_flow_style=True, sort_keys=False, width=1 << 16).strip()


def train_csv_text(decisions: Sequence[Decision]) -> str:
    """The selected images' labels in the original layout: 4 rows an image, empty = no defect."""
    rows = [
        f"{d.image_id}_{c},{encoded}"
        for d in decisions
        if d.selected
        for c, encoded in zip(CLASSES, d.rles, strict=True)
    ]
    return "\n".join([Layout.ORIGINAL.header, *rows]) + "\n"


def selection_table(decisions: Sequence[Decision]) -> pd.DataFrame:
    """One row per image: ImageId, gate_k, area_k, confidence_k (k = 1..4), selected (0/1), reason."""
    table = pd.DataFrame({IMAGE_ID: [d.image_id for d in decisions]})
    for k, c in enumerate(CLASSES):
        table[f"gate_{c}"] = [float(d.gates[k]) for d in decisions]
        table[f"area_{c}"] = [int(d.areas[k]) for d in decisions]
        table[f"confidence_{c}"] = [float(d.confidences[k]) for d in decisions]
    table["selected"] = [int(d.selected) for d in decisions]
    table["reason"] = [d.reason() for d in decisions]
    return table


def write_outputs(out_dir: Path, decisions: Sequence[Decision], summary: Summary) -> None:
    """`train.csv`, `selection.csv` and `summary.json` (last: it marks a finished round) in `out_dir` (`run`:
    in a staging folder)."""
    fileio.write_text(out_dir / TRAIN_CSV, train_csv_text(decisions))
    csv_text = selection_table(decisions).to_csv(index=False, float_format="%.6g", lineterminator="\n")
    fileio.write_text(out_dir / SELECTION_CSV, csv_text)
    fileio.write_json(out_dir / SUMMARY_JSON, summary.to_dict())


def collect(decisions: Iterator[Decision], total: int, progress: bool) -> list[Decision]:
    """The streamed decisions as a list, with progress that counts the selected images."""
    out, selected = [], 0
    with Progress(total, "pseudo", bar=progress) as bar:
        for decision in decisions:
            out.append(decision)
            selected += decision.selected
            bar.update(selected=str(selected))
    return out


def run(
    weights_dir: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    limits: Confidence | None = None,
    settings: PredictSettings | None = None,
    overwrite: bool = False,
) -> Summary:
    """Pseudo-label every *.jpg of `images_dir` with the weights dir's ensemble and rules into `out_dir`.

    `out_dir` appears whole, with all three files, when the run ends (`fileio.published`): a killed run
    leaves an earlier round's outputs as they were, never a mix.

    Raises (before any image is predicted): ValueError for an `out_dir` that is or holds the images or the
    weights dir, that holds anything but a pseudo-label round (`ROUND`), or one at all unless `overwrite`;
    ValueError / ManifestError naming the file of a bad images folder, manifest, rules, model.
    """
    weights_dir, images_dir, out_dir = Path(weights_dir), Path(images_dir), Path(out_dir)
    limits, settings = limits or Confidence(), settings or PredictSettings()
    inputs = {"images folder": images_dir, "weights dir": weights_dir}
    fileio.check_output(out_dir, overwrite, ROUND, inputs)
    paths = [images_dir / name for name in metric.image_files(images_dir)][: settings.limit]
    rules = Rules.load(weights_dir / THRESHOLDS_FILE)
    ensemble = Ensemble.load(weights_dir, Manifest.load(weights_dir / MANIFEST_FILE), settings.device)
    quiet = dataclasses.replace(settings, progress=False)  # one bar: ours, which counts the selection
    decisions = collect(pseudo_label(ensemble, rules, paths, limits, quiet), len(paths), settings.progress)
    where = {"weights_dir": weights_dir, "images_dir": images_dir, "out_dir": out_dir}
    summary = Summary.of(decisions, limits, {k: str(v.resolve()) for k, v in where.items()})
    with fileio.published(out_dir, overwrite, ROUND, inputs) as staging:
        write_outputs(staging, decisions, summary)
    return summary
