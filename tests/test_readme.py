"""README.md's "The real workflow", walked as a user types it: every line of every ```bash block of the
section, in order, run by bash as written (`set -e`: a failing line fails the walk), in a fresh folder holding
the repository's files, on a synthetic set served as Kaggle's competition zip.

The only edits are a user's: their Kaggle name for the `YOU` placeholder (and `-v 1` for the version `N`
they note), their name in `experiments/example.yaml`, and small settings through the documented overrides
(`--set` for `steel-seg train`, the models' `set` in the experiment file) so the shipped full-size configs
train 2 optimiser steps on this CPU. `kaggle` lines go to the real Kaggle CLI's parser and `make` lines to
`make -n` (tests/readme_walk.py says why and what each stands in for). Everything else runs for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from readme_walk import LOG, STATE, ZIP, bash_blocks, section, small_experiment, write_stand_ins

from steel_seg.competition import SAMPLE_SUBMISSION, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES
from steel_seg.synthetic import dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
USER = "steeluser"
COMPETITION_ZIP = "severstal-steel-defect-detection.zip"
N_TRAIN, N_TEST = 10, 2  # 5 folds of 2 validation images; the whole test set in every dry run
BLOCK_TIMEOUT_S = 1500


def fresh_clone(dest: Path) -> Path:
    """The repository's tracked files (what a clone holds) copied into `dest`."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def competition_zip(folder: Path) -> Path:
    """A synthetic set zipped as Kaggle serves the competition's: train.csv, sample_submission.csv,
    train_images/, test_images/ at the top."""
    written = dataset.write_dataset(folder / "set", N_TRAIN, N_TEST, "original", seed=11, progress=False)
    path = folder / COMPETITION_ZIP
    with zipfile.ZipFile(path, "w") as z:
        for name in (TRAIN_CSV, SAMPLE_SUBMISSION, TRAIN_IMAGES, TEST_IMAGES):
            source = written.out_dir / name
            for file in sorted(source.rglob("*")) if source.is_dir() else [source]:
                z.write(file, file.relative_to(written.out_dir))
    return path


def as_typed(block: str) -> str:
    """A README block with the placeholders filled in as a user would."""
    return re.sub(r"-v N\b", "-v 1", re.sub(r"\bYOU\b", USER, block))


@pytest.fixture(scope="module")
def walk(tmp_path_factory, shipped_encoders) -> dict:
    """Every bash block of the section run in order in a fresh clone; what each printed and took."""
    root = tmp_path_factory.mktemp("readme")
    user = fresh_clone(root / "steel_seg")
    small_experiment(user / "experiments" / "example.yaml", user, USER)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(write_stand_ins(root / "bin")), str(Path(sys.executable).parent),
                                 os.environ["PATH"]]),
        "HF_HOME": str(shipped_encoders), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
        LOG: str(root / "kaggle.jsonl"), STATE: str(root / "kaggle_state.json"),
        ZIP: str(competition_zip(root)),
    }  # fmt: skip
    blocks = bash_blocks(section((ROOT / "README.md").read_text(), "The real workflow"))
    walked = []
    for block in map(as_typed, blocks):
        start = time.perf_counter()
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", block], cwd=user, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)  # fmt: skip
        said = done.stdout + done.stderr
        (root / f"block{len(walked)}.log").write_text(said)
        print(f"README block {len(walked)}: {time.perf_counter() - start:.0f} s")
        assert done.returncode == 0, f"README block (exit {done.returncode}):\n{block}\n...\n{said[-6000:]}"
        walked.append({"block": block, "said": said, "seconds": time.perf_counter() - start})
    calls = [json.loads(line) for line in (root / "kaggle.jsonl").read_text().splitlines()]
    return {"user": user, "blocks": walked, "calls": calls}


def lines_of(walk: dict, command: str) -> list[dict]:
    return [c for c in walk["calls"] if c["command"] == command]


def said_by(walk: dict, text: str) -> str:
    """What the block holding `text` printed."""
    return next(b["said"] for b in walk["blocks"] if text in b["block"])


def test_the_section_has_the_experiment_first_and_every_single_command_step():
    text = section((ROOT / "README.md").read_text(), "The real workflow")
    blocks = bash_blocks(text)
    assert "steel-seg experiment run experiments/example.yaml" in blocks[0]
    for command in ("report eda", "folds", "train", "manifest", "oof", "tune", "report eval", "pseudo"):
        assert any(f"steel-seg {command} " in block for block in blocks), command
    assert any("python build_kernel.py" in block for block in blocks)
    assert any("kernel/kernel.py" in block for block in blocks)


def test_the_experiment_ends_in_a_validated_submission_and_the_upload_uses_its_folders(walk):
    gold = walk["user"] / "experiments" / "gold"
    assert "dry-run submission experiments/gold/submission.csv: valid" in walk["blocks"][0]["said"]
    assert (gold / "kernel" / "kernel.py").is_file()
    created = [c for c in lines_of(walk, "datasets create") if "experiments/gold/weights" in c["line"]]
    pushed = [c for c in lines_of(walk, "kernels push") if "experiments/gold/kernel" in c["line"]]
    assert created and pushed and pushed[0]["id"] == f"{USER}/steel-seg-kernel"
    assert any(c["kernel"] == pushed[0]["id"] for c in lines_of(walk, "competitions submit"))


def test_plan_run_and_status_after_it_find_every_step_done(walk):
    said = said_by(walk, "steel-seg experiment status")
    assert "(out experiments/gold): 24 steps: 24 done\n" in said
    assert "nothing to do, all 24 steps are done" in said
    assert re.search(r"tuned OOF Dice \(tune\): \d\.\d{4}", said) and "last error: none" in said


def test_the_single_commands_train_every_fold_and_ship_what_was_tuned(walk):
    user = walk["user"]
    manifest = json.loads((user / "weights" / "manifest.json").read_text())
    names = sorted(m["name"] for m in manifest["models"])
    assert names == sorted(f"{m}-f{f}" for m in ("unet", "cls") for f in range(5))
    tuning = json.loads((user / "weights" / "thresholds.json").read_text())["tuning"]
    assert tuning["folds"]["tuned"] == [0, 1, 2, 3, 4] and tuning["n_images"] == N_TRAIN
    assert sorted(m["name"] for m in tuning["recipe"]["members"]) == ["cls", "unet"]
    sample = pd.read_csv(user / "data" / SAMPLE_SUBMISSION)
    assert len(pd.read_csv(user / "submission.csv")) == len(sample)
    for report in ("eda", "eval"):
        assert (user / "reports" / report / "report.html").is_file()
    assert (user / "pseudo" / "round1" / "selection.csv").is_file()


def test_the_ddp_run_its_resume_and_the_override_are_what_they_say(walk):
    said = said_by(walk, "torchrun")
    assert "trained 2 epoch(s) in 4 processes (DDP) -> runs/fpn_effb3-f0" in said
    assert "runs/fpn_effb3-f0: all 2 epoch(s) were trained already; nothing to do" in said
    config = yaml.safe_load((walk["user"] / "runs" / "fpn_effb3-f1" / "config.yaml").read_text())
    assert config["optim"]["lr"] == 2e-4


def test_every_kaggle_and_make_line_was_accepted(walk):
    commands = {c["command"] for c in walk["calls"]}
    assert {"competitions download", "datasets create", "kernels push", "kernels status"} <= commands
    assert {"competitions submit", "make"} <= commands
