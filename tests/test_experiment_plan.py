"""steel_seg.workflow.experiment.plan, records, fingerprints, checks, results: a step is done while what it
was made from and what it made are unchanged; anything else says why it is stale; an interrupted training
resumes from its checkpoint; outputs the experiment did not make are refused without --overwrite."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from steel_seg import fileio
from steel_seg.workflow.experiment import records
from steel_seg.workflow.experiment.checks import foreign_outputs, refuse_foreign
from steel_seg.workflow.experiment.fingerprints import LISTING, Fingerprints, listing
from steel_seg.workflow.experiment.plan import DONE, STALE, TODO, evaluate, key_changes, step_key
from steel_seg.workflow.experiment.records import FAILED, RUNNING, Record
from steel_seg.workflow.experiment.results import error_of
from steel_seg.workflow.experiment.runner import launch_flags
from steel_seg.workflow.experiment.steps import Command, Input, Step

VERSION = "9.9"


@pytest.fixture
def world(tmp_path):
    """Two steps, `make` (reads in.csv and the images folder, writes made.txt) and `use` (reads it), and a
    function that records a step as the runner does."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "in.csv").write_text("a\n")
    made = tmp_path / "made.txt"
    make = Step(id="make", kind="oof", command=Command(program="steel-seg", args=("oof", "--tta", "none")),
                inputs=(Input(label="data.train_csv", path=str(tmp_path / "in.csv")),
                        Input(label="data.train_images", path=str(tmp_path / "images"), kind=LISTING)),
                outputs=(str(made),), target=str(made))  # fmt: skip
    use = Step(id="use", kind="tune", command=Command(program="steel-seg", args=("tune",)), deps=("make",))
    prints = Fingerprints(tmp_path / "steps" / "hashes.json")

    def record(step: Step, state: str = DONE, made: str = "made\n", **fields) -> Record:
        found = records.load_all(tmp_path / "steps", ["make", "use"])
        if step.outputs:
            Path(step.outputs[0]).write_text(made)
        outputs = {p: prints.file(Path(p)) for p in step.outputs}
        key = step_key(step, prints, found, VERSION)
        now = time.time()
        rec = Record(step=step.id, state=state, key=key, command="", log="", version=VERSION, started=now,
                     ended=now, outputs=outputs, **fields)  # fmt: skip
        records.save(tmp_path / "steps", rec)
        return rec

    def verdicts(steps=(make, use)) -> dict:
        found = records.load_all(tmp_path / "steps", [s.id for s in steps])
        return evaluate(list(steps), found, Fingerprints(tmp_path / "steps" / "hashes.json"), VERSION)

    return {"make": make, "use": use, "record": record, "verdicts": verdicts, "root": tmp_path}


def states(verdicts) -> dict:
    return {k: (v.state, v.reasons) for k, v in verdicts.items()}


def test_never_run_then_done(world):
    assert states(world["verdicts"]()) == {"make": (TODO, ("never run",)), "use": (TODO, ("after make",))}
    world["record"](world["make"])
    world["record"](world["use"])
    assert states(world["verdicts"]()) == {"make": (DONE, ()), "use": (DONE, ())}


def test_a_changed_input_makes_the_step_and_what_follows_stale(world):
    world["record"](world["make"])
    world["record"](world["use"])
    (world["root"] / "in.csv").write_text("b\n")
    assert states(world["verdicts"]()) == {"make": (STALE, ("data.train_csv changed",)),
                                           "use": (STALE, ("after make",))}  # fmt: skip
    (world["root"] / "in.csv").write_text("a\n")  # put back: done again
    assert world["verdicts"]()["use"].state == DONE
    (world["root"] / "images" / "b.jpg").write_bytes(b"y")
    assert world["verdicts"]()["make"].reasons == ("data.train_images changed",)


def test_an_output_changed_or_removed_since_the_step_wrote_it(world):
    made = Path(world["make"].outputs[0])
    world["record"](world["make"])
    made.write_text("edited by hand\n")
    assert world["verdicts"]()["make"].reasons == (f"{made} changed since the step wrote it",)
    made.unlink()
    assert world["verdicts"]()["make"].reasons == (f"{made} missing since the step wrote it",)


def test_a_re_made_upstream_output_and_another_version_are_reasons(world):
    world["record"](world["make"])
    world["record"](world["use"])
    world["record"](world["make"], made="other\n")  # re-made, another output
    assert world["verdicts"]()["use"].reasons == ("make re-made",)
    old = records.load(world["root"] / "steps", "use")
    assert key_changes({**old.key, "version": "0.1"}, old.key) == ["steel_seg 0.1 -> 9.9"]


def test_the_command_changes_are_named_by_option():
    old = ["steel-seg", "train", "--fold", "0", "--set", "optim.lr=0.001", "--set", "data.crop=[64, 256]"]
    new = ["steel-seg", "train", "--fold", "0", "--set", "optim.lr=0.0002", "--set", "train.amp=off"]
    changes = key_changes({"command": old}, {"command": new, "inputs": {}, "upstream": {}, "version": None})
    assert changes[:3] == ["--set optim.lr: 0.001 -> 0.0002", "--set data.crop: [64, 256] -> (none)",
                           "--set train.amp: (none) -> off"]  # fmt: skip
    tta = key_changes({"command": ["steel-seg", "manifest", "--tta", "none"]},
                      {"command": ["steel-seg", "manifest", "--tta", "none,h"], "inputs": {}, "upstream": {},
                       "version": None})  # fmt: skip
    assert tta[0] == "--tta: none -> none,h"


def test_a_failed_or_interrupted_step_runs_again_and_a_training_resumes_from_its_checkpoint(world):
    rec = world["record"](world["make"], state=FAILED, error="INFO x\nsteel-seg oof: bad image")
    assert world["verdicts"]()["make"].reasons == ("failed (steel-seg oof: bad image): runs again",)
    run = world["root"] / "run"
    train = Step(id="make", kind="train", command=world["make"].command, inputs=world["make"].inputs,
                 target=str(run))  # fmt: skip
    world["record"](train, state=RUNNING)
    verdict = world["verdicts"]((train,))["make"]
    assert verdict.reasons == ("interrupted: runs again",) and launch_flags(train, verdict) == ()
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"state")
    os.utime(run / "checkpoint.pt", (0, 0))  # the replaced run's checkpoint, from before this step started
    assert launch_flags(train, world["verdicts"]((train,))["make"]) == ("--overwrite",)
    (run / "checkpoint.pt").write_bytes(b"state")
    verdict = world["verdicts"]((train,))["make"]
    assert verdict.reasons == ("interrupted: resumes from its checkpoint",)
    assert launch_flags(train, verdict) == ("--resume",)
    (world["root"] / "in.csv").write_text("changed since\n")  # another key: the run starts over
    verdict = world["verdicts"]((train,))["make"]
    assert launch_flags(train, verdict) == ("--overwrite",) and rec.key != verdict.key


def test_outputs_the_experiment_did_not_make_are_refused_without_overwrite(world):
    made = Path(world["make"].outputs[0])
    made.write_text("someone else's\n")
    verdicts = world["verdicts"]().values()
    assert foreign_outputs(verdicts) == [str(made)]
    with pytest.raises(ValueError, match=rf"not made by this experiment \(no record in its steps/\): {made}"):
        refuse_foreign(verdicts, overwrite=False)
    assert refuse_foreign(verdicts, overwrite=True) == [str(made)]
    world["record"](world["make"])  # the experiment's own now: no longer foreign
    assert foreign_outputs(world["verdicts"]().values()) == []


def test_file_hashes_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"0" * 1000)
    prints = Fingerprints(tmp_path / "hashes.json")
    first = prints.file(path)
    prints.save()
    hashed = []
    monkeypatch.setattr(fileio, "sha256_file", lambda p: hashed.append(p) or "new")
    again = Fingerprints(tmp_path / "hashes.json")
    assert again.file(path) == first and hashed == []
    os.utime(path, ns=(0, 0))  # touched: hashed again
    assert again.file(path) == "new" and hashed == [path]
    assert again.file(tmp_path / "missing") is None


def test_a_folder_listing_sees_names_and_sizes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    before = listing(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"22")
    assert listing(tmp_path) != before and listing(tmp_path / "nope") is None


def test_a_folder_is_listed_once_while_no_name_is_added_or_removed(tmp_path, monkeypatch):
    from steel_seg.workflow.experiment import fingerprints

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"1")
    listed = []
    real = fingerprints.listing
    monkeypatch.setattr(fingerprints, "listing", lambda f: listed.append(f) or real(f))
    prints = Fingerprints(tmp_path / "hashes.json")
    first = [prints.of(LISTING, folder) for _ in range(3)]
    assert len(set(first)) == 1 and len(listed) == 1
    (folder / "b.jpg").write_bytes(b"2")
    os.utime(folder, ns=(0, 0))  # the folder's mtime moves (a coarse clock could otherwise hide the add)
    assert prints.of(LISTING, folder) != first[0] and len(listed) == 2
    assert prints.of(LISTING, tmp_path / "nope") is None


def test_the_error_is_the_commands_own_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("=== old attempt\nsteel-seg train: old\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("INFO epoch 1\nsteel-seg train: model.init_weights /x: not found\nINFO bye\n")
    assert error_of(log, start) == "steel-seg train: model.init_weights /x: not found"
    log.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n")
    assert error_of(log) == "RuntimeError: CUDA out of memory"
