"""`steel-seg experiment run` end to end on synthetic data, with the smallest real models (tests/
tiny_experiment.py): two segmenters and a classifier on 2 folds to a validated dry-run submission; a second
run that runs nothing; a changed `tta` that re-runs only what reads it; a changed `set` of one model that
re-trains only that model; a run killed by SIGKILL mid-training that resumes and tunes the same Dice as the
uninterrupted run; failing jobs on fake GPUs; and the SLURM path through submitit's local executor."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kaggle_cli import load, offline, parse
from tiny_experiment import write_configs, write_experiment

from steel_seg.formats.submission import validate
from steel_seg.workflow.experiment import records, runner

pytestmark = pytest.mark.slow
KILL_WAIT_S = 600


def run(path: Path, **options) -> tuple[int, list[str]]:
    said: list[str] = []
    code = runner.run(path, say=said.append, environ=os.environ, **options)
    return code, said


def started(said: list[str], word: str = "start") -> set[str]:
    """The steps `run` started (or, with `word="same"`, found unchanged when their turn came)."""
    return {m.group(1) for line in said for m in [re.search(rf"\] {word}\s+(\S+)", line)] if m}


def reached(said: list[str]) -> set[str]:
    """The steps `run` came to: started, or judged again and found as they were (their inputs re-made the
    same: a dry run of 2 images predicted as before leaves `validate` done)."""
    return started(said) | started(said, "same")


def record(out: Path, step_id: str) -> records.Record:
    return records.load(out / "steps", step_id)


@pytest.fixture(scope="module")
def chain(synthetic_set, tmp_path_factory) -> dict:
    """One experiment run five times: as written; again; with another tta; with another set of the
    classifier; as written again, killed while the classifier of fold 0 trains, and run once more."""
    root = tmp_path_factory.mktemp("experiment")
    configs = write_configs(root / "configs")
    path = root / "exp.yaml"

    def write(tta=("none",), cls_set=None) -> None:
        cls = {"config": str(configs["cls"]), **({"set": cls_set} if cls_set else {})}
        models = {
            "unet": {"config": str(configs["unet"])},
            "fpn": {"config": str(configs["fpn"])},
            "cls": cls,
        }
        write_experiment(path, synthetic_set.out_dir, models, tta=list(tta))

    found = {"path": path, "out": root / "out", "data": synthetic_set.out_dir}
    write()
    found["first"] = run(path)
    found["first_tune"] = record(found["out"], "tune")
    found["first_cls"] = record(found["out"], "train/cls-f0")
    found["again"] = run(path)
    write(tta=("h",))
    found["tta"] = run(path)
    write(tta=("h",), cls_set={"optim.lr": 0.01})
    found["set"] = run(path)
    write()
    found["killed"] = kill_while_training(path, found["out"], "train/cls-f0")
    found["resumed"] = run(path)
    return found


def kill_while_training(path: Path, out: Path, step_id: str) -> str:
    """`steel-seg experiment run` in a process, SIGKILLed once `step_id` has written a checkpoint of its
    own; returns what it printed, once no process of the step is left."""
    log = path.parent / "killed.log"
    with open(log, "w") as f:
        process = subprocess.Popen([sys.executable, "-m", "steel_seg.cli", "experiment", "run", str(path)],
                                   stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    run_dir = out / "runs" / step_id.split("/")[1]
    deadline = time.time() + KILL_WAIT_S
    while time.time() < deadline and process.poll() is None:
        rec = record(out, step_id) if (out / "steps" / f"{step_id}.json").is_file() else None
        checkpoint = run_dir / "checkpoint.pt"
        if (
            rec
            and rec.state == records.RUNNING
            and checkpoint.is_file()
            and checkpoint.stat().st_mtime >= rec.started
        ):
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, log.read_text()
    while time.time() < deadline and _processes_using(run_dir):
        time.sleep(0.1)
    assert not _processes_using(run_dir), "the training outlived the killed experiment"
    return log.read_text()


def _processes_using(run_dir: Path) -> list[int]:
    """Live (not zombie) processes whose command line names `run_dir`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            named = str(run_dir) in (proc / "cmdline").read_bytes().decode(errors="replace")
            if proc.name.isdigit() and named and (proc / "stat").read_text().split(")")[-1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_two_segmenters_and_a_classifier_on_two_folds_end_in_a_validated_dry_run(chain):
    code, said = chain["first"]
    assert code == 0, "\n".join(said)
    trains = {f"train/{m}-f{k}" for m in ("unet", "fpn", "cls") for k in (0, 1)}
    assert started(said) == {"folds", *trains, "manifest", "oof", "tune", "build", "dry-run", "validate"}
    out, data = chain["out"], chain["data"]
    assert validate(out / "submission.csv", data / "sample_submission.csv") == []
    assert f"dry-run submission {out / 'submission.csv'}: valid" in said[-1]
    tune = chain["first_tune"]
    assert 0 <= tune.result["dice_before"] <= tune.result["dice_after"] <= 1 and tune.result["n_images"] == 27
    train = chain["first_cls"]
    assert train.config["optim"]["lr"] == 0.003 and train.config["data"]["fold"] == 0
    assert set(train.inputs) >= {"data.train_csv", "data.folds_csv"} and train.version
    assert (out / "logs" / "train" / "cls-f0.log").read_text().startswith("=== ")


def test_a_second_run_with_nothing_changed_runs_no_step(chain):
    code, said = chain["again"]
    assert code == 0 and started(said) == set()
    assert said == [f"experiment {chain['path']} (out {chain['out']}): nothing to do, all 13 steps are done"]


def test_a_changed_tta_re_runs_only_what_reads_the_views(chain):
    code, said = chain["tta"]
    assert code == 0
    assert reached(said) == {"manifest", "oof", "tune", "build", "dry-run", "validate"}
    assert started(said) >= {"manifest", "oof", "tune", "build", "dry-run"}
    assert any(re.search(r"stale\s+manifest\s+--tta: none -> h", line) for line in said)


def test_a_changed_set_re_trains_only_that_models_folds_and_what_follows(chain):
    code, said = chain["set"]
    assert code == 0
    assert reached(said) == {"train/cls-f0", "train/cls-f1", "manifest", "oof", "tune", "build", "dry-run",
                             "validate"}  # fmt: skip
    assert started(said) >= {"train/cls-f0", "train/cls-f1", "manifest", "oof", "tune"}
    assert any("--set optim.lr: (none) -> 0.01" in line for line in said)


def test_a_run_killed_mid_training_resumes_and_tunes_the_uninterrupted_dice(chain):
    assert "start  train/cls-f0" in chain["killed"]
    code, said = chain["resumed"]
    assert code == 0, "\n".join(said)
    assert any(re.search(r"start\s+train/cls-f0 .* --resume", line) for line in said)
    assert reached(said) == {"train/cls-f0", "train/cls-f1", "manifest", "oof", "tune", "build", "dry-run",
                             "validate"}  # fmt: skip
    out = chain["out"]
    assert record(out, "tune").result == chain["first_tune"].result
    assert record(out, "train/cls-f0").outputs == chain["first_cls"].outputs  # the very weights


def test_status_shows_each_steps_time_the_tuned_dice_and_no_error(chain):
    text = runner.status(chain["path"])
    dice = chain["first_tune"].result["dice_after"]
    assert "13 steps: 13 done; no run in progress" in text and f"tuned OOF Dice (tune): {dice:.4f}" in text
    assert re.search(
        r"done\s+train/unet-f0\s+\d+\.\ds\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+1 epoch\(s\), val_dice", text
    )
    assert "last error: none" in text


def test_the_kaggle_commands_printed_after_a_run_are_accepted_by_the_kaggle_cli(chain, monkeypatch, tmp_path):
    """`run` ends with the commands the kernel build printed: upload, new version, push, submit."""
    offline(monkeypatch, tmp_path / "home")
    cli = load()
    summary = chain["resumed"][1][-1]
    lines = [line.split(": ", 1)[1] for line in summary.split("next:\n")[1].splitlines()]
    assert (
        len(lines) == 4 and lines[0] == f"kaggle datasets create -p {chain['out'] / 'weights'} --dir-mode zip"
    )
    for line in lines:
        parse(cli, line)


def test_failed_jobs_on_fake_gpus_stop_what_needs_them_and_not_the_others(synthetic_set, tmp_path):
    configs = write_configs(tmp_path / "configs")
    missing = {"model.init_weights": str(tmp_path / "nothing")}
    models = {
        "bad": {"config": str(configs["unet"]), "set": missing},
        "good": {"config": str(configs["unet"])},
    }
    path = write_experiment(tmp_path / "exp.yaml", synthetic_set.out_dir, models)
    code, said = run(path, gpus=("0", "1"))
    assert code == 1
    out = tmp_path / "out"
    trains = {f"train/{m}-f{k}": record(out, f"train/{m}-f{k}") for m in models for k in (0, 1)}
    states = {k: r.state for k, r in trains.items()}
    assert states == {"train/bad-f0": "failed", "train/bad-f1": "failed", "train/good-f0": "done",
                      "train/good-f1": "done"}  # fmt: skip
    for a, ra in trains.items():
        assert len(ra.devices) == 1 and ra.devices[0] in ("0", "1")
        for b, rb in trains.items():
            if a < b and ra.started < rb.ended and rb.started < ra.ended:
                assert ra.devices != rb.devices, (a, b)
    assert any(ra.started < rb.ended and rb.started < ra.ended for a, ra in trains.items()
               for b, rb in trains.items() if a < b)  # fmt: skip  # two jobs did run side by side
    assert not any((out / "steps" / f"{s}.json").exists() for s in ("manifest", "oof", "tune", "build"))
    assert "not run: manifest, oof, tune, build, dry-run, validate" in said[-1]
    text = runner.status(path)
    assert re.search(r"failed\s+train/bad-f0 .*nothing", text)
    assert re.search(r"last error: train/bad-f\d at .*: steel-seg train: .*nothing", text)


def test_the_slurm_path_through_submitits_local_executor(synthetic_set, tmp_path):
    pytest.importorskip("submitit")
    configs = write_configs(tmp_path / "configs")
    models = {"unet": {"config": str(configs["unet"])}}
    path = write_experiment(tmp_path / "exp.yaml", synthetic_set.out_dir, models, folds={"k": 2, "use": [1]},
                            slurm={"cluster": "local", "time_min": 30})  # fmt: skip
    code, said = run(path, executor="slurm")
    assert code == 0, "\n".join(said)
    out = tmp_path / "out"
    remote = {s for s in ("train/unet-f1", "oof", "dry-run") if record(out, s).devices == ("remote",)}
    assert remote == {"train/unet-f1", "oof", "dry-run"} and record(out, "tune").devices == ("cpu",)
    assert len(list((out / "slurm").glob("*_submitted.pkl"))) == 3  # the pickled jobs submitit ran
    assert validate(out / "submission.csv", synthetic_set.out_dir / "sample_submission.csv") == []
    assert json.loads((out / "weights" / "manifest.json").read_text())["models"][0]["name"] == "unet-f1"
