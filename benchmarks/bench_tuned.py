"""Rules tuned on what ships vs rules tuned on one member: one ensemble, two arms, a fair synthetic protocol.

    .venv/bin/python benchmarks/bench_tuned.py [--train 200] [--heldout 120] [--epochs 8] [--out DIR]
        [--seed 0]

One ensemble: an FPN and a Unet (the demo's CPU config, `configs/demo_cpu.yaml`, and its Unet variant) and an
image-level classifier, each trained on folds 0 and 1 of a 2-fold `steel-seg folds` split of a synthetic
train set; a held-out synthetic set with truth, from another seed. The user's own commands, as subprocesses:

- arm A, what ships: `steel-seg manifest` of the six models (TTA none,h), `steel-seg oof --weights-dir`,
  `steel-seg tune` on it, `build_kernel.py`;
- arm B, the path before this change: `steel-seg oof --run` of the FPN's two runs (TTA none,h), `tune` on
  them, its max-pixel gate written as `gate` (what `tune` wrote before `seg_gate` existed, so the kernel
  applies it to the classifier's probability), the same manifest, `build_kernel.py
  --allow-recipe-mismatch`.

Both kernels run on the held-out images (`--devices cpu`) and are scored against the truth. Prints one JSON
line: both arms' held-out mean Dice (and per class), their tuned OOF Dice, the rules, the steps' times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steel_seg.competition import TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES  # noqa: E402
from steel_seg.formats import metric  # noqa: E402
from steel_seg.postprocess.rules import THRESHOLDS_FILE, Rules  # noqa: E402
from steel_seg.synthetic.dataset import write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "steel-seg"
CONFIG = ROOT / "configs" / "demo_cpu.yaml"
VIEWS = "none,h"
ENGINE = ["--device", "cpu", "--workers", "1", "--no-progress"]
MODELS = {
    "fpn": [],
    "unet": ["model.arch=Unet", "model.decoder_channels=[64, 32, 16, 16, 8]"],
    "cls": ["model.arch=Classifier", "model.decoder_channels=[]", "model.seg_prior=null"],
}
TIMES: dict[str, float] = {}


def run(name: str, *args: str | Path) -> None:
    """One command (`steel-seg ...` or `python ...`), timed; the benchmark stops when it fails."""
    command = [str(a) for a in args]
    print(f"\n=== {name}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    TIMES[name] = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        sys.exit(f"bench_tuned: step {name!r} failed with exit code {done.returncode}")


def train_all(out: Path, data: Path, epochs: int, seed: int) -> dict[tuple[str, int], Path]:
    """The three models on folds 0 and 1: the six run dirs."""
    run(
        "folds",
        CLI,
        "folds",
        "--train-csv",
        data / TRAIN_CSV,
        "--images",
        data / TRAIN_IMAGES,
        "--k",
        "2",
        "--out",
        out / "folds.csv",
    )
    common = [
        f"data.train_csv={data / TRAIN_CSV}",
        f"data.images_dir={data / TRAIN_IMAGES}",
        f"data.folds_csv={out / 'folds.csv'}",
        "data.folds=null",
        f"schedule.epochs={epochs}",
        f"train.seed={seed}",
        "train.progress=false",
    ]
    runs = {}
    for name, extra in MODELS.items():
        for fold in (0, 1):
            runs[name, fold] = out / "runs" / f"{name}-f{fold}"
            sets = [a for s in (*common, *extra) for a in ("--set", s)]
            run(
                f"train {name} f{fold}",
                CLI,
                "train",
                "--config",
                CONFIG,
                "--fold",
                str(fold),
                "--out",
                runs[name, fold],
                *sets,
            )
    return runs


def kernel_dice(weights: Path, heldout: Path, out: Path, *build: str) -> dict:
    """Build the kernel of `weights`, run it on the held-out images, score it against their truth."""
    kernel = out / "kernel"
    run(
        f"build {out.name}",
        sys.executable,
        "build_kernel.py",
        "--weights-dir",
        weights,
        "--out",
        kernel,
        *build,
    )
    submission = out / "submission.csv"
    run(
        f"kernel {out.name}",
        sys.executable,
        kernel / "kernel.py",
        "--data-dir",
        heldout,
        "--weights-dir",
        weights,
        "--out",
        submission,
        *ENGINE,
    )
    scored = metric.score_files(heldout / "test_truth.csv", submission, heldout / TEST_IMAGES)
    return {
        "mean": round(scored.mean_dice, 4),
        "per_class": {c: round(v, 4) for c, v in scored.per_class.items()},
    }


def rules_record(weights: Path) -> dict:
    rules = Rules.load(weights / THRESHOLDS_FILE)
    return {
        "oof_dice_after": round(rules.tuning["dice_after"]["mean"], 4),
        "gate_source": rules.tuning["gate_source"],
        "rules": [
            [c.pixel_threshold, c.min_component, c.min_area, c.gate, c.seg_gate] for c in rules.classes
        ],
    }


def as_before(path: Path) -> None:
    """The rules as `tune` wrote them before `seg_gate` existed: the max-pixel gate as `gate`, which an
    ensemble with a classifier then applies to the classifier's probability."""
    rules = Rules.load(path)
    classes = tuple(dataclasses.replace(c, gate=c.seg_gate, seg_gate=0.0) for c in rules.classes)
    dataclasses.replace(rules, classes=classes).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=200, help="synthetic train images (default 200)")
    parser.add_argument("--heldout", type=int, default=120, help="held-out synthetic images (default 120)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each of the six runs (default 8)")
    parser.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir, removed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_tuned_"))
    start = time.perf_counter()
    data, heldout = out / "train_set", out / "heldout"
    write_dataset(data, args.train, 0, "rerelease", seed=args.seed + 21, progress=False)
    write_dataset(heldout, 0, args.heldout, "rerelease", seed=args.seed + 22, progress=False)
    runs = train_all(out, data, args.epochs, args.seed)
    weights = out / "A" / "weights"
    models = [a for (name, fold), r in runs.items() for a in ("--model", f"{name}-f{fold}={r / 'best'}")]
    run("manifest", CLI, "manifest", "--weights-dir", weights, "--tta", VIEWS, *models)
    run("A: oof of the ensemble", CLI, "oof", "--weights-dir", weights, "--out", out / "A" / "oof", *ENGINE)
    run("A: tune", CLI, "tune", "--oof", out / "A" / "oof", "--out", weights / THRESHOLDS_FILE)
    weights_b = out / "B" / "weights"
    shutil.copytree(weights, weights_b, ignore=shutil.ignore_patterns(THRESHOLDS_FILE))
    for fold in (0, 1):
        run(
            f"B: oof of fpn f{fold}",
            CLI,
            "oof",
            "--run",
            runs["fpn", fold],
            "--out",
            out / "B" / f"oof-f{fold}",
            "--tta",
            VIEWS,
            *ENGINE,
        )
    oofs = [a for fold in (0, 1) for a in ("--oof", out / "B" / f"oof-f{fold}")]
    run("B: tune", CLI, "tune", *oofs, "--out", weights_b / THRESHOLDS_FILE)
    as_before(weights_b / THRESHOLDS_FILE)
    result = {
        "A_tuned_on_the_ensemble": {
            **rules_record(weights),
            "heldout": kernel_dice(weights, heldout, out / "A"),
        },
        "B_tuned_on_one_member": {
            **rules_record(weights_b),
            "heldout": kernel_dice(weights_b, heldout, out / "B", "--allow-recipe-mismatch"),
        },
        "sizes": {"train": args.train, "heldout": args.heldout, "epochs": args.epochs},
        "seconds": {**TIMES, "all": round(time.perf_counter() - start, 1)},
    }
    print(json.dumps(result))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
