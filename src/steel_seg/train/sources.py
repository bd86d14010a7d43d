"""The labelled image sets of a training run: the primary train set and the config's extra sources.

The primary set (`data.train_csv` + `data.images_dir`) owns the folds: its held-out fold is what a run
validates on, and what `steel-seg oof` and `tune` see. Each extra source (`data.extra_sources`, e.g. the
`train.csv` of `steel-seg pseudo`) joins the training side of every fold and never the validation side.
An extra source's images are exactly those its CSV names, never the rest of its folder (a pseudo-label
folder also holds the test images that were left out). An ImageId in two sources is an error naming both
files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from steel_seg.competition import CLASS_ID, IMAGE_ID
from steel_seg.formats.images import check_images
from steel_seg.formats.labels import Labels, read_label_file

if TYPE_CHECKING:
    from steel_seg.train.config import DataConfig, ExtraSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One labelled set: its CSV, its image folder, its sampling weight and its labels."""

    train_csv: Path
    images_dir: Path
    weight: float
    labels: Labels

    def record(self, role: str, train_images: int, val_images: int = 0) -> dict[str, Any]:
        """What `run.json` keeps of the source: absolute paths and the images it gave each side."""
        return {
            "role": role,
            "train_csv": str(self.train_csv.resolve()),
            "images_dir": str(self.images_dir.resolve()),
            "weight": self.weight,
            "train_images": train_images,
            "val_images": val_images,
        }


@dataclass(frozen=True)
class Sources:
    """The primary set and the extra sources."""

    primary: Source
    extra: tuple[Source, ...]

    @cached_property
    def labels(self) -> Labels:
        """The union of all their labels (built once, on first use)."""
        return union([self.primary, *self.extra])

    @property
    def extra_ids(self) -> list[str]:
        """Every extra image, sorted: they join the training side of each fold."""
        return sorted(i for source in self.extra for i in source.labels.image_ids)

    def folders(self) -> dict[str, Path]:
        """ImageId -> image folder of every extra image (primary images live in `primary.images_dir`)."""
        return {i: source.images_dir for source in self.extra for i in source.labels.image_ids}

    def weights(self, image_ids: Sequence[str]) -> np.ndarray:
        """`(N,) float64`: the weight of each image's source (1 for the primary set)."""
        weight = {i: source.weight for source in self.extra for i in source.labels.image_ids}
        return np.array([weight.get(i, 1.0) for i in image_ids], dtype=np.float64)

    def record(self, train_images: int, val_images: int) -> list[dict[str, Any]]:
        """Every source for `run.json`; the primary one gave `train_images` and `val_images` (its fold)."""
        extra = [s.record("extra", len(s.labels.image_ids)) for s in self.extra]
        return [self.primary.record("primary", train_images, val_images), *extra]


def load_sources(cfg: DataConfig) -> Sources:
    """The primary set and the extra sources of a `data` config, checked.

    Raises:
        ValueError naming the file: an unreadable CSV (with its line), a missing folder or image, an ImageId
        in two sources (both files named).
    """
    primary = Source(
        Path(cfg.train_csv), Path(cfg.images_dir), 1.0, Labels.from_csv(cfg.train_csv, cfg.images_dir)
    )
    extra: list[Source] = []
    for spec in cfg.extra_sources:
        source = read_extra(spec)
        for earlier in (primary, *extra):
            check_disjoint(earlier, source)
        extra.append(source)
    return Sources(primary, tuple(extra))


def usable_sources(sources: Sources, skip_bad: bool, progress: bool = True) -> Sources:
    """`sources` after the pre-flight header check of every image of every source (`usable_labels`).

    Raises ValueError listing the unusable images, unless `skip_bad` (then they are left out, logged).
    """
    checked = [replace(s, labels=usable_labels(s.labels, s.images_dir, skip_bad, progress))
               for s in (sources.primary, *sources.extra)]  # fmt: skip
    return Sources(checked[0], tuple(checked[1:]))


def read_extra(spec: ExtraSource) -> Source:
    """An extra source: the images its CSV names (at least one), each a file in its folder."""
    csv, folder = Path(spec.train_csv), Path(spec.images_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory of images (extra source {csv})")
    found = read_label_file(csv)
    if not found.image_ids:
        raise ValueError(
            f"{csv}: names no image (a header only: e.g. a pseudo-label round that selected none); an extra "
            "source must add at least one: remove it from data.extra_sources"
        )
    missing = [i for i in found.image_ids if not (folder / i).is_file()]
    if missing:
        raise ValueError(f"{csv}: {len(missing)} image(s) not found in {folder}, e.g. {missing[:3]}")
    labels = Labels(found.table, sorted(found.image_ids), csv=csv, lines=found.lines)
    return Source(csv, folder, float(spec.weight), labels)


def check_disjoint(earlier: Source, later: Source) -> None:
    """ValueError naming both files when the two sources share an ImageId."""
    clash = sorted(set(earlier.labels.image_ids) & set(later.labels.image_ids))
    if clash:
        raise ValueError(
            f"{later.train_csv}: {len(clash)} ImageId(s) also in {earlier.train_csv}, e.g. {clash[:3]}; "
            "an image may come from one source only"
        )


def union(sources: Sequence[Source]) -> Labels:
    """The labels of disjoint sources as one `Labels` (the first source's own when it is alone)."""
    if len(sources) == 1:
        return sources[0].labels
    table = pd.concat([s.labels.table for s in sources], ignore_index=True)
    table = table.sort_values([IMAGE_ID, CLASS_ID], kind="stable", ignore_index=True)
    image_ids = sorted(i for s in sources for i in s.labels.image_ids)
    return Labels(table, image_ids, sources[0].labels.shape)


def usable_labels(labels: Labels, images_dir: str | Path, skip_bad: bool, progress: bool = True) -> Labels:
    """Pre-flight check of every image's header before the first step (`images.check_images`).

    Returns `labels` when all images are usable; with `skip_bad`, the labels without the bad ones (logged
    with their count). Otherwise ValueError listing every bad image with its file and train.csv line.
    """
    problems = check_images([Path(images_dir) / i for i in labels.image_ids], progress=progress)
    if not problems:
        return labels
    listed = "\n".join(f"  {p.path}: {p.reason} ({labels.where(Path(p.path).name)})" for p in problems)
    if not skip_bad:
        raise ValueError(
            f"{len(problems)} of {len(labels.image_ids)} train images cannot be used:\n{listed}\n"
            "fix or remove them, or set data.skip_bad_images: true to train without them"
        )
    log.warning("skipping %d unusable train image(s):\n%s", len(problems), listed)
    return labels.without([Path(p.path).name for p in problems])
