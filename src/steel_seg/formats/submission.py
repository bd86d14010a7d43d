"""Submission files: the sample's layout, a streaming writer in the sample's order, reading and validating.

Layouts (`competition.SAMPLE_LAYOUTS`; the writer follows the sample it is given):
- ORIGINAL (the stage-1 sample) `ImageId_ClassId,EncodedPixels`: 4 rows per image, `<ImageId>_<ClassId>`,
  empty cell = no defect.
- FINAL `ImageId,EncodedPixels,ClassId`: we write 4 rows per image, ClassId 1..4, empty EncodedPixels when
  the class has no defect. Every (image, class) pair of the metric is then one explicit row, exactly as in
  ORIGINAL, so a reader that expects every pair finds it, one that skips empty rows loses nothing, and
  `validate` can check completeness. Kaggle's final sample itself has one placeholder row per image
  (ClassId 0, `1 409600`); `read_predictions` reads such rows as "no class" (the image counts, no mask) and
  `validate` reports them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from steel_seg.competition import CLASSES, IMAGE_SHAPE, N_CLASSES, SAMPLE_LAYOUTS, Layout
from steel_seg.formats import rle
from steel_seg.formats.labels import Rows, read_label_file, read_rows


@dataclass(frozen=True)
class Sample:
    """A sample submission: its layout and its images, unique, in the file's order."""

    layout: Layout
    image_ids: list[str]


def detect_layout(path: str | Path) -> Layout:
    """The layout of a submission CSV from its header line; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            header = file.readline().strip()
    except (FileNotFoundError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read a submission header ({err})") from None
    for layout in SAMPLE_LAYOUTS:
        if header == layout.header:
            return layout
    expected = " or ".join(repr(layout.header) for layout in SAMPLE_LAYOUTS)
    raise ValueError(f"{path}: header {header!r} is not a submission layout ({expected})")


def read_sample(path: str | Path) -> Sample:
    """Layout and image order of a sample_submission.csv (either stage)."""
    layout = detect_layout(path)
    return Sample(layout, read_label_file(path, class_zero=True).image_ids)


def read_predictions(path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE) -> pd.DataFrame:
    """Tidy ImageId, ClassId (1..4), EncodedPixels (non-empty) of a submission or train CSV in any layout.

    ClassId 0 rows (the final sample's placeholder) carry no class and are left out. ValueError names the file
    and line of a bad row.
    """
    return read_label_file(path, shape, class_zero=True).table


class SubmissionWriter:
    """Streams a submission in the sample's layout and image order, whatever order images arrive in.

    An image that arrives early is buffered until every image before it in the sample is written. Rows go to
    `<path>.partial`, renamed to `path` by `close()`, so a crash never leaves a truncated file that looks
    whole. As a context manager: a clean exit closes (filling unseen images as empty); an exception discards
    the partial file. `check_rle=False` skips re-parsing each string: for RLE made by `rle.encode` (valid by
    construction), where the parse would cost a third of a fast GPU run; `validate` still checks the file.
    """

    def __init__(
        self, path: str | Path, sample: Sample, shape: tuple[int, int] = IMAGE_SHAPE, check_rle: bool = True
    ):
        self.path = Path(path)
        self.sample = sample
        self.shape = shape
        self.check_rle = check_rle
        self._position = {image_id: i for i, image_id in enumerate(sample.image_ids)}
        self._pending: dict[int, Sequence[str]] = {}
        self._seen: set[str] = set()
        self._next = 0
        self._missing: list[str] | None = None
        self._partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._partial, "w", newline="")  # noqa: SIM115 (closed by close/abort)
        self._file.write(sample.layout.header + "\n")

    def write(self, image_id: str, rles: Sequence[str]) -> None:
        """Queue one image's 4 RLE strings (class 1..4); rows reach the file as soon as the order allows.

        Raises:
            ValueError: an image not in the sample, one written twice, not 4 strings, or a malformed RLE.
        """
        if self._missing is not None:
            raise ValueError(f"{self.path}: write({image_id}) after close()")
        if image_id not in self._position:
            raise ValueError(f"{image_id} is not in the sample submission")
        if image_id in self._seen:
            raise ValueError(f"{image_id} written twice")
        if len(rles) != N_CLASSES:
            raise ValueError(f"{image_id}: expected {N_CLASSES} RLE strings (one per class), got {len(rles)}")
        for class_id, encoded in zip(CLASSES, rles, strict=True) if self.check_rle else ():
            try:
                rle.runs(encoded, self.shape)
            except ValueError as err:
                raise ValueError(f"{image_id} class {class_id}: {err}") from None
        self._seen.add(image_id)
        self._pending[self._position[image_id]] = rles
        self._flush()

    def _flush(self) -> None:
        while self._next in self._pending:
            self._write_rows(self.sample.image_ids[self._next], self._pending.pop(self._next))
            self._next += 1

    def _write_rows(self, image_id: str, rles: Sequence[str]) -> None:
        if self.sample.layout is Layout.ORIGINAL:
            rows = (f"{image_id}_{c},{encoded}\n" for c, encoded in zip(CLASSES, rles, strict=True))
        else:
            rows = (f"{image_id},{encoded},{c}\n" for c, encoded in zip(CLASSES, rles, strict=True))
        self._file.writelines(rows)

    def close(self) -> list[str]:
        """Write every image never given as empty, finish the file; returns those images' ids (idempotent)."""
        if self._missing is None:
            empty = [""] * N_CLASSES
            self._missing = [i for i in self.sample.image_ids if i not in self._seen]
            for image_id in self._missing:
                self._pending[self._position[image_id]] = empty
            self._flush()
            self._file.close()
            os.replace(self._partial, self.path)
        return self._missing

    def abort(self) -> None:
        """Drop the partial file; nothing is written to `path`."""
        self._file.close()
        self._partial.unlink(missing_ok=True)
        self._missing = []

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif self._missing is None:
            self.abort()


def validate(
    submission_path: str | Path, sample_path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE
) -> list[str]:
    """Every problem of a submission against its sample; [] when valid.

    Checks: the header is the sample's; ClassId is 1..4; each (image, class) pair appears once; every RLE is
    well formed; the images are exactly the sample's, each with all 4 classes. ValueError when the sample
    itself or the submission cannot be read as a CSV of a known layout.
    """
    sample = read_sample(sample_path)
    rows = read_rows(submission_path)
    problems = []
    if rows.layout is not sample.layout:
        wanted = f"{sample.layout.name} ({sample.layout.header!r})"
        problems.append(f"header is the {rows.layout.value} layout; the sample's is {wanted}")
    problems += _row_problems(rows, shape)
    problems += _coverage_problems(rows, sample)
    return problems


_CLASS_LIST = ", ".join(map(str, CLASSES))


def _row_problems(rows: Rows, shape: tuple[int, int]) -> list[str]:
    """Bad ClassIds, repeated pairs and bad RLE, in line order."""
    problems: list[tuple[int, str]] = []
    first_line: dict[tuple[str, str], int] = {}
    classes = {str(c) for c in CLASSES}
    for line, image_id, class_id in zip(rows.lines.tolist(), rows.image_ids, rows.class_ids, strict=True):
        if class_id not in classes:
            hint = " (the sample's placeholder)" if class_id == "0" else ""
            problems.append((line, f"ClassId {class_id!r}{hint} of {image_id} is not one of {_CLASS_LIST}"))
        elif (image_id, class_id) in first_line:
            first = first_line[(image_id, class_id)]
            problems.append((line, f"{image_id} class {class_id} given twice (first on line {first})"))
        else:
            first_line[(image_id, class_id)] = line
    for i, problem in rle.parse_many(rows.rles, shape).problems.items():
        problems.append((int(rows.lines[i]), f"{rows.image_ids[i]} class {rows.class_ids[i]}: {problem}"))
    return [f"line {line}: {problem}" for line, problem in sorted(problems, key=lambda p: p[0])]


def _coverage_problems(rows: Rows, sample: Sample) -> list[str]:
    expected = set(sample.image_ids)
    first_line: dict[str, int] = {}
    classes_seen: dict[str, set[str]] = defaultdict(set)
    for image_id, class_id, line in zip(rows.image_ids, rows.class_ids, rows.lines, strict=True):
        first_line.setdefault(image_id, int(line))
        classes_seen[image_id].add(class_id)
    problems = [
        f"line {line}: image {i} is not in the sample" for i, line in first_line.items() if i not in expected
    ]
    for image_id in sample.image_ids:
        lacking = [str(c) for c in CLASSES if str(c) not in classes_seen.get(image_id, ())]
        if image_id not in first_line:
            problems.append(f"image {image_id} is missing")
        elif lacking:
            problems.append(f"image {image_id} has no row for ClassId {', '.join(lacking)}")
    return problems
