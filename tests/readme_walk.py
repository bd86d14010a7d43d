"""What `tests/test_readme.py` needs to walk the README as a user: its shell blocks, and the three programs
a test cannot run for real, stood in for on PATH.

- `steel-seg`: the real CLI; a `train` gets the small settings appended as `--set` overrides (the README
  documents `--set` for exactly this), so the shipped full-size configs train 2 optimiser steps on the CPU.
  torchrun runs it too (`$(which steel-seg)` finds it first on PATH).
- `kaggle`: every line parsed by the real Kaggle CLI's parser with no network and no credentials
  (`kaggle_cli.parse`); then it plays Kaggle's part from what is on disk: `competitions download` copies the
  competition zip the test made, `datasets create` and `kernels push` need the folder's metadata file (and a
  kernel's code file, and its weights dataset created before it), `kernels status` and `competitions submit`
  need a kernel that was pushed. Each call is appended to a JSON-lines log.
- `make`: `make -n` (prints, runs nothing): the target and variables exist; what `make kaggle-check` runs
  needs a 4 GB venv of Kaggle's image, and CI runs it for real after `make test`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
# Any shipped config, 2 optimiser steps on the CPU with the smallest timm encoder from random weights: the
# configs' own architectures, crops, losses and optimisers at full size and with the ImageNet encoders are
# tests/test_full_size_configs.py's; here 28 trainings and 6 ensemble predictions must fit in CI's minutes.
SMALL = {
    "model.encoder": "tu-mobilenetv3_small_050", "model.encoder_weights": None, "data.batch_size": 2,
    "data.val_batch_size": 2, "data.workers": 0, "train.device": "cpu", "train.progress": False,
}  # fmt: skip
# 2 optimiser steps by a config's `train.select` (an average needs 2 epochs); test_full_size_configs.py's too.
TWO_STEPS = {
    "average": {"data.batches_per_epoch": 1, "schedule.epochs": 2, "train.average_epochs": 2},
    "metric": {"data.batches_per_epoch": 2, "schedule.epochs": 1},
}
LOG, STATE, ZIP = "README_WALK_LOG", "README_WALK_STATE", "README_WALK_ZIP"


def section(text: str, heading: str) -> str:
    """The part of a markdown `text` from the level-2 `heading` to the next level-2 heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of `text`, in order."""
    return BASH_BLOCK.findall(text)


def small_settings(config: str | Path) -> dict[str, object]:
    """The overrides that make `config` (a shipped training config) train 2 steps on the CPU."""
    from steel_seg.train.config import TrainConfig

    return {**SMALL, **TWO_STEPS[TrainConfig.from_yaml(config).train.select]}


def small_train(argv: list[str]) -> list[str]:
    """`steel-seg` arguments with the small settings appended when they ask for `train --config C`."""
    if argv[:1] != ["train"] or "--config" not in argv:
        return argv
    settings = small_settings(argv[argv.index("--config") + 1])
    overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    return [*argv, *(arg for text in overrides for arg in ("--set", text))]


def steel_seg_main() -> int:
    from steel_seg.cli import main

    return main(small_train(sys.argv[1:]))


def _record(entry: dict) -> None:
    with open(os.environ[LOG], "a") as f:
        f.write(json.dumps(entry) + "\n")


def _metadata(folder: str, name: str) -> dict:
    path = Path(folder) / name
    if not path.is_file():
        sys.exit(f"kaggle (stand-in): {path}: missing; the real CLI refuses the folder without it")
    return json.loads(path.read_text())


def kaggle_main() -> int:
    """Parse the line with the real Kaggle CLI, then play Kaggle's part (see the module doc)."""
    import pytest
    from kaggle_cli import KaggleLineError, load, offline, parse

    line = shlex.join(["kaggle", *sys.argv[1:]])
    state_path = Path(os.environ[STATE])
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"datasets": [], "kernels": {}}
    patch = pytest.MonkeyPatch()
    try:
        offline(patch, state_path.parent / "kaggle_home")
        args = parse(load(), line)
    except KaggleLineError as exc:
        sys.exit(f"kaggle (stand-in): the Kaggle CLI refuses {exc}")
    finally:
        patch.undo()
    command = " ".join(sys.argv[1:3])
    entry = {"line": line, "command": command, "cwd": os.getcwd()}
    if command == "competitions download":
        competition = args.competition or args.competition_opt
        shutil.copy(os.environ[ZIP], Path(args.path or ".") / f"{competition}.zip")
    elif command in ("datasets create", "datasets version"):
        entry["id"] = _metadata(args.folder, "dataset-metadata.json")["id"]
        state["datasets"].append(entry["id"])
    elif command == "kernels push":
        meta = _metadata(args.folder, "kernel-metadata.json")
        if not (Path(args.folder) / meta["code_file"]).is_file():
            sys.exit(f"kaggle (stand-in): {args.folder}: its code file {meta['code_file']} is missing")
        missing = [d for d in meta["dataset_sources"] if d not in state["datasets"]]
        if missing:
            sys.exit(f"kaggle (stand-in): the kernel reads datasets never created: {missing}")
        entry["id"] = meta["id"]
        state["kernels"][meta["id"]] = state["kernels"].get(meta["id"], 0) + 1
    elif command == "kernels status":
        kernel = args.kernel or args.kernel_opt
        if kernel not in state["kernels"]:
            sys.exit(f"kaggle (stand-in): 404: no kernel {kernel} was pushed")
        print(f'{kernel} has status "KernelWorkerStatus.COMPLETE"')
    elif command == "competitions submit":
        if state["kernels"].get(args.kernel, 0) < int(args.version):
            sys.exit(f"kaggle (stand-in): {args.kernel} has no version {args.version}")
        entry["kernel"] = args.kernel
    state_path.write_text(json.dumps(state))
    _record(entry)
    return 0


def make_main() -> int:
    """`make -n` with the same arguments: the target exists and its variables parse; nothing runs."""
    _record({"line": shlex.join(["make", *sys.argv[1:]]), "command": "make"})
    mine = Path(sys.argv[0]).resolve().parent
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != mine)
    make = shutil.which("make", path=path)
    if make is None:
        sys.exit("make (stand-in): no make on PATH")
    os.execv(make, [make, "-n", *sys.argv[1:]])


def write_stand_ins(bin_dir: Path) -> Path:
    """`steel-seg`, `kaggle` and `make` as Python scripts in `bin_dir` (put it first on PATH), guarded like
    pip's console scripts: a worker process that imports its main module runs nothing."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, function in (("steel-seg", "steel_seg_main"), ("kaggle", "kaggle_main"), ("make", "make_main")):
        script = bin_dir / name
        script.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(TESTS)!r})\n"
            f"from readme_walk import {function}\n\nif __name__ == '__main__':\n    sys.exit({function}())\n"
        )
        script.chmod(0o755)
    return bin_dir


def small_experiment(path: Path, root: Path, kaggle_user: str) -> None:
    """The user's edits to an experiment file: their Kaggle name, and every model's small settings as its
    `set` (a model's own `set` wins), inference on the CPU without workers."""
    exp = yaml.safe_load(path.read_text())
    exp["kernel"]["kaggle_user"] = kaggle_user
    for model in exp["models"].values():
        model["set"] = {**small_settings(root / model["config"]), **model.get("set", {})}
    exp["inference"] = {"devices": "cpu", "workers": 0, "batch_size": 2}
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
