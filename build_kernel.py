"""Build ONE offline Kaggle kernel script and the Kaggle CLI metadata; the logic is steel_seg.bundle.

The kernel asks Kaggle for a T4 (`machine_shape`); slugs and titles are checked before anything is written.
Kaggle runs the script without a command line: --budget-s, --batch-size, --push-sample and --final-format
are baked into it as its defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steel_seg.bundle import KaggleIds, KernelDefaults, build, summary
from steel_seg.competition import FINAL_FORMATS
from steel_seg.engine.devices import GPU_MACHINE_SHAPES, RETIRED_MACHINE_SHAPES
from steel_seg.engine.options import count, seconds

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
    baked = parser.add_argument_group("kernel options baked into the script (default: the kernel's own)")
    baked.add_argument(
        "--budget-s", type=seconds, help="hard time limit on Kaggle (kernel default: the manifest's)"
    )
    baked.add_argument("--batch-size", type=count, help="images per batch on Kaggle (kernel default: 8)")
    baked.add_argument(
        "--push-sample", type=count, help="images the push run predicts (kernel default: 200; 0: all)"
    )
    baked.add_argument("--final-format", choices=FINAL_FORMATS, help="the final-stage submission's form")
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
    defaults = KernelDefaults(
        budget_s=args.budget_s,
        batch_size=args.batch_size,
        push_sample=args.push_sample,
        final_format=args.final_format,
        allow_recipe_mismatch=args.allow_recipe_mismatch,
    )
    try:
        result = build(
            args.weights_dir,
            args.out,
            TEMPLATE,
            ids,
            defaults=defaults,
        )
    except ValueError as exc:
        print(f"build_kernel: error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
