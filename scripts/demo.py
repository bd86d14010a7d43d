"""`make demo`: the whole user path on a synthetic Severstal-like set, end to end, on a CPU.

`steel-seg synth` (once) -> `steel-seg experiment run experiments/demo.yaml` (folds -> train -> manifest ->
oof of the manifest's own ensemble -> tune -> reports (eda, eval) -> build_kernel.py -> the built kernel's dry
run on the synthetic test images -> validate) -> the comparison: the tuned kernel's Dice against the synthetic
truth next to the all-empty baseline; then, where the real sample sits in ../shared, a kernel dry run on
those real images and a validation of its submission. Every step is the real command a user types (run as a
subprocess); a second `make demo` runs no step of the experiment again, only prints the comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from real_sample import available, real_sample_test_dir

from steel_seg.formats.metric import score_files
from steel_seg.formats.submission import SubmissionWriter, read_sample

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = Path("experiments") / "demo.yaml"
DEMO = ROOT / "demo"
DATA = DEMO / "data"
TRAIN_IMAGES, TEST_IMAGES, SEED = 300, 60, 0


@dataclass
class Demo:
    """The demo's commands, timed."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    def run(self, title: str, *args: str | Path) -> None:
        print(f"\n=== {title}\n$ {' '.join(_shown(a) for a in args)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([str(a) for a in args], cwd=ROOT, env=_env())
        self.steps.append((title, time.perf_counter() - start))
        if result.returncode != 0:
            sys.exit(f"demo: step '{title}' failed with exit code {result.returncode}")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


def _shown(arg: str | Path) -> str:
    text = str(arg)
    if text in (sys.executable, str(Path(sys.executable).parent / "steel-seg")):
        return Path(text).name
    return text.replace(str(ROOT) + "/", "")


def steel_seg(*args: str | Path) -> list[str | Path]:
    """The `steel-seg` console script of this environment, with `args`."""
    return [Path(sys.executable).parent / "steel-seg", *args]


def empty_baseline(sample_csv: Path, truth_csv: Path, images: Path) -> float:
    """Mean Dice of the all-empty submission: every pair predicted empty."""
    path = DEMO / "submission_all_empty.csv"
    SubmissionWriter(path, read_sample(sample_csv)).close()
    return score_files(truth_csv, path, images).mean_dice


def main() -> int:
    start = time.perf_counter()
    demo = Demo()
    if not (DATA / "train.csv").is_file():
        demo.run(
            "synthesise a Severstal-like set",
            *steel_seg(
                "synth", "--out", DATA, "--images", TRAIN_IMAGES, "--test-images", TEST_IMAGES, "--seed", SEED
            ),
        )
    demo.run("the experiment: folds, train, manifest, oof, tune, reports, kernel, dry run, validate",
             *steel_seg("experiment", "run", EXPERIMENT, "--gpus", "none"))  # fmt: skip
    tuned = score_files(DATA / "test_truth.csv", DEMO / "submission.csv", DATA / "test_images")
    baseline = empty_baseline(DATA / "sample_submission.csv", DATA / "test_truth.csv", DATA / "test_images")
    real = None
    if available():
        real_dir = real_sample_test_dir(DEMO / "real_sample")
        real = DEMO / "submission_real_sample.csv"
        demo.run(
            "dry-run the kernel on the real Severstal sample",
            *[sys.executable, DEMO / "kernel" / "kernel.py", "--data-dir", real_dir],
            *["--weights-dir", DEMO / "weights", "--out", real, "--device", "cpu"],
        )
        demo.run(
            "validate that submission",
            *steel_seg("validate", "--sample", real_dir / "sample_submission.csv", "--pred", real),
        )
    print_summary(demo, tuned, baseline, real, time.perf_counter() - start)
    return 0


def print_summary(demo: Demo, tuned, baseline: float, real: Path | None, seconds: float) -> None:
    print("\n" + "=" * 72 + "\nsteel_seg demo: summary\n" + "=" * 72)
    for title, secs in demo.steps:
        print(f"  {secs:7.1f} s  {title}")
    print(f"  {seconds:7.1f} s  in all (each step's time: steel-seg experiment status {EXPERIMENT})\n")
    per_class = "  ".join(f"c{c} {d:.3f}" for c, d in tuned.per_class.items())
    print(
        f"synthetic test set ({tuned.n_pairs} pairs): tuned kernel mean Dice {tuned.mean_dice:.4f} "
        f"vs all-empty baseline {baseline:.4f} ({tuned.mean_dice - baseline:+.4f})"
    )
    print(f"  per class: {per_class}")
    rules = json.loads((DEMO / "weights" / "thresholds.json").read_text())
    tuning = rules["tuning"]
    print(
        f"  OOF mean Dice before / after tuning: {tuning['dice_before']['mean']:.4f} -> "
        f"{tuning['dice_after']['mean']:.4f} on {tuning['n_images']} images"
    )
    print("\nwritten:")
    for path, what in [
        (DEMO / "data", "synthetic train/test set, train.csv, sample_submission.csv, test_truth.csv"),
        (DEMO / "runs" / "demo-f0", "training run: best/, last/, checkpoint.pt, logs"),
        (DEMO / "oof", "out-of-fold probabilities of the ensemble the kernel ships"),
        (DEMO / "weights", "weights dataset: model dir, manifest.json, thresholds.json"),
        (DEMO / "kernel" / "kernel.py", "the one-file offline kernel (+ kernel-metadata.json)"),
        (DEMO / "submission.csv", "its dry-run submission (validated)"),
        (DEMO / "reports" / "eda" / "report.html", "EDA report"),
        (DEMO / "reports" / "eval" / "report.html", "evaluation report"),
        (DEMO / "steps", "each step's record (what it was made from); logs/: each step's output"),
    ]:
        print(f"  {_shown(path):42s} {what}")
    if real is not None:
        print(f"  {_shown(real):42s} kernel dry-run on the real sample (validated)")
    else:
        print("  (no ../shared/data/severstal_sample here: the real-sample dry run was skipped)")


if __name__ == "__main__":
    sys.exit(main())
