"""What the repository itself commits: `.gitignore` keeps out everything the README's workflow makes (a user's
`git add .` picked up gigabytes of data, runs and weights), and committed files cite only files it holds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MADE_BY_THE_WORKFLOW = [
    "data/train.csv",
    "data/train_images/0002cc93b.jpg",
    "data/folds.csv",
    "runs/unet_effb3-f0/checkpoint.pt",
    "runs/unet_effb3-f0/log.jsonl",
    "oof/unet_effb3-f0/probs.npy",
    "pseudo/round1/train.csv",
    "reports/eda/report.html",
    "weights/manifest.json",
    "weights/dataset-metadata.json",
    "weights/unet-f0/spec.json",
    "weights/unet-f0/model.safetensors",
    "kernel/kernel.py",
    "kernel/kernel-metadata.json",
    "submission.csv",
    "submission.run.json",
    "submission_real_sample.csv",
    "submission.csv.partial",
    "experiments/gold/steps/folds.json",
    "experiments/gold/runs/unet-f0/checkpoint.pt",
    "experiments/gold/weights/manifest.json",
]
COMMITTED = [
    "weights/thresholds.json",
    "configs/unet_effb3.yaml",
    "kernel/bootstrap.py.tmpl",
    "README.md",
    "experiments/example.yaml",
    "experiments/demo.yaml",
]


def ignored(paths: list[str]) -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    )
    return set(done.stdout.split())


def test_gitignore_covers_what_the_workflow_makes():
    assert ignored(MADE_BY_THE_WORKFLOW) == set(MADE_BY_THE_WORKFLOW)
    assert ignored(COMMITTED) == set()


def test_committed_files_cite_only_files_the_repository_holds():
    """The committed thresholds.json cited a facts file that only exists outside the repository."""
    note = json.loads((ROOT / "weights" / "thresholds.json").read_text())["note"]
    cited = re.findall(r"\b[\w./-]+\.(?:md|py|json|yaml|csv|txt)\b", re.sub(r"https?://\S+", "", note))
    assert [path for path in cited if not (ROOT / path).exists()] == []
