"""steel_seg.workflow.experiment.schema: the experiment file is typed and strict, and what it names is
checked; `steel-seg experiment plan|run` refuses a bad file before any step runs (nothing is written)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_experiment import write_configs, write_experiment

from steel_seg import cli
from steel_seg.competition import SAMPLE_SUBMISSION, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES
from steel_seg.workflow.experiment import schema

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path) -> Path:
    """A data folder with the four entries the experiment names (empty: the schema only looks at them)."""
    data = tmp_path / "data"
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        (data / folder).mkdir(parents=True)
    for name in (TRAIN_CSV, SAMPLE_SUBMISSION):
        (data / name).write_text("")
    return data


@pytest.fixture
def configs(tmp_path) -> dict[str, Path]:
    return write_configs(tmp_path / "configs")


def models(configs: dict[str, Path], *names: str) -> dict:
    return {name: {"config": str(configs[name])} for name in names}


def edited(path: Path, edit) -> Path:
    d = yaml.safe_load(path.read_text())
    edit(d)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_a_good_file_reads_typed(tmp_path, data, configs):
    path = write_experiment(tmp_path / "exp.yaml", data, {"fpn": {"config": str(configs["fpn"]),
                            "set": {"optim.lr": "2e-4"}, "weight": "0.5"}}, tta=["none", "h"])  # fmt: skip
    exp = schema.load(path)
    schema.check(exp)
    assert exp.path == path and exp.tta == ("none", "h") and exp.folds.used == (0, 1)
    assert exp.models["fpn"].weight == 0.5 and exp.models["fpn"].set == {"optim.lr": "2e-4"}
    assert exp.kernel.dry_run_images == 2 and exp.pseudo.rounds == 0 and exp.slurm.cluster == "slurm"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(reprots={}), r"top level: unknown key\(s\) \['reprots'\]"),
        (lambda d: d["models"]["unet"].update(sett={}), r"models\.unet: unknown key\(s\) \['sett'\]"),
        (lambda d: d["kernel"].update(dry_run=3), r"kernel: unknown key\(s\) \['dry_run'\]"),
        (lambda d: d["folds"].update(k="five"), r"folds\.k: must be an integer, got 'five'"),
        (lambda d: d.update(tta="none"), r"tta: must be a list"),
        (
            lambda d: d["models"]["unet"].update(weight=float("inf")),
            r"models\.unet\.weight: must be a finite",
        ),
        (lambda d: d.pop("data"), r"top level: missing key\(s\) \['data'\]"),
        (lambda d: d["data"].pop("test_images"), r"data: missing key\(s\) \['test_images'\]"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_with_their_path(tmp_path, data, configs, edit, message):
    path = edited(write_experiment(tmp_path / "exp.yaml", data, models(configs, "unet")), edit)
    with pytest.raises(ValueError, match=message) as caught:
        schema.load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_two_models_of_one_name_are_refused(tmp_path, data, configs):
    path = write_experiment(tmp_path / "exp.yaml", data, models(configs, "unet", "fpn"))
    text = path.read_text().replace("  fpn:", "  unet:")
    path.write_text(text)
    with pytest.raises(ValueError, match=r"key 'unet' given twice \(first on line \d+\)"):
        schema.load(path)


def put(d: dict, dotted: str, value, tmp: Path) -> None:
    """Set `d`'s nested key `dotted` (a `set` is given whole); a "TMP/..." string is a path under `tmp`."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        d = d.setdefault(key, {})
    d[leaf] = str(tmp / value[4:]) if isinstance(value, str) and value.startswith("TMP/") else value


CHECKED = [
    ("data.train_images", "TMP/nowhere", r"data\.train_images .*: no such folder"),
    ("data.train_csv", "TMP/x.csv", r"data\.train_csv .*: no such file"),
    ("models.unet.config", "TMP/nope.yaml", r"models\.unet\.config .*: no such file"),
    ("models.unet.set", {"data.fold": 1}, r"models\.unet\.set data\.fold: set by the experiment itself"),
    ("models.unet.init", "unet", r"models\.unet\.init 'unet': not another model"),
    ("folds.use", [0, 2], r"folds\.use \[0, 2\]: distinct folds among 0\.\.1"),
    ("inference.devices", "gpu", r"inference\.devices 'gpu': one of auto, cpu, cuda"),
]


@pytest.mark.parametrize("key, value, message", CHECKED)
def test_what_the_file_names_is_checked(tmp_path, data, configs, key, value, message):
    path = edited(write_experiment(tmp_path / "exp.yaml", data, models(configs, "unet")),
                  lambda d: put(d, key, value, tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match=message):
        schema.check(schema.load(path))


def test_a_model_name_is_a_folder_name_and_pseudo_rounds_own_the_extra_sources(tmp_path, data, configs):
    spec = {"a/b": {"config": str(configs["unet"]), "set": {"data.extra_sources": []}}}
    path = write_experiment(tmp_path / "exp.yaml", data, spec, pseudo={"rounds": 1})
    with pytest.raises(
        ValueError, match=r"models\.a/b: a name is letters.*extra_sources: set by the experiment"
    ):
        schema.check(schema.load(path))


def test_init_models_may_not_form_a_cycle(tmp_path, data, configs):
    spec = {
        "a": {"config": str(configs["unet"]), "init": "b"},
        "b": {"config": str(configs["unet"]), "init": "a"},
    }
    with pytest.raises(ValueError, match=r"a cycle of init models \(a, b\)"):
        schema.check(schema.load(write_experiment(tmp_path / "exp.yaml", data, spec)))


REFUSALS = {
    "missing image folder": ("data.train_images", "TMP/gone", "no such folder"),
    "unknown key": ("models.unet.confg", "x", r"unknown key\(s\) \['confg'\]"),
    "missing model config": ("models.unet.config", "TMP/none.yaml", "no such file"),
    "two models of one name": (None, None, "given twice"),
    "a bad --set key": ("models.unet.set", {"optim.lrr": 1}, r"unknown key\(s\) \['lrr'\]"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("action", ["run", "plan"])
def test_refused_before_any_step_runs(tmp_path, data, configs, capsys, case, action):
    key, value, message = REFUSALS[case]
    path = write_experiment(tmp_path / "exp.yaml", data, models(configs, "unet", "fpn"))
    if key is None:
        path.write_text(path.read_text().replace("  fpn:", "  unet:"))
    else:
        edited(path, lambda d: put(d, key, value, tmp_path))
    assert cli.main(["experiment", action, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"steel-seg experiment: {path}") and re.search(message, err)
    assert not (tmp_path / "out").exists()


def test_the_shipped_experiment_files_are_valid(tmp_path, data, monkeypatch):
    """experiments/example.yaml and demo.yaml, run from a folder holding the data and the configs."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    for name in ("data", "demo/data"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if not (tmp_path / name).exists():
            (tmp_path / name).symlink_to(data)
    monkeypatch.chdir(tmp_path)
    example = schema.load(ROOT / "experiments" / "example.yaml")
    schema.check(example)
    assert list(example.models) == ["unet", "fpn", "cls"] and example.folds.used == (0, 1, 2, 3, 4)
    assert example.tta == ("none", "h", "v") and example.pseudo.rounds == 0
    demo = schema.load(ROOT / "experiments" / "demo.yaml")
    schema.check(demo)
    assert demo.out == "demo" and demo.folds.used == (0,) and demo.kernel.dry_run_images is None
