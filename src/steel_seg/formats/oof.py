"""The out-of-fold (OOF) prediction directory: writer and reader (format pinned in docs/CONTRACTS.md).

```
oof/<name>/
  meta.json          {"image_ids", "shape", "classes": 4, "prob_scale": 255, "has_cls", "source", "fold",
                      "image_folds", "folds_sha256", "n_folds", "recipe"}
  probs/<stem>.png   (H, W, 4) uint8 PNG as cv2 reads/writes it, channel k = class k+1, prob = value / 255
  cls.csv            ImageId,p1,p2,p3,p4 (only when has_cls)
  truth.csv          ImageId,ClassId,EncodedPixels (re-release layout, defect rows of these images)
```
Probabilities are stored quantised: `value = rint(clip(p, 0, 1) * 255)`, read back as
`float32(value) / float32(255)` (the post-processing rules read every probability at this resolution, the
kernel's too). `image_folds` (the fold each image was held out in), `folds_sha256` and `n_folds` (of the
folds.csv) and `recipe` (the ensemble that predicted, `models.recipe.Recipe.to_dict()`) say what the
predictions are out of: `tune` refuses to mix folds files or recipes and records the recipe it tuned on.
The writer builds the directory in a hidden staging sibling and moves it into place when complete
(`meta.json` written last), so a directory at the real name is always whole; an existing one is replaced
only when asked (`overwrite`), only when it is an OOF dir and nothing else (`OOF_DIR`), and only at that
moment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from steel_seg import fileio
from steel_seg.competition import CLASS_ID, CLASSES, ENCODED_PIXELS, IMAGE_ID, IMAGE_SHAPE, N_CLASSES
from steel_seg.formats.labels import Labels, read_train_csv

PROB_SCALE = 255
CLS_COLUMNS = [f"p{c}" for c in CLASSES]
META_FILE = "meta.json"
# What `--overwrite` may replace: a folder holding these entries only, meta.json (written last) among them.
OOF_DIR = fileio.Output("an OOF dir", frozenset({META_FILE, "probs", "cls.csv", "truth.csv"}), META_FILE)


def quantise(probs: np.ndarray) -> np.ndarray:
    """`probs: (4, H, W) float32` in [0, 1] -> `(4, H, W) uint8` as stored in the PNG."""
    return np.rint(np.clip(probs, 0.0, 1.0) * PROB_SCALE).astype(np.uint8)


def dequantise(values: np.ndarray) -> np.ndarray:
    """`values: uint8` -> float32 probabilities `value / 255` (exactly what every reader sees)."""
    return values.astype(np.float32) / np.float32(PROB_SCALE)


def _stem(image_id: str) -> str:
    return Path(image_id).stem


@dataclass(frozen=True, kw_only=True)
class Origin:
    """What an OOF dir's predictions are out of: the folds.csv (sha256, its number of folds) and the recipe
    of the ensemble that made them (`models.recipe.Recipe.to_dict()`); None where unrecorded (older dirs)."""

    folds_sha256: str | None = None
    n_folds: int | None = None
    recipe: dict[str, Any] | None = None


class OOFWriter:
    """Writes one OOF directory, one image at a time (nothing but the image-level scores stays in memory).

    Usage: `with OOFWriter(dir, source, fold, has_cls) as w:`; `w.add(image_id, probs, cls)` per image
    (`fold`: the image's held-out fold, default the writer's); `w.close(truth)` writes cls.csv, truth.csv
    and finally meta.json, then moves the whole directory to `dir`. ValueError at once when `dir` may not be
    written (`fileio.check_output`: it holds files and `overwrite` is off, it holds anything but an OOF dir,
    or it is or holds one of `inputs`). Leaving the `with` block by an exception discards the half-written
    directory. `origin`: what the predictions are out of (recorded in meta.json).
    """

    def __init__(
        self,
        dir: str | os.PathLike,
        source: str,
        fold: int | None,
        has_cls: bool,
        overwrite: bool = False,
        inputs: dict[str, Path] | None = None,
        origin: Origin | None = None,
    ):
        self.dir = Path(dir)
        self._work = fileio.staging_dir(self.dir, overwrite, OOF_DIR, inputs)
        self.source = str(source)
        self.fold = fold
        self.has_cls = has_cls
        self.origin = origin or Origin()
        self.image_folds: list[int | None] = []
        self.image_ids: list[str] = []
        self._cls_rows: list[list[float]] = []
        self._shape: tuple[int, int] | None = None
        self._seen: set[str] = set()
        (self._work / "probs").mkdir()

    def __enter__(self) -> OOFWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            fileio.discard(self._work)

    def add(
        self, image_id: str, probs: np.ndarray, cls: np.ndarray | None = None, fold: int | None = None
    ) -> None:
        """Store `probs: (4, H, W) float32` in [0, 1] and, when has_cls, `cls: (4,)` for one image."""
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape[0] != N_CLASSES:
            raise ValueError(f"{image_id}: probs must be (4, H, W), got {probs.shape}")
        if self._shape is None:
            self._shape = (int(probs.shape[1]), int(probs.shape[2]))
        if probs.shape[1:] != self._shape:
            raise ValueError(f"{image_id}: probs shape {probs.shape[1:]} differs from {self._shape}")
        if not np.isfinite(probs).all():
            raise ValueError(f"{image_id}: probs contain NaN or inf")
        if (cls is None) == self.has_cls:
            raise ValueError(f"{image_id}: cls must be given exactly when has_cls ({self.has_cls})")
        if cls is not None and not ((np.asarray(cls) >= 0) & (np.asarray(cls) <= 1)).all():
            raise ValueError(f"{image_id}: cls probabilities must lie in [0, 1], got {cls}")
        if image_id in self._seen:
            raise ValueError(f"{image_id}: added twice to {self.dir}")
        self._write_png(image_id, quantise(probs))
        if cls is not None:
            self._cls_rows.append([float(v) for v in np.asarray(cls, dtype=np.float32).reshape(N_CLASSES)])
        self.image_ids.append(image_id)
        self.image_folds.append(self.fold if fold is None else fold)
        self._seen.add(image_id)

    def _write_png(self, image_id: str, values: np.ndarray) -> None:
        path = self._work / "probs" / f"{_stem(image_id)}.png"
        ok, png = cv2.imencode(".png", np.ascontiguousarray(values.transpose(1, 2, 0)))
        if not ok:
            raise OSError(f"{path}: cv2 could not encode the PNG")
        fileio.write_bytes(path, png.tobytes())

    def close(self, truth: Labels) -> Path:
        """Write cls.csv, truth.csv (these images' defect rows) and meta.json, then move the directory into
        place; returns it."""
        unknown = sorted(set(self.image_ids) - set(truth.image_ids))
        if unknown:
            raise ValueError(
                f"{len(unknown)} images unknown to the truth labels, e.g. {unknown[:3]} (a re-release "
                "train.csv lists defect rows only: build the Labels with images_dir)"
            )
        if self.has_cls:
            table = pd.DataFrame(self._cls_rows, columns=CLS_COLUMNS)
            table.insert(0, IMAGE_ID, self.image_ids)
            fileio.write_text(self._work / "cls.csv", table.to_csv(index=False, float_format="%.9g"))
        rows = truth.table[truth.table[IMAGE_ID].isin(set(self.image_ids))]
        rows = rows[[IMAGE_ID, CLASS_ID, ENCODED_PIXELS]].sort_values([IMAGE_ID, CLASS_ID])
        fileio.write_text(self._work / "truth.csv", rows.to_csv(index=False))
        meta = {
            "image_ids": self.image_ids,
            "shape": list(self._shape or IMAGE_SHAPE),
            "classes": N_CLASSES,
            "prob_scale": PROB_SCALE,
            "has_cls": self.has_cls,
            "source": self.source,
            "fold": self.fold,
            "image_folds": None if None in self.image_folds else self.image_folds,
            "folds_sha256": self.origin.folds_sha256,
            "n_folds": self.origin.n_folds,
            "recipe": self.origin.recipe,
        }
        fileio.write_text(self._work / META_FILE, json.dumps(meta))
        return fileio.publish_dir(self._work, self.dir)


@dataclass(frozen=True, kw_only=True)
class OOF:
    """Out-of-fold predictions of one or several directories (PNGs read lazily, one image at a time).

    `cls`: DataFrame indexed by ImageId with float32 columns p1..p4, or None.
    `truth`: the truth of exactly these images (`truth.masks(image_id) -> (4, H, W) uint8`).
    `origins`: one per directory; `image_folds`: each image's held-out fold, where the directories say.
    """

    dirs: tuple[Path, ...]
    image_ids: list[str]
    shape: tuple[int, int]
    has_cls: bool
    cls: pd.DataFrame | None
    truth: Labels
    png_paths: dict[str, Path] = field(repr=False)
    origins: tuple[Origin, ...] = ()
    image_folds: dict[str, int] = field(default_factory=dict, repr=False)

    def probs_u8(self, image_id: str) -> np.ndarray:
        """`(4, H, W) uint8` stored values of one image; ValueError naming the PNG when unreadable."""
        path = self.png_paths[image_id]
        values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if values is None:
            raise ValueError(f"{path}: missing or unreadable PNG")
        if values.shape != (*self.shape, N_CLASSES) or values.dtype != np.uint8:
            raise ValueError(
                f"{path}: expected {(*self.shape, N_CLASSES)} uint8 PNG, got {values.shape} {values.dtype}"
            )
        return np.ascontiguousarray(values.transpose(2, 0, 1))

    def probs(self, image_id: str) -> np.ndarray:
        """`(4, H, W) float32` probabilities of one image (value / 255)."""
        return dequantise(self.probs_u8(image_id))

    def cls_of(self, image_id: str) -> np.ndarray | None:
        """`(4,) float32` image-level probabilities, or None without a classifier."""
        if self.cls is None:
            return None
        return self.cls.loc[image_id, CLS_COLUMNS].to_numpy(dtype=np.float32)


def _read_meta(path: Path) -> dict[str, Any]:
    meta = fileio.read_json(path, "the metadata of a finished OOF directory")
    missing = {"image_ids", "shape", "classes", "prob_scale", "has_cls"} - set(meta)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    if meta["classes"] != N_CLASSES or meta["prob_scale"] != PROB_SCALE:
        raise ValueError(f"{path}: expected classes={N_CLASSES}, prob_scale={PROB_SCALE}")
    if len(meta["shape"]) != 2 or len(set(meta["image_ids"])) != len(meta["image_ids"]):
        raise ValueError(f"{path}: shape must be [H, W] and image_ids unique")
    return meta


def _png_paths(dir: Path, image_ids: Sequence[str]) -> dict[str, Path]:
    probs_dir = dir / "probs"
    present = {p.name for p in os.scandir(probs_dir)} if probs_dir.is_dir() else set()
    paths = {i: probs_dir / f"{_stem(i)}.png" for i in image_ids}
    missing = [p for p in paths.values() if p.name not in present]
    if missing:
        raise ValueError(f"{missing[0]}: missing probability PNG ({len(missing)} of {len(paths)} missing)")
    return paths


def _read_cls(path: Path, image_ids: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{path}: missing although meta.json says has_cls")
    table = pd.read_csv(path)
    if list(table.columns) != [IMAGE_ID, *CLS_COLUMNS]:
        expected = ",".join([IMAGE_ID, *CLS_COLUMNS])
        raise ValueError(f"{path}: columns must be {expected}, got {list(table.columns)}")
    values = table[CLS_COLUMNS].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)).all(axis=1))
    if bad.size:
        raise ValueError(f"{path}: row {bad[0] + 2}: probabilities must be in [0, 1]")
    missing = sorted(set(image_ids) - set(table[IMAGE_ID]))
    if missing:
        raise ValueError(f"{path}: {len(missing)} images of meta.json have no row, e.g. {missing[:3]}")
    return table.set_index(IMAGE_ID).loc[list(image_ids)].astype(np.float32)


def _read_truth(path: Path, image_ids: Sequence[str], shape: tuple[int, int]) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    table = read_train_csv(path, shape)
    extra = sorted(set(table[IMAGE_ID]) - set(image_ids))
    if extra:
        raise ValueError(f"{path}: {len(extra)} images not in meta.json, e.g. {extra[:3]}")
    return table


def read_oof(dir: str | os.PathLike) -> OOF:
    """Read and validate one OOF directory (PNG files are read lazily, per image)."""
    dir = Path(dir)
    meta = _read_meta(dir / META_FILE)
    image_ids = list(meta["image_ids"])
    shape = (int(meta["shape"][0]), int(meta["shape"][1]))
    cls = _read_cls(dir / "cls.csv", image_ids) if meta["has_cls"] else None
    truth = _read_truth(dir / "truth.csv", image_ids, shape)
    folds = meta.get("image_folds") or (
        [meta["fold"]] * len(image_ids) if meta.get("fold") is not None else []
    )
    origin = Origin(
        folds_sha256=meta.get("folds_sha256"), n_folds=meta.get("n_folds"), recipe=meta.get("recipe")
    )
    return OOF(
        dirs=(dir,),
        image_ids=image_ids,
        shape=shape,
        has_cls=bool(meta["has_cls"]),
        cls=cls,
        truth=Labels(truth, sorted(image_ids), shape),
        png_paths=_png_paths(dir, image_ids),
        origins=(origin,),
        image_folds={i: int(k) for i, k in zip(image_ids, folds, strict=False)},
    )


def read_oofs(dirs: Sequence[str | os.PathLike]) -> OOF:
    """Read several OOF directories (e.g. one per fold) as one; they must agree on shape and has_cls."""
    parts = [read_oof(d) for d in dirs]
    if not parts:
        raise ValueError("no OOF directories given")
    first = parts[0]
    owner: dict[str, Path] = {}
    for part in parts:
        if part.shape != first.shape or part.has_cls != first.has_cls:
            raise ValueError(
                f"{part.dirs[0]}: shape {part.shape} / has_cls {part.has_cls} differ from "
                f"{first.dirs[0]}: {first.shape} / {first.has_cls}"
            )
        for image_id in part.image_ids:
            if image_id in owner:
                raise ValueError(f"{image_id} is in both {owner[image_id]} and {part.dirs[0]}")
            owner[image_id] = part.dirs[0]
    cls = pd.concat([p.cls for p in parts]) if first.has_cls else None
    table = pd.concat([p.truth.table for p in parts], ignore_index=True)
    truth = Labels(table, sorted(owner), first.shape)
    paths = {k: v for p in parts for k, v in p.png_paths.items()}
    return OOF(
        dirs=tuple(d for p in parts for d in p.dirs),
        image_ids=list(owner),
        shape=first.shape,
        has_cls=first.has_cls,
        cls=cls,
        truth=truth,
        png_paths=paths,
        origins=tuple(o for p in parts for o in p.origins),
        image_folds={k: v for p in parts for k, v in p.image_folds.items()},
    )
