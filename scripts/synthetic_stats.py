"""Derive the synthetic set's statistics (`src/steel_seg/synthetic/stats.json`) from the real train index.

    python scripts/synthetic_stats.py ../shared/data/severstal_sample/train_index_full_12568.csv \\
        --out src/steel_seg/synthetic/stats.json

The index lists every one of the 12,568 train images with its mask area per class (0 = absent); the statistics
are the class co-occurrence counts and per-class area quantiles that `steel-seg synth` draws from. A test
checks that the shipped file equals a fresh derivation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from steel_seg.competition import CLASSES, IMAGE_ID
from steel_seg.synthetic.dataset import AREA_LEVELS, STATS_PATH, SyntheticStats

INDEX_COLUMNS = ("image_id", *(f"area_class_{c}" for c in CLASSES))


def read_index(path: str | Path) -> pd.DataFrame:
    """Read the per-image train index (`train_index_full_12568.csv`).

    Returns:
        index ImageId (sorted), int64 columns 1..4: the class's mask area in px (0 = absent).

    Raises:
        ValueError naming the file (and the row) on missing columns, non-integer or negative areas, repeats.
    """
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(INDEX_COLUMNS)}")
    areas = pd.DataFrame(index=pd.Index(table["image_id"], name=IMAGE_ID))
    for c in CLASSES:
        column = table[f"area_class_{c}"]
        bad = ~column.str.fullmatch(r"\d+")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: row {row + 2}: area_class_{c} {column.iloc[row]!r} is not a pixel count"
            )
        areas[c] = column.astype(np.int64).to_numpy()
    repeats = areas.index[areas.index.duplicated()]
    if len(repeats):
        raise ValueError(f"{path}: image {repeats[0]} appears more than once")
    return areas.sort_index()


def derive_stats(index_csv: str | Path) -> SyntheticStats:
    """Class co-occurrence counts and per-class area quantiles of the real train set, from its index."""
    areas = read_index(index_csv)
    present = areas.to_numpy() > 0
    keys = ["|".join(str(c) for c, on in zip(CLASSES, row, strict=True) if on) for row in present]
    counts = pd.Series(keys).value_counts()
    quantiles = {
        c: tuple(int(q) for q in np.quantile(areas[c][areas[c] > 0], AREA_LEVELS, method="lower"))
        for c in CLASSES
    }
    return SyntheticStats(
        n_images=len(areas),
        combinations={k: int(counts[k]) for k in sorted(counts.index, key=lambda k: (-counts[k], k))},
        area_levels=AREA_LEVELS,
        area_quantiles=quantiles,
        source=Path(index_csv).name,
    )


# ------------------------------------------------------------------------------------------------ one image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("index", type=Path, help="train_index_full_12568.csv")
    parser.add_argument("--out", type=Path, default=STATS_PATH, help=f"default {STATS_PATH}")
    args = parser.parse_args(argv)
    try:
        stats = derive_stats(args.index)
    except (OSError, ValueError) as exc:
        print(f"synthetic_stats: {exc}", file=sys.stderr)
        return 2
    stats.save(args.out)
    print(f"wrote {args.out}: {stats.n_images} images, {len(stats.combinations)} class combinations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
