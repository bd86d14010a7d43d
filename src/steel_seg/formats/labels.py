"""Severstal label CSVs in every Kaggle layout -> one tidy table; the masks of an image.

The layouts (`competition.Layout`, told apart by the header): ORIGINAL (the 2019 train.csv and the stage-1
submission, 4 rows per image, empty = no defect), RERELEASE (train.csv, defect rows only) and FINAL (the final
submission, read here for `submission.read_predictions`).

The tidy table has columns ImageId (str, with `.jpg`), ClassId (int 1..4), EncodedPixels (non-empty RLE),
one row per defect mask, sorted by image then class. Errors name the file and the 1-based line number in it.
"""

from __future__ import annotations

from collections.abc import Collection
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
    TIDY_COLUMNS,
    Layout,
)
from steel_seg.formats import rle

COLUMNS = list(TIDY_COLUMNS)


@dataclass(frozen=True)
class LabelFile:
    """What one label CSV says.

    Attributes:
        table: the tidy defect rows (COLUMNS).
        image_ids: every image the file names (also those with only empty rows), unique, in file order.
        layout: the file's layout.
        lines: ImageId -> the 1-based line of its first row.
    """

    table: pd.DataFrame
    image_ids: list[str]
    layout: Layout
    lines: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Rows:
    """The cells of a label CSV, unchecked, one entry per non-blank data row.

    Attributes:
        layout: the file's layout.
        lines: (R,) int, the 1-based line number of each row in the file.
        image_ids, class_ids, rles: (R,) object arrays of str, as written (class_ids "" where the original
            layout's `ImageId_ClassId` has no `_`).
    """

    layout: Layout
    lines: np.ndarray
    image_ids: np.ndarray
    class_ids: np.ndarray
    rles: np.ndarray


def read_rows(path: str | Path) -> Rows:
    """The rows of a label CSV in any layout; ValueError naming the file if unreadable or unknown."""
    raw, layout = _read_raw(Path(path))
    image_ids, class_ids = _split_ids(raw, layout)
    rles = raw[ENCODED_PIXELS].to_numpy(dtype=object)
    return Rows(layout, raw.index.to_numpy() + 2, image_ids, class_ids, rles)


def read_label_file(
    path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE, class_zero: bool = False
) -> LabelFile:
    """Read a label CSV in any layout (see the module docstring), checking every row.

    Args:
        path: the CSV.
        shape: (H, W) the RLE strings must fit.
        class_zero: accept ClassId 0 (the final sample submission's "no class" placeholder); such rows name
            their image but add no mask.

    Raises:
        ValueError naming the file, the line and the problem: unknown columns, a ClassId outside 1..4, an
        (image, class) pair given twice, a bad RLE.
    """
    path = Path(path)
    rows = read_rows(path)
    lines, image_ids, class_ids, rles = rows.lines, rows.image_ids, rows.class_ids, rows.rles
    allowed = {str(c) for c in CLASSES} | ({"0"} if class_zero else set())
    _check_rows(path, lines, image_ids, class_ids, allowed)
    _check_rles(path, lines, rles, shape)
    table = pd.DataFrame({IMAGE_ID: image_ids, CLASS_ID: class_ids.astype(np.int64), ENCODED_PIXELS: rles})
    defects = (table[CLASS_ID] > 0) & (table[ENCODED_PIXELS].str.strip() != "")
    table = table[defects].sort_values([IMAGE_ID, CLASS_ID], kind="stable").reset_index(drop=True)
    first = dict(zip(image_ids.tolist()[::-1], lines.tolist()[::-1], strict=True))
    return LabelFile(table, list(dict.fromkeys(image_ids.tolist())), rows.layout, first)


def _read_raw(path: Path) -> tuple[pd.DataFrame, Layout]:
    """All cells as str, blank lines kept as rows (so the index maps to line numbers) and then dropped."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from None
    layout = Layout.of_columns(raw.columns)
    if layout is None:
        known = "; ".join(layout.header for layout in Layout)
        found = ",".join(map(str, raw.columns))
        raise ValueError(f"{path}: unknown columns {found}; expected one of: {known}")
    return raw[(raw != "").any(axis=1)], layout


def _split_ids(raw: pd.DataFrame, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(ImageId, ClassId) as str arrays; the original layout's `ImageId_ClassId` split at its last `_`."""
    # A header-only file (e.g. a pseudo-label selection of no image): pandas' split would have no columns.
    if raw.empty:
        return np.array([], dtype=object), np.array([], dtype=object)
    if layout is Layout.ORIGINAL:
        parts = raw[layout.columns[0]].str.rpartition("_")
        no_underscore = (parts[1] == "").to_numpy()
        image_ids, class_ids = parts[0].to_numpy(dtype=object), parts[2].to_numpy(dtype=object)
        image_ids[no_underscore] = class_ids[no_underscore]
        class_ids[no_underscore] = ""
        return image_ids, class_ids
    return raw[IMAGE_ID].to_numpy(dtype=object), raw[CLASS_ID].str.strip().to_numpy(dtype=object)


def _check_rows(path: Path, lines: np.ndarray, image_ids: np.ndarray, class_ids: np.ndarray, allowed) -> None:
    bad_image = np.flatnonzero(pd.Series(image_ids).str.strip().eq("").to_numpy())
    if bad_image.size:
        raise ValueError(f"{path}: line {lines[bad_image[0]]}: empty ImageId")
    bad_class = np.flatnonzero(~pd.Series(class_ids).isin(allowed).to_numpy())
    if bad_class.size:
        i = bad_class[0]
        expected = ", ".join(sorted(allowed))
        raise ValueError(
            f"{path}: line {lines[i]}: ClassId {class_ids[i]!r} of {image_ids[i]} is not one of {expected}"
        )
    keys = pd.Series(image_ids + "_" + class_ids)
    twice = np.flatnonzero(keys.duplicated().to_numpy())
    if twice.size:
        i = twice[0]
        first = lines[np.flatnonzero((keys == keys[i]).to_numpy())[0]]
        pair = f"{image_ids[i]} class {class_ids[i]}"
        raise ValueError(f"{path}: line {lines[i]}: {pair} given twice (first on line {first})")


def _check_rles(path: Path, lines: np.ndarray, rles: np.ndarray, shape: tuple[int, int]) -> None:
    problems = rle.parse_many(rles, shape).problems
    if problems:
        i = min(problems)
        raise ValueError(f"{path}: line {lines[i]}: {problems[i]}")


def read_train_csv(path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE) -> pd.DataFrame:
    """The tidy table of a train.csv in either layout (ValueError with the file and line on bad input)."""
    return read_label_file(path, shape).table


@dataclass(eq=False)
class Labels:
    """Ground truth of a set of images.

    Attributes:
        table: tidy defect rows (ImageId, ClassId 1..4, EncodedPixels), sorted.
        image_ids: every known image, defect-free ones included, sorted.
        shape: (H, W) of the images.
        csv: the label file they were read from (None when built in memory).
        lines: ImageId -> the line of its first row in `csv` (images only in the images folder have none).
    """

    table: pd.DataFrame
    image_ids: list[str]
    shape: tuple[int, int] = IMAGE_SHAPE
    csv: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)
    _by_image: dict[str, list[tuple[int, str]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_image = {image_id: [] for image_id in self.image_ids}
        for image_id, class_id, encoded in self.table[COLUMNS].itertuples(index=False):
            if image_id not in self._by_image:
                raise ValueError(f"Labels: table image {image_id} is missing from image_ids")
            self._by_image[image_id].append((int(class_id), encoded))

    @classmethod
    def from_csv(
        cls, path: str | Path, images_dir: str | Path | None = None, shape: tuple[int, int] = IMAGE_SHAPE
    ) -> Labels:
        """Labels of a train.csv in either layout.

        The re-release layout lists defect rows only; pass `images_dir` (the train_images folder) so that
        defect-free images count too: image_ids is the union of the CSV's images and the folder's *.jpg.
        """
        found = read_label_file(path, shape)
        image_ids = set(found.image_ids)
        if images_dir is not None:
            images_dir = Path(images_dir)
            if not images_dir.is_dir():
                raise ValueError(f"{images_dir}: not a directory of images")
            image_ids.update(p.name for p in images_dir.glob(f"*{IMAGE_SUFFIX}"))
        return cls(found.table, sorted(image_ids), shape, Path(path), found.lines)

    def where(self, image_id: str) -> str:
        """Where the labels name an image, for messages: `train.csv line 12`, or that the CSV does not."""
        if image_id in self.lines:
            return f"{self.csv} line {self.lines[image_id]}"
        return f"not in {self.csv or 'the labels'} (a defect-free image of the images folder)"

    def without(self, image_ids: Collection[str]) -> Labels:
        """These labels less the given images (their rows and ids)."""
        drop = set(image_ids)
        table = self.table[~self.table[IMAGE_ID].isin(drop)].reset_index(drop=True)
        kept = [i for i in self.image_ids if i not in drop]
        return Labels(
            table, kept, self.shape, self.csv, {i: n for i, n in self.lines.items() if i not in drop}
        )

    def presence(self) -> pd.DataFrame:
        """Index ImageId (every image_id), bool columns 1..4: does the image carry that class."""
        present = pd.DataFrame(False, index=pd.Index(self.image_ids, name=IMAGE_ID), columns=list(CLASSES))
        for class_id, group in self.table.groupby(CLASS_ID):
            present.loc[group[IMAGE_ID].to_numpy(), int(class_id)] = True
        return present

    def masks(self, image_id: str) -> np.ndarray:
        """(4, H, W) uint8 0/1 masks of one image, class k+1 at index k; KeyError for an unknown image."""
        if image_id not in self._by_image:
            raise KeyError(f"{image_id} is not among the {len(self.image_ids)} labelled images")
        encoded = [""] * len(CLASSES)
        for class_id, text in self._by_image[image_id]:
            encoded[class_id - 1] = text
        return rle.decode_many(encoded, self.shape)
