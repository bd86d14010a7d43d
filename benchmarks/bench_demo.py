"""Benchmark: `make demo` as the experiment (`steel-seg experiment run experiments/demo.yaml`) against the
demo before it (scripts/demo.py calling each command itself), same machine, same run, then the experiment's
second `make demo` (every step done: only the comparison is printed).

Each demo runs `python scripts/demo.py` in its own fresh checkout (`git worktree add --detach`, removed
afterwards) with this interpreter and that checkout's `src/` first on PYTHONPATH, so both start from nothing
(synth included) and neither touches this checkout's `demo/`.

Run: .venv/bin/python benchmarks/bench_demo.py [--before 7db3d14] [--after HEAD] [--root /tmp/bench_demo]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "7db3d14"  # main before the experiment runner landed: the last scripts/demo.py that ran each command


def checkout(rev: str, where: Path) -> Path:
    """A fresh worktree of `rev` at `where`."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev], check=True,
                   capture_output=True)  # fmt: skip
    return where


def demo(tree: Path, log: Path) -> tuple[float, str]:
    """Wall seconds of `python scripts/demo.py` in `tree`, and the summary's Dice line."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "scripts/demo.py"], cwd=tree, env=env, stdout=out, stderr=out)
    seconds = time.perf_counter() - start
    text = log.read_text()
    if done.returncode != 0:
        sys.exit(f"bench_demo: the demo in {tree} failed (exit {done.returncode}); its output: {log}")
    dice = re.search(r"tuned kernel mean Dice [0-9.]+ vs all-empty baseline [0-9.]+", text)
    return seconds, dice.group(0) if dice else "(no Dice line)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the revision of the demo before the experiment")
    parser.add_argument("--after", default="HEAD", help="the revision whose demo is the experiment")
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_demo"))
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    revs = {"before": args.before, "after": args.after}
    trees = {name: checkout(rev, args.root / name) for name, rev in revs.items()}
    try:
        before, before_dice = demo(trees["before"], args.root / "before.log")
        print(f"make demo before the experiment ({args.before}): {before:.1f} s; {before_dice}", flush=True)
        after, after_dice = demo(trees["after"], args.root / "after.log")
        print(f"make demo as the experiment ({args.after}): {after:.1f} s; {after_dice}", flush=True)
        again, _ = demo(trees["after"], args.root / "again.log")
        print(f"the experiment's second make demo (every step done): {again:.1f} s")
        print(f"ratio experiment / before: {after / before:.2f}; load at the end {os.getloadavg()[0]:.1f}")
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
