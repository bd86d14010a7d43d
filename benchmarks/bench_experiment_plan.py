"""Benchmark: `steel-seg experiment plan` of the gold recipe (5 folds x 3 models, 24 steps) when every step is
done, at the real data's scale, against the textbook way of telling (hash every input and output anew).

The experiment is laid out as a finished one would be, without training anything: a data folder of 12,568
train and 5,506 test files and a train.csv of the real size, `experiments/example.yaml`'s configs, and every
step's outputs at the sizes the shipped models have (Unet-effb3 52 MB, FPN-effb3 45 MB, resnet34 classifier
85 MB each, random bytes) with its done record, written by the same `step_key` and `Fingerprints` a run
uses. Then, in the same run:
1. `plan` in this process, its file-hash cache warm (what a second `steel-seg experiment plan` pays), median;
2. the `steel-seg experiment plan` process, wall time from start to exit (interpreter and imports included);
3. the textbook way: the same plan with every file hashed again (no cache), median.

Run: .venv/bin/python benchmarks/bench_experiment_plan.py [--repeats 5] [--root /tmp/bench_plan]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from steel_seg.workflow.experiment import records, runner
from steel_seg.workflow.experiment.plan import step_key
from steel_seg.workflow.experiment.records import DONE, Record

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 12568, 5506
MODEL_MB = {"unet": 52, "fpn": 45, "cls": 85}
OTHER_OUTPUT_BYTES = 200_000


def write_data(data: Path) -> None:
    """12,568 train and 5,506 test 'JPEGs' (small files: a listing reads names and sizes only), a train.csv
    and a sample of the real sizes."""
    for folder, n in (("train_images", N_TRAIN), ("test_images", N_TEST)):
        (data / folder).mkdir(parents=True)
        for i in range(n):
            (data / folder / f"{i:09x}.jpg").write_bytes(b"\xff\xd8" + i.to_bytes(4, "little"))
    header = "ImageId_ClassId,EncodedPixels\n"
    rows = (f"{i:09x}.jpg_{c},{'1 100' if c == 3 else ''}\n" for i in range(N_TRAIN) for c in range(1, 5))
    (data / "train.csv").write_text(header + "".join(rows))
    rows = (f"{i:09x}.jpg_{c},1 1\n" for i in range(N_TEST) for c in range(1, 5))
    (data / "sample_submission.csv").write_text(header + "".join(rows))


def write_outputs(step, rng_file: Path) -> None:
    """The files `step` writes, of their real sizes (model weights) or a stand-in."""
    for output in map(Path, step.outputs):
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.name == "model.safetensors":
            name = output.parent.parent.name.split("-f")[0]
            with open(output, "wb") as f, open(rng_file, "rb") as source:
                f.write(source.read(MODEL_MB[name] << 20))
        else:
            output.write_bytes(os.urandom(OTHER_OUTPUT_BYTES))


def finished_experiment(root: Path) -> Path:
    """experiments/example.yaml with its paths under `root`, every step done and recorded."""
    write_data(root / "data")
    shutil.copytree(ROOT / "configs", root / "configs")
    exp = yaml.safe_load((ROOT / "experiments" / "example.yaml").read_text())
    exp["out"] = str(root / "gold")
    exp["data"] = {k: str(root / "data" / Path(v).name) for k, v in exp["data"].items()}
    exp["models"] = {k: {**v, "config": str(root / v["config"])} for k, v in exp["models"].items()}
    path = root / "example.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    rng_file = root / "random.bin"
    rng_file.write_bytes(os.urandom(max(MODEL_MB.values()) << 20))
    opened = runner.open_experiment(path)
    done: dict[str, Record] = {}
    for step in opened.steps.values():
        write_outputs(step, rng_file)
        key = step_key(step, opened.prints, done, runner.VERSION)
        outputs = {p: opened.prints.file(Path(p)) for p in step.outputs}
        now = time.time()
        done[step.id] = Record(
            step=step.id, state=DONE, key=key, command=step.command.shown(), log="",
            version=runner.VERSION, started=now, ended=now, outputs=outputs,
        )  # fmt: skip
        records.save(opened.layout.records, done[step.id])
    opened.prints.save()
    return path


def timed_plan(path: Path, cache: bool) -> float:
    if not cache:
        (Path(yaml.safe_load(path.read_text())["out"]) / "steps" / runner.HASHES).unlink(missing_ok=True)
    start = time.perf_counter()
    opened = runner.open_experiment(path)
    verdicts = opened.verdicts()
    seconds = time.perf_counter() - start
    opened.save_prints()
    assert all(v.state == DONE for v in verdicts.values()), [v.reasons for v in verdicts.values()]
    return seconds


def timed_process(path: Path) -> float:
    start = time.perf_counter()
    command = [sys.executable, "-m", "steel_seg.cli", "experiment", "plan", str(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert done.returncode == 0 and "24 steps: 24 done" in done.stdout, done.stdout + done.stderr
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_experiment_plan"))
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    start = time.perf_counter()
    path = finished_experiment(args.root)
    print(f"laid out a finished 24-step experiment in {time.perf_counter() - start:.1f} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    warm = [timed_plan(path, cache=True) for _ in range(args.repeats)]
    process = [timed_process(path) for _ in range(args.repeats)]
    textbook = [timed_plan(path, cache=False) for _ in range(args.repeats)]
    timed_plan(path, cache=True)  # leave the cache warm
    w, p, t = (statistics.median(x) for x in (warm, process, textbook))
    print(f"plan in process, hash cache warm: {w * 1000:.0f} ms (median of {args.repeats})")
    print(f"steel-seg experiment plan, the whole process: {p * 1000:.0f} ms")
    print(f"textbook (every file hashed again): {t * 1000:.0f} ms; ratio {t / w:.0f}x the warm plan")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
