"""Build ONE offline Kaggle kernel script and the Kaggle CLI metadata; the logic is steel_seg.bundle.

The kernel asks Kaggle for a T4 (`machine_shape`); slugs and titles are checked before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steel_seg.bundle import KaggleIds, build, summary
from steel_seg.engine.devices import GPU_MACHINE_SHAPES, RETIRED_MACHINE_SHAPES

ROOT = Path(__file__).resolve().parent
TEMPLATE = ROOT / "kernel" / "bootstrap.py.tmpl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = KaggleIds()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=ROOT / "weights",
        help="holds manifest.json, thresholds.json and the model dirs (default: weights)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "kernel", help="output dir (default: kernel)")
    parser.add_argument("--kaggle-user", help="Kaggle user of the metadata ids (none written without it)")
    parser.add_argument("--kernel-slug", default=defaults.kernel_slug)
    parser.add_argument("--weights-dataset", default=defaults.weights_slug, help="weights dataset slug")
    parser.add_argument("--competition", default=defaults.competition)
    parser.add_argument("--license", default=defaults.license, help="license of the weights dataset")
    parser.add_argument(
        "--machine-shape",
        default=defaults.machine_shape,
        help=f"the Kaggle GPU the kernel asks for (default {defaults.machine_shape}, two T4s): one of "
        f"{', '.join(GPU_MACHINE_SHAPES)}; retired ones ({', '.join(RETIRED_MACHINE_SHAPES)}) with a warning",
    )
    parser.add_argument(
        "--allow-recipe-mismatch",
        action="store_true",
        help="build although the rules were tuned on another ensemble than the manifest ships (the kernel "
        "then logs the differences instead of stopping)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ids = KaggleIds(
        user=args.kaggle_user,
        kernel_slug=args.kernel_slug,
        weights_slug=args.weights_dataset,
        competition=args.competition,
        license=args.license,
        machine_shape=args.machine_shape,
    )
    try:
        result = build(
            args.weights_dir, args.out, TEMPLATE, ids, allow_recipe_mismatch=args.allow_recipe_mismatch
        )
    except ValueError as exc:
        print(f"build_kernel: error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
