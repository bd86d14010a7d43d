"""The weights manifest: typed entries, validation, sha256, and building one from real model dirs."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from tiny_models import TINY_UNET as TINY

from steel_seg import cli
from steel_seg.models import factory
from steel_seg.models.manifest import (
    DEFAULT_BUDGET_S,
    Manifest,
    ManifestError,
    ModelEntry,
    build_manifest,
    check_model_dir,
    parse_views,
    sha256_file,
    write_manifest,
)
from steel_seg.train.config import DataConfig, ModelConfig, TrainConfig

TINY_CLS = factory.ModelSpec(
    arch="Classifier", encoder="tu-mobilenetv3_small_050", in_channels=1, encoder_depth=3
)


def _entry(name="a", role="seg", **kw) -> dict:
    return {
        "name": name,
        "role": role,
        "dir": name,
        "sha256": "ab" * 32,
        "weight": 1.0,
        "tta": ["none"],
        **kw,
    }


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    factory.save(factory.build_model(TINY), TINY, root / "seg-a")
    factory.save(factory.build_model(TINY), TINY, root / "seg-b")
    factory.save(factory.build_model(TINY_CLS), TINY_CLS, root / "cls")
    return root


def test_round_trip_through_json(tmp_path):
    d = {
        "models": [_entry("a", tta=["none", "h"]), _entry("c", role="cls")],
        "drop_order": ["tta:h"],
        "budget_s": 1200,
    }
    manifest = Manifest.from_dict(d)
    assert manifest.models[0] == ModelEntry("a", "seg", "a", "ab" * 32, 1.0, ("none", "h"))
    assert manifest.budget_s == 1200.0
    path = manifest.save(tmp_path / "manifest.json")
    assert Manifest.load(path) == manifest
    assert json.loads(path.read_text()) == {**d, "budget_s": 1200.0}


def test_budget_defaults_when_absent_or_null():
    assert Manifest.from_dict({"models": [_entry()]}).budget_s == DEFAULT_BUDGET_S
    assert Manifest.from_dict({"models": [_entry()], "budget_s": None}).budget_s == DEFAULT_BUDGET_S


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"models": [_entry(role="segmenter")]}, "role 'segmenter'"),
        ({"models": [_entry(tta=["none", "d"])]}, "tta"),
        ({"models": [_entry(tta=[])]}, "tta"),
        ({"models": [_entry(weight=0)]}, "weight"),
        ({"models": [_entry(), _entry()]}, "unique"),
        ({"models": [_entry(role="cls")]}, "at least one model with role 'seg'"),
        ({"models": [_entry()], "drop_order": ["model:zzz"]}, "drop_order step 'model:zzz'"),
        ({"models": [_entry()], "drop_order": ["tta:x"]}, "drop_order step 'tta:x'"),
        ({"models": [_entry()], "budget_s": -5}, "budget_s"),
    ],
)
def test_invalid_manifests_say_what_is_wrong(d, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(d)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(ManifestError, match="manifest not found"):
        Manifest.load(path)
    path.write_text('{"models": [{"name": "a"}]}')
    with pytest.raises(ManifestError, match=f"{path}: invalid manifest: 'role'"):
        Manifest.load(path)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match=str(path)):
        Manifest.load(path)


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_build_manifest_from_model_dirs(weights_dir):
    manifest = build_manifest(
        weights_dir,
        ["seg-a", weights_dir / "seg-b", "cls"],
        tta=("none", "h", "v"),
        weights=(1.0, 2.0, 1.0),
        budget_s=1000,
    )
    a, b, c = manifest.models
    assert (a.name, a.role, a.dir, a.tta) == ("seg-a", "seg", "seg-a", ("none", "h", "v"))
    assert (b.dir, b.weight) == ("seg-b", 2.0)
    assert (c.role, c.tta) == ("cls", ("none", "h", "v"))  # classifiers: the segmenters' views by default
    assert a.sha256 == hashlib.sha256((weights_dir / "seg-a" / "model.safetensors").read_bytes()).hexdigest()
    assert manifest.drop_order == ("tta:v", "tta:h", "model:seg-b")
    assert manifest.budget_s == 1000
    own = build_manifest(weights_dir, ["seg-a", "cls"], tta=("none", "h"), cls_tta=("none", "v"))
    assert [m.tta for m in own.models] == [("none", "h"), ("none", "v")]
    assert own.drop_order == ("tta:v", "tta:h")


def test_write_manifest_writes_a_loadable_file(weights_dir):
    path = write_manifest(weights_dir, ["seg-a"])
    assert path == weights_dir / "manifest.json"
    assert Manifest.load(path).models[0].name == "seg-a"


def test_build_manifest_rejects_dirs_outside_or_incomplete(weights_dir, tmp_path):
    with pytest.raises(ManifestError, match="not inside the weights dir"):
        build_manifest(weights_dir, [tmp_path])
    (weights_dir / "empty").mkdir(exist_ok=True)
    with pytest.raises(ManifestError, match="spec.json: missing"):
        build_manifest(weights_dir, ["empty"])


def test_check_model_dir_names_the_file(weights_dir):
    entry = build_manifest(weights_dir, ["seg-a"]).models[0]
    assert check_model_dir(weights_dir, entry) == weights_dir / "seg-a"
    wrong = ModelEntry(entry.name, "seg", entry.dir, "0" * 64)
    with pytest.raises(ManifestError, match=r"seg-a/model.safetensors: sha256 .* does not match"):
        check_model_dir(weights_dir, wrong)
    missing = ModelEntry("gone", "seg", "gone", "0" * 64)
    with pytest.raises(ManifestError, match=r"gone/spec.json: missing \(model 'gone'\)"):
        check_model_dir(weights_dir, missing)


def test_parse_views():
    assert parse_views("none, h,v") == ("none", "h", "v")
    with pytest.raises(ValueError, match="'none,x'"):
        parse_views("none,x")


def test_manifest_command_copies_models_and_writes_a_loadable_manifest(weights_dir, tmp_path):
    out = tmp_path / "upload"
    code = cli.main(
        [
            "manifest",
            "--weights-dir",
            str(out),
            "--model",
            f"unet-f0={weights_dir / 'seg-a'}",
            "--model",
            f"cls={weights_dir / 'cls'}",
            "--tta",
            "none,h",
            "--cls-tta",
            "none,h,v",
        ]
    )
    assert code == 0
    manifest = Manifest.load(out / "manifest.json")
    assert [(m.name, m.role, m.tta) for m in manifest.models] == [
        ("unet-f0", "seg", ("none", "h")),
        ("cls", "cls", ("none", "h", "v")),
    ]
    assert manifest.models[0].sha256 == sha256_file(weights_dir / "seg-a" / "model.safetensors")
    assert check_model_dir(out, manifest.models[1]) == out / "cls"


def test_manifest_command_names_a_missing_model_dir(tmp_path, capsys):
    code = cli.main(["manifest", "--weights-dir", str(tmp_path / "w"), "--model", f"a={tmp_path / 'nope'}"])
    assert code == 2
    assert "nope/spec.json: missing" in capsys.readouterr().err


def _truncated_copy(source, target):
    """A copy of a model dir whose safetensors lost its last 100 bytes (its sha256 is that of the copy)."""
    shutil.copytree(source, target)
    path = target / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return target


def test_manifest_command_refuses_weights_that_cannot_load(weights_dir, tmp_path, capsys):
    """What would stop the kernel at start-up on Kaggle is refused before the upload."""
    broken = _truncated_copy(weights_dir / "seg-a", tmp_path / "broken")
    args = ["manifest", "--weights-dir", str(tmp_path / "w1"), "--model", f"a={broken}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "model 'a'" in err and "model.safetensors: cannot read weights" in err
    mismatch = tmp_path / "mismatch"
    shutil.copytree(weights_dir / "seg-a", mismatch)
    spec = json.loads((mismatch / "spec.json").read_text())
    (mismatch / "spec.json").write_text(json.dumps({**spec, "arch": "FPN", "decoder_channels": []}))
    assert cli.main(["manifest", "--weights-dir", str(tmp_path / "w2"), "--model", f"b={mismatch}"]) == 2
    assert "weights do not match the model" in capsys.readouterr().err
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()  # nothing copied


def test_a_model_with_another_number_of_classes_is_refused(tmp_path):
    spec = factory.ModelSpec(**{**TINY.to_dict(), "classes": 3})
    factory.save(factory.build_model(spec), spec, tmp_path / "three")
    with pytest.raises(ManifestError, match="the model has 3 output classes; the competition has 4"):
        build_manifest(tmp_path, ["three"])


def tree(folder) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), and the hidden ones beside it, as a snapshot."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return files | {p.name: b"" for p in folder.parent.glob(f".{folder.name}*")}


def test_manifest_with_a_relative_weights_dir(weights_dir, tmp_path, monkeypatch):
    """README step 6 as written: `--weights-dir weights` (relative) with relative model dirs."""
    shutil.copytree(weights_dir / "seg-a", tmp_path / "runs" / "u-f0" / "best")
    monkeypatch.chdir(tmp_path)
    args = ["manifest", "--weights-dir", "weights", "--model", "u-f0=runs/u-f0/best", "--tta", "none,h"]
    assert cli.main(args) == 0
    manifest = Manifest.load(tmp_path / "weights" / "manifest.json")
    assert [m.dir for m in manifest.models] == ["u-f0"]
    check_model_dir(tmp_path / "weights", manifest.models[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "weights"]


def test_a_failed_manifest_leaves_the_weights_dir_as_it_was(weights_dir, tmp_path, capsys):
    """The second model cannot load: the first one's new weights must not land beside the old manifest (the
    kernel would stop on the sha256 mismatch). The weights dir is replaced whole or not at all."""
    weights = tmp_path / "weights"
    assert cli.main(["manifest", "--weights-dir", str(weights), "--model", f"m={weights_dir / 'seg-a'}"]) == 0
    (weights / "thresholds.json").write_text('{"tuned": true}')
    before = tree(weights)
    broken = _truncated_copy(weights_dir / "seg-a", tmp_path / "broken")
    args = ["manifest", "--weights-dir", str(weights), "--model", f"m={weights_dir / 'seg-b'}", "--model",
            f"x={broken}"]  # fmt: skip
    assert cli.main(args) == 2
    assert "model 'x'" in capsys.readouterr().err
    assert tree(weights) == before
    manifest = Manifest.load(weights / "manifest.json")
    check_model_dir(weights, manifest.models[0])  # the kernel would start


def test_manifest_keeps_files_it_does_not_write_and_replaces_only_model_dirs(weights_dir, tmp_path, capsys):
    weights = tmp_path / "weights"
    (weights / "old-round").mkdir(parents=True)
    (weights / "thresholds.json").write_text("tuned")
    (weights / "data").mkdir()
    (weights / "data" / "train.csv").write_text("mine")
    shutil.copytree(weights_dir / "seg-b", weights / "old-round", dirs_exist_ok=True)
    args = ["manifest", "--weights-dir", str(weights), "--model", f"data={weights_dir / 'seg-a'}"]
    assert cli.main(args) == 2
    assert f"{weights / 'data'}: exists and is not a model dir" in capsys.readouterr().err
    args = ["manifest", "--weights-dir", str(weights), "--model", f"old-round={weights_dir / 'seg-a'}"]
    assert cli.main(args) == 0
    assert (weights / "thresholds.json").read_text() == "tuned" and (weights / "data" / "train.csv").is_file()
    assert sha256_file(weights / "old-round" / "model.safetensors") == sha256_file(
        weights_dir / "seg-a" / "model.safetensors"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]  # no staging or old copy left
    # a weights dir above the model dirs it collects would be swapped with them in it
    assert (
        cli.main(
            ["manifest", "--weights-dir", str(weights_dir.parent), "--model", f"a={weights_dir / 'seg-a'}"]
        )
        == 2
    )
    assert "holds the model dir of 'a'" in capsys.readouterr().err


def test_manifest_refuses_a_model_whose_run_read_other_files(weights_dir, tmp_path, capsys):
    """A run's model dir (its parent holds run.json): a folds.csv changed since the run read it is refused
    (the OOF and rules of the ensemble would no longer match), unless --allow-changed-inputs."""
    run = tmp_path / "runs" / "u-f0"
    shutil.copytree(weights_dir / "seg-a", run / "best")
    folds = tmp_path / "folds.csv"
    folds.write_text("ImageId,fold\na.jpg,0\n")
    recorded = {"data.folds_csv": {"path": str(folds), "sha256": sha256_file(folds)}}
    info = {"name": "u-f0", "fold": 0, "folds_csv": str(folds), "train_csv": str(folds),
            "images_dir": str(tmp_path), "model_dir": "best", "inputs": recorded}  # fmt: skip
    (run / "run.json").write_text(json.dumps(info))
    data = DataConfig(train_csv=str(folds), images_dir=str(tmp_path), folds_csv=str(folds))
    TrainConfig(data=data, model=ModelConfig(TINY)).save_yaml(run / "config.yaml")
    folds.write_text("ImageId,fold\na.jpg,1\n")
    args = ["manifest", "--weights-dir", str(tmp_path / "weights"), "--model", f"u={run / 'best'}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{run / 'run.json'}: input files changed" in err and f"data.folds_csv {folds}: sha256" in err
    assert not (tmp_path / "weights").exists()
    assert cli.main([*args, "--allow-changed-inputs"]) == 0
