"""`make kaggle-check`: the built kernel run with Kaggle's packages (kaggle/requirements.txt), before upload.

Which kernel: yours (`make kaggle-check KERNEL=kernel WEIGHTS=weights`: the folder build_kernel.py wrote and
the weights dir it was built from), else one built now with build_kernel.py from `WEIGHTS`, the demo's
weights (`make demo`), or a random-weights model of configs/demo_cpu.yaml's architecture. Test images: the
demo's when it has run, else a small synthetic set. It runs the kernel with the Kaggle venv's python (no
steel_seg, smp or albumentations there) with `--strict` on those images and, where ../shared holds it, on
the real sample; validates each submission with `steel-seg validate` and prints what the kernel saw. Exit
status 1 on any problem; the work dir is then kept for a look.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from real_sample import available, real_sample_test_dir

from steel_seg import competition
from steel_seg.formats.submission import read_predictions
from steel_seg.kernel import LOGGED_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS, DEMO_DATA = ROOT / "demo" / "weights", ROOT / "demo" / "data"
DEMO_CONFIG = ROOT / "configs" / "demo_cpu.yaml"
RULES = ROOT / "weights" / "thresholds.json"
ABSENT = ("steel_seg", "segmentation_models_pytorch", "albumentations")  # as on Kaggle, or on purpose
SYNTH_TEST_IMAGES, SEED = 16, 0
VERSION_LINE = re.compile(rf" INFO ({'|'.join(LOGGED_PACKAGES)}) (\S+) from (\S+)$")
PYTHON_LINE = re.compile(r" INFO (python) (\S+) \((\S+)\)")


@dataclass
class Run:
    """One kernel run on one test folder and what came of it."""

    name: str
    images: int
    masks: int | None  # non-empty rows of a valid submission
    seconds: float
    kernel_code: int
    validate_code: int
    versions: list[tuple[str, str, str]]  # (name, version, origin) as the kernel logged them

    @property
    def ok(self) -> bool:
        seen_all = {name for name, _, _ in self.versions} == {"python", *LOGGED_PACKAGES}
        return self.kernel_code == 0 and self.validate_code == 0 and seen_all


def step(title: str, args: list, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `args`, echoing its output as it comes; returns the exit code and the output lines."""
    print(f"\n=== {title}\n$ {' '.join(str(a) for a in args)}", flush=True)
    proc = subprocess.Popen(
        [str(a) for a in args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    return proc.wait(), lines


def kaggle_env(work: Path) -> dict[str, str]:
    """The environment minus anything that could reach this project's packages; temp files under `work`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    (work / "tmp").mkdir(exist_ok=True)
    return {**env, "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(work / "tmp")}


def present_packages(python: Path, env: dict[str, str]) -> list[str]:
    """Those of ABSENT that `python` can import."""
    probe = f"import importlib.util as u; print(' '.join(n for n in {ABSENT!r} if u.find_spec(n)))"
    result = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return result.stdout.split()


def synthetic_test_set(work: Path) -> Path:
    """A small synthetic test set (sample submission + test images)."""
    data = work / "data"
    synth = ["synth", "--out", data, "--images", 0, "--test-images", SYNTH_TEST_IMAGES, "--seed", SEED]
    code, _ = step("synthesise a small test set", [steel_seg_cli(), *synth])
    if code:
        sys.exit(f"kaggle_check: steel-seg synth failed with exit code {code}")
    return data


def random_weights(work: Path) -> Path:
    """A weights dir with one random-init model of the demo config's arch."""
    import torch

    from steel_seg.models import factory
    from steel_seg.models.manifest import write_manifest
    from steel_seg.train.config import TrainConfig

    weights = work / "weights"
    spec = TrainConfig.from_yaml(DEMO_CONFIG).model.spec
    torch.manual_seed(SEED)
    factory.save(factory.build_model(spec), spec, weights / "demo-random")
    write_manifest(weights, ["demo-random"], tta=("none", "h"))
    shutil.copyfile(RULES, weights / RULES.name)
    print(f"random-init {spec.arch} {spec.encoder} ({DEMO_CONFIG.name}) and {RULES} -> {weights}")
    return weights


def sources(args: argparse.Namespace, work: Path) -> tuple[Path | None, Path, Path]:
    """(the kernel script to run, None to build one; the weights dir; the test data dir)."""
    if args.kernel is not None and args.weights is None:
        sys.exit("kaggle_check: --kernel needs --weights, the weights dir it was built from")
    if args.kernel is not None and not (args.kernel / "kernel.py").is_file():
        sys.exit(f"kaggle_check: {args.kernel}: no kernel.py (build it with python build_kernel.py)")
    script = None if args.kernel is None else args.kernel / "kernel.py"
    demo = (DEMO_WEIGHTS / "manifest.json").is_file()
    data = DEMO_DATA if demo else synthetic_test_set(work)
    weights = args.weights or (DEMO_WEIGHTS if demo else random_weights(work))
    print(f"kernel {script or 'built from ' + str(weights)}, weights {weights}, test images of {data}")
    return script, weights, data


def steel_seg_cli() -> Path:
    return Path(sys.executable).parent / "steel-seg"


def run_kernel(name: str, python: Path, script: Path, data: Path, weights: Path, work: Path) -> Run:
    """The built kernel on `data` in the Kaggle venv, then `steel-seg validate` on its submission."""
    out = work / f"submission_{name}.csv"
    start = time.perf_counter()
    kernel_code, lines = step(
        f"kernel on the {name} test images, Kaggle venv",
        [python, script, "--data-dir", data, "--weights-dir", weights, "--out", out]
        + ["--device", "cpu", "--strict", "--no-progress"],
        kaggle_env(work),
    )
    seconds = time.perf_counter() - start
    sample = data / competition.SAMPLE_SUBMISSION
    validate = [steel_seg_cli(), "validate", "--sample", sample, "--pred", out]
    validate_code, _ = step(f"validate the {name} submission", validate)
    images = len(list((data / competition.TEST_IMAGES).glob("*" + competition.IMAGE_SUFFIX)))
    masks = len(read_predictions(out)) if validate_code == 0 else None
    return Run(name, images, masks, seconds, kernel_code, validate_code, seen_versions(lines))


def seen_versions(lines: list[str]) -> list[tuple[str, str, str]]:
    """What the kernel logged at start: python and each package, with version and origin."""
    matches = (PYTHON_LINE.search(line) or VERSION_LINE.search(line) for line in lines)
    return [match.groups() for match in matches if match]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, required=True, help="the Kaggle venv's python")
    parser.add_argument("--kernel", type=Path, help="a kernel folder build_kernel.py wrote (holds kernel.py)")
    parser.add_argument("--weights", type=Path, help="the weights dir (manifest.json + model dirs) to use")
    args = parser.parse_args(argv)
    if not args.python.is_file():
        sys.exit(f"kaggle_check: {args.python}: no such interpreter (build it with `make kaggle-check`)")
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="steel_seg_kaggle_check_"))
    present = present_packages(args.python, kaggle_env(work))
    if present:
        sys.exit(f"kaggle_check: {args.python} can import {present}; Kaggle's image has none of them")
    script, weights, data = sources(args, work)
    if script is None:
        build = [sys.executable, "build_kernel.py", "--weights-dir", weights, "--out", work / "kernel"]
        code, _ = step("build the kernel", build)
        if code:
            sys.exit(f"kaggle_check: build_kernel.py failed with exit code {code}; work dir kept: {work}")
        script = work / "kernel" / "kernel.py"
    runs = [run_kernel("synthetic", args.python, script, data, weights, work)]
    if available():
        real = real_sample_test_dir(work / "real_sample")
        runs.append(run_kernel("real-sample", args.python, script, real, weights, work))
    return summarise(runs, work, time.perf_counter() - start)


def summarise(runs: list[Run], work: Path, seconds: float) -> int:
    print("\n" + "=" * 72 + "\nkaggle-check: the built kernel in the Kaggle venv\n" + "=" * 72)
    print("versions the kernel saw (first run):")
    for name, version, origin in runs[0].versions:
        print(f"  {name:28s} {version:14s} {origin}")
    for run in runs:
        print(
            f"  {run.name:12s} {run.images:3d} images  {'-' if run.masks is None else run.masks:>4} masks  "
            f"{run.seconds:6.1f} s  kernel exit {run.kernel_code}  validate exit {run.validate_code}  "
            f"{'ok' if run.ok else 'FAILED'}"
        )
    if not available():
        print("  (no ../shared/data/severstal_sample here: the real-sample run was skipped)")
    print(f"  {seconds:.1f} s in all")
    if all(run.ok for run in runs):
        shutil.rmtree(work)
        return 0
    print(f"kaggle-check FAILED; work dir kept: {work}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
