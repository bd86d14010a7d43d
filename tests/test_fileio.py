"""Atomic files and folders: nothing half-written is ever found under the real name, a full disk is a message
naming the file, and a folder is replaced only when it is the command's own output."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steel_seg import fileio
from steel_seg.formats.oof import OOFWriter

KIND = fileio.Output("an OOF dir", frozenset({"meta.json", "probs"}), "meta.json")


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
    staging = fileio.staging_dir(target, overwrite=False, kind=KIND)
    (staging / "meta.json").write_text("{}")
    assert not target.exists()
    assert fileio.publish_dir(staging, target) == target and (target / "meta.json").is_file()
    with pytest.raises(ValueError, match=r"oof: already holds an OOF dir; pass --overwrite"):
        fileio.staging_dir(target, overwrite=False, kind=KIND)
    staging = fileio.staging_dir(target, overwrite=True, kind=KIND)
    (staging / "meta.json").write_text('{"new": 1}')
    assert (target / "meta.json").read_text() == "{}"  # the old folder stays whole until the new is published
    fileio.publish_dir(staging, target)
    assert (target / "meta.json").read_text() == '{"new": 1}' and sorted(os.listdir(tmp_path)) == ["oof"]


def test_overwrite_replaces_only_an_output_of_the_commands_own_kind(tmp_path):
    """A folder without the marker (test images, a parent of data and weights) or with anything besides the
    kind's own entries (a user's notes) is refused even with overwrite; nothing in it is touched."""
    photos, notes = tmp_path / "photos", tmp_path / "oof"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"jpeg")
    (notes / "probs").mkdir(parents=True)
    (notes / "meta.json").write_text("{}")
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError, match=r"photos: holds files that are not an OOF dir's \(a.jpg\).*even with"
    ):
        fileio.staging_dir(photos, overwrite=True, kind=KIND)
    with pytest.raises(ValueError, match=r"oof: holds files that are not an OOF dir's \(notes.txt\)"):
        fileio.staging_dir(notes, overwrite=True, kind=KIND)
    assert (photos / "a.jpg").read_bytes() == b"jpeg" and (notes / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["oof", "photos"]  # no staging folder was made


def test_a_file_or_a_link_is_never_swapped_for_a_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"link: is a symbolic link \(to .*real\); give the folder itself"):
        fileio.staging_copy(tmp_path / "link")
    with pytest.raises(ValueError, match="file: is a file, not a folder for an OOF dir"):
        fileio.staging_dir(tmp_path / "file", True, KIND)
    assert sorted(os.listdir(tmp_path)) == ["file", "link", "real"]


def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path):
    images = tmp_path / "data" / "test_images"
    images.mkdir(parents=True)
    for out in (images, tmp_path / "data", tmp_path):
        with pytest.raises(ValueError, match=r"(is|holds) the images folder .*write the output elsewhere"):
            fileio.check_output(out, True, KIND, {"images folder": images})
    fileio.check_output(tmp_path / "data" / "oof", True, KIND, {"images folder": images})


# Runs `fileio.publish_dir(staging, target)` and SIGKILLs itself right after the N-th `os.replace`.
KILLED_PUBLISH = """
import os, signal, sys
from pathlib import Path
from steel_seg import fileio
real, done = os.replace, []
def replace(src, dst):
    real(src, dst)
    done.append(dst)
    if len(done) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
fileio.publish_dir(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def killed_publish(tmp_path: Path, target: Path, after_renames: int) -> None:
    """Build a new round for the OOF-like folder `target` and SIGKILL its publication after 1 or 2 renames."""
    staging = tmp_path / f".{target.name}.partial"
    (staging / "probs").mkdir(parents=True)
    (staging / "meta.json").write_text("new round")
    done = subprocess.run(
        [sys.executable, "-c", KILLED_PUBLISH, str(staging), str(target), str(after_renames)]
    )
    assert done.returncode == -signal.SIGKILL


def old_round(target: Path) -> Path:
    (target / "probs").mkdir(parents=True)
    (target / "meta.json").write_text("old round")
    return target


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path):
    """Killed after the old round was moved aside and before the new one moved in: `target` is missing. The
    next run moves the old round back (and, without --overwrite, refuses to replace it); never deletes it."""
    target = old_round(tmp_path / "oof")
    killed_publish(tmp_path, target, after_renames=1)
    assert not target.exists() and [p.name.startswith(".oof.old") for p in tmp_path.glob(".oof.old*")] == [
        True
    ]
    with pytest.raises(ValueError, match="already holds"):
        OOFWriter(target, "again", 0, has_cls=False)
    assert (target / "meta.json").read_text() == "old round"
    assert not list(tmp_path.glob(".oof.old*"))


def test_an_earlier_copy_that_this_run_did_not_make_is_never_deleted(tmp_path, caplog):
    """Killed after the new round moved in and before the old one was removed: the old one is left beside it.
    A later --overwrite run replaces `target` and keeps that copy, naming it."""
    target = old_round(tmp_path / "oof")
    killed_publish(tmp_path, target, after_renames=2)
    assert (target / "meta.json").read_text() == "new round"
    [left] = tmp_path.glob(".oof.old*")
    with caplog.at_level(logging.WARNING):
        staging = fileio.staging_dir(target, overwrite=True, kind=KIND)
        (staging / "meta.json").write_text("third round")
        fileio.publish_dir(staging, target)
    assert (left / "meta.json").read_text() == "old round" and left.name in caplog.text
    assert (target / "meta.json").read_text() == "third round"


def test_published_discards_the_staging_folder_of_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError), fileio.published(tmp_path / "out", False, KIND) as staging:
        (staging / "meta.json").write_text("{}")
        raise RuntimeError("failed")
    assert os.listdir(tmp_path) == []


def test_staging_copy_keeps_every_file_and_links_instead_of_copying(tmp_path):
    weights = tmp_path / "weights"
    (weights / "m").mkdir(parents=True)
    (weights / "thresholds.json").write_text("tuned")
    (weights / "m" / "model.safetensors").write_bytes(b"x" * 1000)
    staging = fileio.staging_copy(weights)
    assert (staging / "thresholds.json").read_text() == "tuned"
    assert (staging / "m" / "model.safetensors").stat().st_ino == (
        weights / "m" / "model.safetensors"
    ).stat().st_ino
    fileio.write_bytes(staging / "m" / "model.safetensors", b"new")
    assert (weights / "m" / "model.safetensors").read_bytes() == b"x" * 1000  # the old dir is untouched
    fileio.publish_dir(staging, weights)
    assert (weights / "m" / "model.safetensors").read_bytes() == b"new"
    assert (weights / "thresholds.json").read_text() == "tuned" and sorted(os.listdir(tmp_path)) == [
        "weights"
    ]


@pytest.mark.parametrize(
    "writer",
    [
        lambda tmp: tmp.write_bytes(b"x" * 3_000_000),
        lambda tmp: torch.save({"w": torch.zeros(750_000)}, tmp),  # says only "unexpected pos"
        lambda tmp: save_file({"w": torch.zeros(750_000)}, str(tmp)),  # a SafetensorError
    ],
    ids=["bytes", "torch.save", "safetensors"],
)
def test_a_full_disk_is_a_message_naming_the_file(small_disk, writer):
    disk = small_disk(1 << 20)
    old = fileio.write_bytes(disk / "model.bin", b"old")
    # safetensors fails before writing a byte: then only the free space can be said
    message = (
        r"no space left on device writing .*model\.bin \((at least [\d.]+ MB needed, )?[\d.]+ [kM]B free\)"
    )
    with pytest.raises(OSError, match=message) as caught:
        fileio.write_with(old, writer)
    assert caught.value.errno == 28
    assert old.read_bytes() == b"old" and os.listdir(disk) == ["model.bin"]


def test_a_write_that_cannot_fit_is_refused_before_it_starts(small_disk):
    disk = small_disk(1 << 20)
    with pytest.raises(OSError, match=r"writing .*big\.txt \(2\.0 MB needed, [01]\.\d MB free\)"):
        fileio.write_text(disk / "big.txt", "x" * 2_000_000)
    assert os.listdir(disk) == []
