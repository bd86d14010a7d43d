"""Atomic files and folders: nothing half-written is ever found under the real name."""

from __future__ import annotations

import os

import pytest

from steel_seg import fileio


def test_write_replaces_whole_and_sets_mode(tmp_path):
    path = fileio.write_text(tmp_path / "a" / "rules.json", "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["rules.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = fileio.write_text(tmp_path / "model.safetensors", "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fileio.write_with(path, boom)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_temps_of_a_killed_writer_are_cleared_by_the_next_write(tmp_path):
    """A SIGKILL during a save leaves `.<name>.<random>.tmp` behind (no `except` runs): the next save of the
    same file removes it, and leaves other files' temps alone."""
    stale = tmp_path / ".checkpoint.pt.k3j2h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".metrics.csv.a1b2c3.tmp"
    other.write_bytes(b"x")
    fileio.write_bytes(tmp_path / "checkpoint.pt", b"whole")
    assert sorted(os.listdir(tmp_path)) == [".metrics.csv.a1b2c3.tmp", "checkpoint.pt"]


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"gone\.json: manifest not found"):
        fileio.read_json(tmp_path / "gone.json", "manifest")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: invalid model spec: not readable JSON"):
        fileio.read_json(tmp_path / "bad.json", "model spec")


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "oof"
    staging = fileio.staging_dir(target, overwrite=False, what="an OOF dir")
    (staging / "meta.json").write_text("{}")
    assert not target.exists()
    assert fileio.publish_dir(staging, target) == target and (target / "meta.json").is_file()
    with pytest.raises(ValueError, match=r"oof: already holds an OOF dir; pass --overwrite"):
        fileio.staging_dir(target, overwrite=False, what="an OOF dir")
    staging = fileio.staging_dir(target, overwrite=True, what="an OOF dir")
    (staging / "new.txt").write_text("new")
    assert (target / "meta.json").is_file()  # the old folder stays whole until the new one is published
    fileio.publish_dir(staging, target)
    assert sorted(os.listdir(target)) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["oof"]
