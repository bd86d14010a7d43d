"""Kaggle run-length encoding of Severstal masks, both directions, exact and fast.

Convention (the competition's): pairs `start length`, space separated; `start` is 1-based; pixels are numbered
top to bottom, then left to right (column-major / Fortran order over the (H, W) mask). An empty mask is "".

Neither direction transposes the image (numpy's uint8 transpose is the textbook versions' main cost): masks
stay C-ordered (H, W) and the column-major order lives only in the run arithmetic.
- `encode` looks only at the masked column range: vertical changes inside it (one comparison of shifted rows)
  plus changes across column boundaries, sorted into column-major order; the digits are written by numpy.
- `decode` cuts runs into vertical segments and sets their pixels with one scatter (whole columns by slice),
  so its cost follows the mask's area, not the image's.
- Parsing is one `np.fromstring` per string, or one for a whole batch (`parse_many`), after a strict check
  that the text holds only digits and spaces; `_bad_runs` is the one statement of what a well-formed run list
  is, and every malformed case is a ValueError naming the problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from steel_seg.competition import IMAGE_SHAPE


def encode(mask: np.ndarray) -> str:
    """Kaggle RLE of one mask.

    Args:
        mask: (H, W) bool or integer; any non-zero pixel is "on".

    Returns:
        "start length start length ..." with 1-based column-major starts; "" when the mask is empty.
    """
    if mask.ndim != 2:
        raise ValueError(f"encode expects an (H, W) mask, got shape {mask.shape}")
    columns = np.flatnonzero(_column_any(mask))
    if columns.size == 0:
        return ""
    first, stop = int(columns[0]), int(columns[-1]) + 1
    masked = mask[:, first:stop]
    bounds = _changes(masked if masked.dtype == np.bool_ else masked != 0) + first * mask.shape[0]
    pairs = np.empty_like(bounds)
    pairs[0::2] = bounds[0::2] + 1
    pairs[1::2] = bounds[1::2] - bounds[0::2]
    return _join(pairs)


def _join(values: np.ndarray) -> str:
    """Space-separated decimal text of (n,) positive int64, written as ASCII bytes by numpy.

    Python's `str` per number dominates encoding noisy masks (tens of thousands of runs); here each number's
    digits come from one integer division by powers of ten, leading zeros are dropped by a boolean mask.
    """
    if values.size < 64:
        return " ".join(map(str, values.tolist()))
    n_digits = len(str(int(values.max())))
    powers = 10 ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
    chars = np.full((values.size, n_digits + 1), ord(" "), np.uint8)
    chars[:, :n_digits] = values[:, None] // powers % 10 + ord("0")
    keep = np.ones(chars.shape, bool)
    keep[:, : n_digits - 1] = values[:, None] >= powers[:-1]
    return chars[keep][:-1].tobytes().decode("ascii")


def _column_any(mask: np.ndarray) -> np.ndarray:
    """(W,) non-zero where the column has an "on" pixel (one pass; uint8/bool need no `!= 0` copy)."""
    if mask.dtype in (np.uint8, np.bool_):
        return mask.max(axis=0)
    return (mask != 0).any(axis=0)


def _changes(on: np.ndarray) -> np.ndarray:
    """Column-major indices p (0-based, sorted) where pixel p differs from pixel p-1 (outside = off).

    Args:
        on: (H, w) bool, the masked column range; the columns either side of it are empty.

    Returns:
        (2R,) int64: run starts and (exclusive) ends, alternating.
    """
    height, width = on.shape
    rows, cols = np.divmod(np.flatnonzero(on[1:] != on[:-1]), width)
    inside = cols * height + rows + 1
    top, bottom = on[0], on[-1]
    before = np.concatenate(([False], bottom[:-1]))
    tops = np.flatnonzero(top != before) * height
    last = np.array([width * height] if bottom[-1] else [], np.int64)
    return np.sort(np.concatenate((inside, tops, last)))


def runs(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check one RLE string.

    Returns:
        (starts, lengths): (R,) int64 each; starts 0-based column-major, sorted, runs disjoint and inside the
        image.

    Raises:
        ValueError naming the problem: odd number of values, a value that is not a non-negative integer or
        is larger than the image, a start below 1, a zero length, runs out of order or overlapping, a run past
        the image's last pixel.
    """
    values = _values(rle)
    if values.size % 2:
        raise ValueError(f"RLE has an odd number of values ({values.size}); expected start/length pairs")
    starts, lengths = values[0::2] - 1, values[1::2]
    bad = _bad_runs(np.zeros(starts.size, np.int64), starts, lengths, shape[0] * shape[1])
    if bad.any():
        raise ValueError(_problem(rle, values, int(np.argmax(bad)), shape))
    return starts, lengths


def _bad_runs(owner: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n_pixels: int) -> np.ndarray:
    """(R,) bool: the runs that break a rule. THE rules of a well-formed RLE, for one string or many.

    Args:
        owner: (R,) int, the string each run belongs to (ascending); starts: (R,) 0-based; lengths: (R,).

    A run is bad when it starts before pixel 1 or past the image, has zero length, ends past the image's last
    pixel, or starts before the previous run of its string has ended (out of order or overlapping).
    """
    bad = (starts < 0) | (starts >= n_pixels) | (lengths < 1) | (lengths > n_pixels - starts)
    bad[1:] |= (owner[1:] == owner[:-1]) & (starts[1:] < starts[:-1] + lengths[:-1])
    return bad


def _problem(rle: str, values: np.ndarray, i: int, shape: tuple[int, int]) -> str:
    """What is wrong with run `i` (the first bad run) of the string `rle` of (2R,) `values`."""
    n_pixels = shape[0] * shape[1]
    if values.max() > n_pixels:
        biggest = max(rle.split(), key=int)
        return f"RLE value {biggest} is larger than the image ({n_pixels} pixels)"
    start, length = int(values[2 * i]), int(values[2 * i + 1])
    if start < 1:
        return "RLE start 0: starts are 1-based"
    if length < 1:
        return f"RLE run at start {start} has zero length"
    if i > 0 and start < values[2 * i - 2] + values[2 * i - 1]:
        before, before_length = int(values[2 * i - 2]), int(values[2 * i - 1])
        problem = "out of order" if start <= before else "overlapping"
        return f"RLE runs {problem}: start {start} follows the run {before} {before_length}"
    return (
        f"RLE run {start} {length} ends at pixel {start - 1 + length}, past the image's {n_pixels} pixels "
        f"({shape[0]}x{shape[1]})"
    )


def _all_digits(text: str) -> bool:
    """True when `text` holds only ASCII digits and spaces (Kaggle's form); one fast bytes pass."""
    return text.isascii() and not text.encode("ascii").translate(None, b"0123456789 ")


def _values(rle: str) -> np.ndarray:
    """(2R,) int64 values of an RLE string; any whitespace separates; ValueError names a bad token."""
    if rle.isspace():  # np.fromstring reads a blank string as [0]
        return np.zeros(0, np.int64)
    if not _all_digits(rle):
        tokens = rle.split()
        bad = next((t for t in tokens if not (t.isascii() and t.isdigit())), None)
        if bad is not None:
            kind = "negative" if bad[:1] == "-" and bad[1:].isdigit() else "not a non-negative integer"
            raise ValueError(f"RLE value {bad!r} is {kind}")
        rle = " ".join(tokens)
    return np.fromstring(rle, dtype=np.int64, sep=" ")


class ParsedRuns(NamedTuple):
    """Runs of K RLE strings: (R,) int64 arrays over all runs of the valid strings, and the invalid ones.

    owner: the string's index (ascending); starts: 0-based column-major; problems: {index: message}.
    """

    owner: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    problems: dict[int, str]


def parse_many(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> ParsedRuns:
    """Parse and check K RLE strings at once: one `np.fromstring` over all of them, vectorised checks.

    The strings are joined with a `-1` marker after each (no valid value is negative). A string that fails a
    check gets the message `runs` would raise and contributes no runs.
    """
    texts, problems = _clean_texts(rles)
    values = np.fromstring(" -1 ".join(texts) + " -1", dtype=np.int64, sep=" ")
    markers = np.flatnonzero(values < 0)
    counts = np.diff(markers, prepend=-1) - 1
    values = np.delete(values, markers)
    odd = counts % 2 == 1
    if odd.any():
        values = values[np.repeat(~odd, counts)]
        counts[odd] = 0
    owner = np.repeat(np.arange(len(texts)), counts // 2)
    starts, lengths = values[0::2] - 1, values[1::2]
    bad = _bad_runs(owner, starts, lengths, shape[0] * shape[1])
    for k in np.union1d(np.flatnonzero(odd), owner[bad]).tolist():
        problems[k] = _message(rles[k], shape)
    if problems:
        keep = ~np.isin(owner, list(problems))
        owner, starts, lengths = owner[keep], starts[keep], lengths[keep]
    return ParsedRuns(owner, starts, lengths, problems)


def _message(rle: str, shape: tuple[int, int]) -> str:
    """The message `runs` raises for a malformed string."""
    try:
        runs(rle, shape)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"RLE {rle!r} was flagged but passes `runs`")


def runs_many(
    rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner, starts, lengths) of K RLE strings (see `parse_many`); ValueError "RLE #k: ..." on a bad one."""
    parsed = parse_many(rles, shape)
    if parsed.problems:
        first = min(parsed.problems)
        raise ValueError(f"RLE #{first}: {parsed.problems[first]}")
    return parsed.owner, parsed.starts, parsed.lengths


def _clean_texts(rles: Sequence[str]) -> tuple[list[str], dict[int, str]]:
    """Strings fit for the joined parse (bad ones replaced by ""), and the syntax problems found."""
    texts, problems = list(rles), {}
    if _all_digits(" ".join(texts)):
        return texts, problems
    for k, text in enumerate(texts):
        if not _all_digits(text):
            try:
                texts[k] = " ".join(map(str, _values(text).tolist()))
            except ValueError as err:
                problems[k], texts[k] = str(err), ""
    return texts, problems


def decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Mask of one RLE string: "" or whitespace -> empty.

    Returns:
        (H, W) uint8 0/1, C-contiguous.

    Raises:
        ValueError naming the problem (see `runs`).
    """
    out = np.zeros(shape, np.uint8)
    if rle and not rle.isspace():
        _fill(out, *runs(rle, shape))
    return out


def _fill(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Set the runs in `out` ((H, W) uint8 zeros, C-contiguous) in place, in time proportional to the area.

    Runs are cut at column boundaries into vertical segments, whose pixels are set by one scatter (a segment's
    consecutive pixels are W apart in C order); whole columns inside a long run are set as one slice.
    """
    if starts.size <= 8:
        _fill_few(out, starts, lengths)
        return
    height, width = out.shape
    first = starts // height
    last = (starts + lengths - 1) // height
    rows, cols, sizes = starts - first * height, first, lengths
    if (first != last).any():
        rows, cols, sizes = _segments(out, starts, lengths, first, last)
    before = np.cumsum(sizes)
    total = int(before[-1])
    before -= sizes
    base = rows - before
    base *= width
    base += cols
    pixels = np.repeat(base, sizes)
    pixels += np.arange(0, total * width, width)
    out.reshape(-1)[pixels] = 1


def _fill_few(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """`_fill` for a handful of runs (a full mask is one): three slices per run beat the vectorised setup."""
    height = out.shape[0]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        (c0, r0), (c1, r1) = divmod(start, height), divmod(start + length - 1, height)
        if c0 == c1:
            out[r0 : r1 + 1, c0] = 1
            continue
        out[r0:, c0] = 1
        out[:, c0 + 1 : c1] = 1
        out[: r1 + 1, c1] = 1


def _segments(out: np.ndarray, starts, lengths, first, last) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, size) of the partial-column segments of all runs; sets the whole columns in `out`."""
    height = out.shape[0]
    for i in np.flatnonzero(last - first > 1).tolist():
        out[:, first[i] + 1 : last[i]] = 1
    cross = first != last
    head = starts - first * height
    rows = np.concatenate((head, np.zeros(np.count_nonzero(cross), np.int64)))
    cols = np.concatenate((first, last[cross]))
    tail = starts[cross] + lengths[cross] - last[cross] * height
    sizes = np.concatenate((np.where(cross, height - head, lengths), tail))
    return rows, cols, sizes


def encode_many(masks: np.ndarray | Iterable[np.ndarray]) -> list[str]:
    """RLE strings of a stack of masks: (K, H, W) -> K strings (class k+1 at index k)."""
    return [encode(mask) for mask in masks]


def decode_many(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Masks of K RLE strings -> (K, H, W) uint8 0/1; ValueError names a bad one."""
    out = np.zeros((len(rles), *shape), np.uint8)
    owner, starts, lengths = runs_many(rles, shape)
    bounds = np.searchsorted(owner, np.arange(len(rles) + 1)).tolist()
    for k in range(len(rles)):
        if bounds[k] < bounds[k + 1]:
            _fill(out[k], starts[bounds[k] : bounds[k + 1]], lengths[bounds[k] : bounds[k + 1]])
    return out
