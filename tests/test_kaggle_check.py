"""`make kaggle-check KERNEL=kernel WEIGHTS=weights`: the user's own built kernel and weights are what is
checked (it used to check only the demo's, or a random model's). The check itself (the Kaggle venv, several
minutes) runs in CI as `make kaggle-check`; here: the Makefile passes the folders on, and the script takes
them instead of building."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import kaggle_check
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_make_passes_the_users_kernel_and_weights_on():
    if shutil.which("make") is None:
        pytest.skip("no make here")
    args = ["make", "-n", "kaggle-check", "KERNEL=my kernel", "WEIGHTS=weights", "KAGGLE_VENV=/kv", "VENV=/v"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    command = done.stdout.replace("\\\n", " ")
    assert "scripts/kaggle_check.py --python /kv/bin/python" in command
    assert '--kernel "my kernel" --weights "weights"' in command
    plain = subprocess.run(args[:3] + args[5:], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--kernel" not in plain and "--weights" not in plain


def test_the_users_kernel_is_run_as_built(tmp_path, monkeypatch):
    kernel, weights = tmp_path / "kernel", tmp_path / "weights"
    kernel.mkdir()
    (kernel / "kernel.py").write_text("")
    monkeypatch.setattr(kaggle_check, "DEMO_WEIGHTS", tmp_path / "no-demo")
    monkeypatch.setattr(kaggle_check, "synthetic_test_set", lambda work: work / "data")
    script, used, data = kaggle_check.sources(argparse.Namespace(kernel=kernel, weights=weights), tmp_path)
    assert (script, used, data) == (kernel / "kernel.py", weights, tmp_path / "data")
    script, used, _ = kaggle_check.sources(argparse.Namespace(kernel=None, weights=weights), tmp_path)
    assert (script, used) == (None, weights)  # built from the user's weights
    with pytest.raises(SystemExit, match="--kernel needs --weights"):
        kaggle_check.sources(argparse.Namespace(kernel=kernel, weights=None), tmp_path)
    with pytest.raises(SystemExit, match="no kernel.py"):
        kaggle_check.sources(argparse.Namespace(kernel=tmp_path, weights=weights), tmp_path)
