"""Does the CPU demo config learn? Train it on a synthetic set and compare with the all-empty baseline.

    .venv/bin/python benchmarks/bench_learning.py [--config configs/demo_cpu.yaml] [--data DIR]

Generates the synthetic set once (`steel_seg.synthetic.dataset.write_dataset`), trains the config on fold 0 of
`folds: random 5` (or the config's folds), and prints one JSON line: validation mean Dice of the best epoch
at default post-processing (threshold 0.5), the all-empty submission's Dice on the same images, the Dice on
the non-empty truth pairs, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from steel_seg.formats import metric  # noqa: E402
from steel_seg.formats.labels import Labels  # noqa: E402
from steel_seg.synthetic.dataset import write_dataset  # noqa: E402
from steel_seg.train.config import TrainConfig  # noqa: E402
from steel_seg.train.loop import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def empty_baseline(train_csv: Path, images_dir: Path, val_ids: list[str]) -> float:
    labels = Labels.from_csv(train_csv, images_dir)
    empty = pd.DataFrame(columns=["ImageId", "ClassId", "EncodedPixels"])
    return metric.score(labels.table, empty, val_ids).mean_dice


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_cpu.yaml")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "steel_seg_bench_synth")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "steel_seg_bench_run")
    p.add_argument("--minutes", type=float, default=10.0, help="skip epochs that would end past this")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    args = p.parse_args()
    if not (args.data / "train.csv").is_file():
        write_dataset(args.data, args.n_train, 0, seed=0)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    overrides |= {"train.time_limit_min": args.minutes, "data.train_csv": str(args.data / "train.csv"),
                  "data.images_dir": str(args.data / "train_images")}  # fmt: skip
    cfg = TrainConfig.from_yaml(args.config, overrides)
    started = time.time()
    result = train(cfg, args.out)
    seconds = time.time() - started
    best = max(result.records, key=lambda r: r["val_dice"])
    folds = pd.read_csv(json.loads((args.out / "run.json").read_text())["folds_csv"])
    val_ids = sorted(folds.loc[folds["fold"] == cfg.data.fold, "ImageId"])
    baseline = empty_baseline(args.data / "train.csv", args.data / "train_images", val_ids)
    print(json.dumps({
        "config": str(args.config), "n_train_images": args.n_train, "n_val_images": len(val_ids),
        "epochs": result.epochs, "best_epoch": best["epoch"], "val_mean_dice": round(best["val_dice"], 4),
        "all_empty_mean_dice": round(baseline, 4), "val_dice_nonempty": round(best["dice_nonempty"], 4),
        "val_dice_empty": round(best["dice_empty"], 4),
        "per_class": [round(best[f"dice_{c}"], 4) for c in (1, 2, 3, 4)],
        "last_epoch_val_dice": round(result.records[-1]["val_dice"], 4), "seconds": round(seconds, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
