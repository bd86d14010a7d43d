"""Does a pseudo-label round help? Two arms of the same config on a fair synthetic protocol, on the CPU.

    .venv/bin/python benchmarks/bench_pseudo.py [--config configs/demo_cpu.yaml] [--labelled 120]
        [--unlabelled 300] [--heldout 150] [--out DIR] [--seed 0]
        [--pseudo-args '--negative 0.2' --arm-b B2 --reuse-a]

Three disjoint synthetic sets, each from its own seed: a small labelled set; an unlabelled set, whose truth
is read only to measure the label precision of the selection; a held-out set with truth. The user's own
commands, as subprocesses:

- arm A: `steel-seg train` on the labelled set (fold 0 of `folds: random 4` is its validation fold), `oof`
  of that fold (TTA none,h), `tune` on it, `manifest` (TTA none,h);
- `steel-seg pseudo` with arm A's weights dir on the unlabelled set (default limits unless given);
- arm B: the same config, seed and epochs, plus `data.extra_sources: [the selection]`; `oof` of the same
  fold and `tune` on it (the pseudo-labelled images never reach that fold).

Both arms are scored on the held-out set through the engine (`iter_probs`, TTA none,h) and `metric`, at the
default rules (threshold 0.5 only) and at each arm's own rules tuned on the same OOF fold. Prints one JSON
line: both arms' scores, the selection's size and label precision against the unlabelled set's truth (and
arm A's kernel on all of that set, for contrast), and the wall time of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steel_seg.competition import CLASSES, TEST_IMAGES, TIDY_COLUMNS  # noqa: E402
from steel_seg.engine.ensemble import Ensemble  # noqa: E402
from steel_seg.engine.predict import iter_probs  # noqa: E402
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import (
    metric,
    rle,  # noqa: E402
)
from steel_seg.formats.labels import Labels, read_label_file  # noqa: E402
from steel_seg.models.manifest import MANIFEST_FILE, Manifest  # noqa: E402
from steel_seg.postprocess.rules import THRESHOLDS_FILE, Rules, apply
from steel_seg.synthetic.dataset import write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "steel-seg"
VIEWS = "none,h"
SEEDS = {"labelled": 11, "unlabelled": 12, "heldout": 13}
TIMES: dict[str, float] = {}


def step(name: str, *args: str | Path) -> None:
    """Run one `steel-seg` command, timed; stop the benchmark when it fails."""
    print(f"\n=== {name}\n$ steel-seg {' '.join(map(str, args))}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([str(CLI), *map(str, args)], cwd=ROOT)
    TIMES[name] = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        sys.exit(f"bench_pseudo: step {name!r} failed with exit code {done.returncode}")


def make_sets(out: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """The three synthetic sets: the labelled one as a train set, the other two as test sets with truth."""
    start, dirs = time.perf_counter(), {}
    for name, n in sizes.items():
        dirs[name] = out / name
        if not (dirs[name] / "synthetic.json").is_file():
            n_train, n_test = (n, 0) if name == "labelled" else (0, n)
            write_dataset(dirs[name], n_train, n_test, "original", seed=SEEDS[name], progress=False)
    TIMES["synthesise"] = round(time.perf_counter() - start, 1)
    return dirs


def train_arm(name: str, config: Path, labelled: Path, out: Path, extra: list[dict], seed: int) -> Path:
    """Train, predict the OOF fold, tune on it, collect the weights dir; returns the weights dir."""
    data = {"data.train_csv": labelled / "train.csv", "data.images_dir": labelled / "train_images",
            "data.folds": "random 4", "data.fold": 0, "data.extra_sources": json.dumps(extra),
            "train.seed": seed, "train.progress": "false"}  # fmt: skip
    sets = [a for key, value in data.items() for a in ("--set", f"{key}={value}")]
    run, oof, weights = out / "runs" / name, out / "oof" / name, out / "weights" / name
    step(f"{name}: train", "train", "--config", config, "--out", run, *sets)
    step(
        f"{name}: oof", "oof", "--run", run, "--out", oof, "--device", "cpu", "--tta", VIEWS, "--no-progress"
    )
    step(f"{name}: tune", "tune", "--oof", oof, "--out", weights / THRESHOLDS_FILE)
    step(f"{name}: manifest", "manifest", "--weights-dir", weights, "--model", f"{name}={run / 'best'}",
         "--tta", VIEWS)  # fmt: skip
    return weights


def predictions(weights: Path, images: Path, rules: list[Rules]) -> list[pd.DataFrame]:
    """Tidy prediction rows of every image of a folder under each of `rules`: the engine's probabilities
    (computed once), the kernel's rules (`apply` equals the engine's device path)."""
    ensemble = Ensemble.load(weights, Manifest.load(weights / MANIFEST_FILE), "cpu")
    paths = [images / name for name in metric.image_files(images)]
    rows: list[list] = [[] for _ in rules]
    for image_id, probs, cls in iter_probs(ensemble, paths, PredictSettings(workers=1, progress=False)):
        for table, r in zip(rows, rules, strict=True):
            encoded = rle.encode_many(apply(probs, r, cls))
            table += [(image_id, c, e) for c, e in zip(CLASSES, encoded, strict=True) if e]
    return [pd.DataFrame(table, columns=list(TIDY_COLUMNS)) for table in rows]


def scores(weights: Path, heldout: Path) -> dict[str, Any]:
    """Mean Dice on the held-out set at the default rules and at the arm's tuned rules (also per class)."""
    truth = Labels.from_csv(heldout / "test_truth.csv", heldout / TEST_IMAGES)
    start = time.perf_counter()
    rules = [Rules(), Rules.load(weights / THRESHOLDS_FILE)]
    preds = predictions(weights, heldout / TEST_IMAGES, rules)
    TIMES[f"score {weights.name}"] = round(time.perf_counter() - start, 1)
    default, tuned = (metric.score(truth.table, pred, truth.image_ids) for pred in preds)
    per_class = [round(tuned.per_class[c], 4) for c in CLASSES]
    return {"default_rules": round(default.mean_dice, 4), "tuned_rules": round(tuned.mean_dice, 4),
            "tuned_per_class": per_class}  # fmt: skip


def label_precision(selection: Path, unlabelled: Path, weights: Path) -> dict:
    """The selection against the unlabelled set's truth; arm A's kernel on the whole set for contrast."""
    truth = Labels.from_csv(unlabelled / "test_truth.csv", unlabelled / TEST_IMAGES)
    chosen = read_label_file(selection / "train.csv")
    picked = metric.score(truth.table, chosen.table, chosen.image_ids) if chosen.image_ids else None
    rules = Rules.load(weights / THRESHOLDS_FILE)
    pred = predictions(weights, unlabelled / TEST_IMAGES, [rules])[0]
    kernel = metric.score(truth.table, pred, truth.image_ids)
    pairs = picked.pairs if picked else pd.DataFrame(columns=["truth_area", "pred_area"])
    presence = (pairs["truth_area"] > 0) == (pairs["pred_area"] > 0)
    return {
        "unlabelled_images": len(truth.image_ids),
        "selected_images": len(chosen.image_ids),
        "selected_defect_pairs": int((pairs["pred_area"] > 0).sum()),
        "selected_mean_dice": round(picked.mean_dice, 4) if picked else None,
        "selected_presence_accuracy": round(float(np.mean(presence)), 4) if len(pairs) else None,
        "kernel_mean_dice_all_unlabelled": round(kernel.mean_dice, 4),
        "summary": json.loads((selection / "summary.json").read_text()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_cpu.yaml")
    p.add_argument("--labelled", type=int, default=120)
    p.add_argument("--unlabelled", type=int, default=300)
    p.add_argument("--heldout", type=int, default=150)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "steel_seg_bench_pseudo")
    p.add_argument("--pseudo-args", default="", help="`steel-seg pseudo` options, e.g. '--negative 0.2'")
    p.add_argument("--arm-b", default="B", help="name of arm B's dirs (one per set of --pseudo-args)")
    p.add_argument("--reuse-a", action="store_true", help="arm A's weights dir of an earlier run in --out")
    p.add_argument("--seed", type=int, default=0, help="train.seed of both arms (and the folds)")
    args = p.parse_args()
    started = time.perf_counter()
    sizes = {"labelled": args.labelled, "unlabelled": args.unlabelled, "heldout": args.heldout}
    sets = make_sets(args.out, sizes)
    weights_a = args.out / "weights" / "A"
    if not (args.reuse_a and (weights_a / MANIFEST_FILE).is_file()):
        weights_a = train_arm("A", args.config, sets["labelled"], args.out, [], args.seed)
    selection = args.out / "pseudo" / args.arm_b
    step("pseudo-label the unlabelled set", "pseudo", "--weights-dir", weights_a,
         "--images", sets["unlabelled"] / TEST_IMAGES, "--out", selection, "--device", "cpu",
         "--overwrite", "--no-progress", *args.pseudo_args.split())  # fmt: skip
    source = {"train_csv": str(selection / "train.csv"), "images_dir": str(sets["unlabelled"] / TEST_IMAGES)}
    weights_b = train_arm(args.arm_b, args.config, sets["labelled"], args.out, [source], args.seed)
    result = {
        "config": str(args.config), "seed": args.seed, "pseudo_args": args.pseudo_args,
        "labelled_images": args.labelled,
        "oof_fold_images": args.labelled // 4, "heldout_images": args.heldout,
        "heldout_all_empty": empty_score(sets["heldout"]),
        "A_labelled_only": scores(weights_a, sets["heldout"]),
        f"{args.arm_b}_labelled_plus_pseudo": scores(weights_b, sets["heldout"]),
        "selection": label_precision(selection, sets["unlabelled"], weights_a),
        "seconds": TIMES, "wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print(json.dumps(result))


def empty_score(heldout: Path) -> float:
    truth = Labels.from_csv(heldout / "test_truth.csv", heldout / TEST_IMAGES)
    return round(metric.score(truth.table, truth.table.iloc[:0], truth.image_ids).mean_dice, 4)


if __name__ == "__main__":
    main()
