"""The built kernel end to end: run where only its embedded copies of steel_seg and smp exist.

The isolated interpreter is the venv's python with `-s -S` (no site-packages, no .pth, so no editable install)
and a PYTHONPATH of symlinks to every site-packages entry except steel_seg and segmentation_models_pytorch.
The built script runs with the imports of training, reports, the CLI, the workflows and albumentations made to
fail (`BLOCKED`): inference needs none of them. Models are real tiny smp Unets (random init), images the
synthetic set's test JPEGs (and the real sample's, where ../shared has it) laid out as a Kaggle test folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
import torch

from steel_seg import bundle, kernel
from steel_seg.cli import main as steel_seg_cli
from steel_seg.competition import SAMPLE_LAYOUTS, Layout
from steel_seg.engine.ensemble import Ensemble
from steel_seg.engine.locations import Locations
from steel_seg.engine.submit import Inputs
from steel_seg.formats import submission
from steel_seg.models import factory
from steel_seg.models.manifest import write_manifest
from steel_seg.models.recipe import Member, Recipe
from steel_seg.postprocess.rules import ClassRule, Rules

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "kernel" / "bootstrap.py.tmpl"
TINY = factory.ModelSpec(
    arch="Unet", encoder="tu-mobilenetv3_small_050", encoder_depth=3, decoder_channels=(8, 8, 8)
)
HIDDEN = ("steel_seg", "segmentation_models_pytorch", "__editable__")
N_GOOD = 2
BAD = {
    "corrupt.jpg": "not a decodable image",
    "truncated.jpg": "not a decodable image",
    "missing.jpg": "file not found",
}
ODD = ("grey_1channel.jpg", "small_800x128.jpg")
RUN_FLAGS = ["--device", "cpu", "--batch-size", "4", "--no-progress"]
BLOCKED = (
    "steel_seg.train",
    "steel_seg.report",
    "steel_seg.cli",
    "steel_seg.workflow",
    "steel_seg.synthetic",
    "albumentations",
)
# Runs `sys.argv[1]` as __main__ with the BLOCKED imports failing, as they would were those packages absent.
BLOCKING_RUNNER = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(name + ": blocked (the kernel must not need it)")
sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_weights(weights_dir: Path) -> Path:
    torch.manual_seed(0)
    factory.save(factory.build_model(TINY), TINY, weights_dir / "tiny")
    write_manifest(weights_dir, ["tiny"], tta=("none",))
    Rules(tuple(ClassRule(k, 0.5, 20, 50) for k in range(1, 5))).save(weights_dir / "thresholds.json")
    return weights_dir


def make_test_folder(source: Path, root: Path) -> list[str]:
    """`root/test_images` with good JPEGs of `source`, the bad files and the odd ones; returns every listed
    ImageId."""
    images = root / "test_images"
    images.mkdir(parents=True)
    good = sorted(p.name for p in source.glob("*.jpg"))[:N_GOOD]
    for name in good:
        shutil.copy(source / name, images / name)
    data = bytearray((images / good[0]).read_bytes())
    (images / "truncated.jpg").write_bytes(data[: len(data) * 2 // 5])
    data[2:600] = bytes(598)
    (images / "corrupt.jpg").write_bytes(data)
    grey = cv2.imread(str(images / good[1]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(images / "grey_1channel.jpg"), grey)
    cv2.imwrite(str(images / "small_800x128.jpg"), cv2.resize(grey, (800, 128)))
    return [
        good[0],
        "corrupt.jpg",
        good[1],
        "truncated.jpg",
        "grey_1channel.jpg",
        "missing.jpg",
        *good[2:],
        "small_800x128.jpg",
    ]


def write_sample(path: Path, image_ids: list[str], layout: Layout) -> Path:
    """A sample_submission.csv in Kaggle's own style: final `id,1 409600,0`; stage 1 `id_c,1 1` x 4."""
    if layout is Layout.FINAL:
        rows = [f"{i},1 409600,0" for i in image_ids]
    else:
        rows = [f"{i}_{c},1 1" for i in image_ids for c in range(1, 5)]
    path.write_text("\n".join([layout.header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(synthetic_set, tmp_path_factory):
    """Weights, the built kernel, a Kaggle-like data dir with both sample layouts, the isolated site dir."""
    root = tmp_path_factory.mktemp("kernel")
    weights = make_weights(root / "weights")
    script = bundle.build(weights, root / "kernel", TEMPLATE).script
    data = root / "data"
    ids = make_test_folder(synthetic_set.out_dir / "test_images", data)
    samples = {
        layout: write_sample(data / f"sample_{layout.name}.csv", ids, layout) for layout in SAMPLE_LAYOUTS
    }
    return {
        "root": root,
        "weights": weights,
        "script": script,
        "data": data,
        "ids": ids,
        "samples": samples,
        "site": isolated_site(root / "site"),
    }


def isolated_site(link_dir: Path) -> Path:
    """Symlinks to every site-packages entry except the package, smp and the editable-install hooks."""
    link_dir.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in sorted(site.iterdir()):
        if not entry.name.startswith(HIDDEN) and not entry.name.endswith(".pth"):
            (link_dir / entry.name).symlink_to(entry)
    return link_dir


def run_isolated(
    setup: dict, args: list[str], tmp: Path, blocked: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """The isolated interpreter on `args`; `blocked`: script `args[0]` runs with those imports failing."""
    if blocked:
        args = ["-c", BLOCKING_RUNNER.format(blocked=blocked), *args]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(setup["site"]),
        "TMPDIR": str(tmp),
        "HOME": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    return subprocess.run(
        [sys.executable, "-s", "-S", *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def kernel_args(setup: dict, sample: Path, out: Path, weights: Path | None = None) -> list[str]:
    return [
        str(setup["script"]),
        "--data-dir",
        str(setup["data"]),
        "--sample-csv",
        str(sample),
        "--weights-dir",
        str(weights or setup["weights"]),
        "--out",
        str(out),
        *RUN_FLAGS,
    ]


def tidy(path: Path) -> pd.DataFrame:
    return submission.read_predictions(path).sort_values(["ImageId", "ClassId"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """`steel-seg predict` (in this process, the installed package) on the final-layout sample."""
    out = setup["root"] / "reference.csv"
    sample = setup["samples"][Layout.FINAL]
    code = steel_seg_cli(
        [
            "predict",
            "--weights-dir",
            str(setup["weights"]),
            "--images",
            str(setup["data"] / "test_images"),
            "--sample",
            str(sample),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    return out


def test_isolated_interpreter_cannot_import_the_package(setup, tmp_path):
    names = ("steel_seg", "segmentation_models_pytorch", "torch", "timm", "huggingface_hub", "safetensors")
    probe = f"import importlib.util as u; print([u.find_spec(n) is not None for n in {names!r}])"
    result = run_isolated(setup, ["-c", probe], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[False, False, True, True, True, True]"


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(SAMPLE_LAYOUTS))
def test_kernel_runs_from_its_embedded_copies(setup, reference, tmp_path, layout):
    sample, out = setup["samples"][layout], tmp_path / "out" / "submission.csv"
    result = run_isolated(setup, [*kernel_args(setup, sample, out), "--workers", "1"], tmp_path, BLOCKED)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    for name in ("steel_seg", "segmentation_models_pytorch"):
        where = rf"{re.escape(str(tmp_path))}/steel_seg_kernel_\w+/{name}"
        assert re.search(rf"INFO {name} \S+ from {where}\n", log)
    assert submission.validate(out, sample) == []
    assert out.read_text().splitlines()[0] == layout.header
    for name, reason in BAD.items():
        assert f"{name}: {reason} (predicted empty)" in log
    assert "small_800x128.jpg: size 800x128, resized to 1600x256 (predicted after resizing)" in log
    predicted = tidy(out)
    assert set(predicted["ImageId"]).isdisjoint(BAD)
    assert set(ODD) <= set(predicted["ImageId"])
    pd.testing.assert_frame_equal(predicted, tidy(reference))
    if layout is Layout.FINAL:
        assert out.read_bytes() == reference.read_bytes()


def test_the_blocking_runner_really_blocks(setup, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import albumentations\n")
    result = run_isolated(setup, [str(probe)], tmp_path, BLOCKED)
    assert result.returncode != 0 and "albumentations: blocked" in result.stderr


@pytest.mark.slow
def test_kernel_on_the_real_sample_needs_no_training_code(setup, sample_dir, tmp_path):
    """The real Severstal JPEGs plus the bad files, with training/report/CLI/albumentations blocked: the usual
    submission, row for row the one `steel-seg predict` writes with the whole package installed."""
    data = tmp_path / "data"
    images = data / "test_images"
    shutil.copytree(setup["data"] / "test_images", images)
    real = sorted(p.name for p in (sample_dir / "train_images").glob("*.jpg"))
    for name in real:
        shutil.copy(sample_dir / "train_images" / name, images / name)
    ids = [*real, *setup["ids"]]
    sample = write_sample(data / "sample_submission.csv", ids, Layout.FINAL)
    out, reference = tmp_path / "submission.csv", tmp_path / "reference.csv"
    args = ["--weights-dir", str(setup["weights"]), "--out"]
    flags = ["--device", "cpu", "--batch-size", "4", "--workers", "0", "--no-progress"]
    predict = ["predict", "--images", str(images), "--sample", str(sample), *args, str(reference), *flags]
    assert steel_seg_cli(predict) == 0
    kernel_run = [str(setup["script"]), "--data-dir", str(data), *args, str(out), *flags]
    result = run_isolated(setup, kernel_run, tmp_path, BLOCKED)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert submission.validate(out, sample) == []
    for name, reason in BAD.items():
        assert f"{name}: {reason} (predicted empty)" in log
    assert out.read_bytes() == reference.read_bytes()


def embedded(setup: dict, weights: Path | None = None) -> tuple[dict, dict]:
    """The manifest and rules the built script carries."""
    weights = weights or setup["weights"]
    return json.loads((weights / "manifest.json").read_text()), json.loads(
        (weights / "thresholds.json").read_text()
    )


def run_in_process(
    setup: dict, out: Path, *extra: str, weights: Path | None = None, manifest: dict | None = None
) -> int:
    """`kernel.main` as the bundled script calls it, with the embedded manifest and rules."""
    weights = weights or setup["weights"]
    default_manifest, rules = embedded(setup, weights)
    args = kernel_args(setup, setup["samples"][Layout.ORIGINAL], out, weights)[1:]
    return kernel.main([*args, "--workers", "0", *extra], manifest or default_manifest, rules)


def test_wrong_checksum_stops_the_kernel_before_any_image(setup, tmp_path, caplog):
    weights = tmp_path / "weights"
    shutil.copytree(setup["weights"], weights)
    path = weights / "tiny" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(data)
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out, weights=weights) == kernel.STARTUP_FAILED
    assert f"{path}: sha256" in caplog.text and "does not match the manifest" in caplog.text
    assert "start-up check failed, nothing predicted" in caplog.text
    assert "predicted" not in caplog.text.split("start-up check failed")[0]
    assert not out.exists()


def test_rules_tuned_on_another_ensemble_stop_the_kernel_unless_allowed(setup, tmp_path, caplog):
    """thresholds.json tuned on a recipe the embedded manifest cannot be compared with (its model has no
    provenance): the kernel stops before any image; --allow-recipe-mismatch runs, logging why."""
    weights = tmp_path / "weights"
    shutil.copytree(setup["weights"], weights)
    member = Member(name="unet", role="seg", arch="Unet", encoder=TINY.encoder, classes=4, aux_head=False,
                    config_sha256="c" * 64, weight=1.0, tta=("none",))  # fmt: skip
    recipe = Recipe(members=(member,), folds_sha256="a" * 64, runs={"unet": {0: "b" * 64}})
    rules = Rules.load(weights / "thresholds.json")
    dataclasses.replace(rules, tuning={"recipe": recipe.to_dict()}).save(weights / "thresholds.json")
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out, weights=weights) == kernel.STARTUP_FAILED
    assert "the rules were tuned on another ensemble than the manifest ships" in caplog.text
    assert "tiny: no provenance" in caplog.text and not out.exists()
    assert run_in_process(setup, out, "--allow-recipe-mismatch", weights=weights) == kernel.OK
    assert "recipe (allowed by --allow-recipe-mismatch)" in caplog.text and out.exists()


def test_spec_mismatch_stops_the_kernel(setup, tmp_path, caplog):
    weights = tmp_path / "weights"
    shutil.copytree(setup["weights"], weights)
    spec = json.loads((weights / "tiny" / "spec.json").read_text())
    (weights / "tiny" / "spec.json").write_text(json.dumps({**spec, "decoder_channels": [16, 8, 8]}))
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out, weights=weights) == kernel.STARTUP_FAILED
    assert "model 'tiny'" in caplog.text and "spec.json vs model.safetensors" in caplog.text
    assert not out.exists()


def test_missing_inputs_stop_the_kernel(setup, tmp_path, caplog):
    out = tmp_path / "submission.csv"
    code = run_in_process(setup, out, "--images-dir", str(tmp_path / "nowhere"))
    assert code == kernel.STARTUP_FAILED
    assert f"{tmp_path / 'nowhere'}: test image folder not found" in caplog.text
    manifest = json.loads((setup["weights"] / "manifest.json").read_text())
    manifest["models"][0]["dir"] = "gone"
    assert run_in_process(setup, out, manifest=manifest) == kernel.STARTUP_FAILED
    assert f"{setup['weights'] / 'gone' / 'spec.json'}: missing" in caplog.text
    assert not out.exists()


def test_limit_predicts_the_first_images_and_writes_the_rest_empty(setup, tmp_path, caplog):
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out, "--limit", "1") == kernel.OK
    sample = setup["samples"][Layout.ORIGINAL]
    assert submission.validate(out, sample) == []
    assert set(tidy(out)["ImageId"]) <= {setup["ids"][0]}
    others = len(setup["ids"]) - 1
    assert f"--limit 1: the other {others} images of the sample are written empty" in caplog.text
    assert "DEADLINE" not in caplog.text and "written empty in" not in caplog.text


@pytest.mark.parametrize("layout", list(SAMPLE_LAYOUTS))
def test_the_kernel_stops_at_its_budget_with_a_complete_submission(
    setup, tmp_path, monkeypatch, caplog, layout
):
    """Each forward of the real model sleeps 2 s more: a 3 s budget cuts the run, which still exits 0."""
    forward = Ensemble.forward

    def slow_forward(self, *args, **kwargs):
        time.sleep(2.0)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Ensemble, "forward", slow_forward)
    out, sample = tmp_path / "submission.csv", setup["samples"][layout]
    args = kernel_args(setup, sample, out)[1:]
    start = time.perf_counter()
    code = kernel.main([*args, "--workers", "0", "--batch-size", "1", "--budget-s", "3"], *embedded(setup))
    assert code == kernel.OK and time.perf_counter() - start < 3.0 + 3.0
    assert submission.validate(out, sample) == []
    assert re.search(r"DEADLINE: [1-7] of 7 images were not reached and are written empty", caplog.text)


@pytest.mark.slow
def test_the_built_kernel_never_outlives_its_budget(setup, tmp_path):
    """The demo kernel on 200 real images on the CPU with --budget-s 15: it stops at the limit, exit 0.

    Only the imports and checks before the first image can outlast the limit (on a loaded machine); the run
    then writes everything empty at once."""
    data = tmp_path / "data"
    (data / "test_images").mkdir(parents=True)
    good = [setup["data"] / "test_images" / i for i in setup["ids"][:3:2]]
    ids = [f"{i:04d}{good[i % 2].name}" for i in range(200)]
    for i, image_id in enumerate(ids):
        shutil.copy(good[i % 2], data / "test_images" / image_id)
    sample = write_sample(data / "sample_submission.csv", ids, Layout.FINAL)
    out = tmp_path / "submission.csv"
    args = [str(setup["script"]), "--data-dir", str(data), "--weights-dir", str(setup["weights"]),
            "--out", str(out), "--devices", "cpu", "--batch-size", "4", "--budget-s", "15"]  # fmt: skip
    start = time.perf_counter()
    result = run_isolated(setup, args, tmp_path)
    wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    startup = float(re.search(r"start-up checks passed in ([\d.]+)s", log).group(1))
    assert wall < max(15, startup) + 6, log
    assert submission.validate(out, sample) == []
    assert re.search(r"DEADLINE: \d+ of 200 images were not reached", log)
    assert len(re.findall(r"INFO predict: \d+/200 images", log)) <= 10  # no progress bar off a terminal


def test_failure_mid_run_still_leaves_a_complete_submission(setup, tmp_path, monkeypatch, caplog):
    """An accelerator error cannot be caused on a CPU, so the second batch's forward is made to raise one
    (the first forward is the start-up check's)."""
    forward, calls = Ensemble.forward, []

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (injected)")
        return forward(self, *args, **kwargs)

    full = tmp_path / "full.csv"
    assert run_in_process(setup, full, "--batch-size", "1") == kernel.OK
    calls.clear()
    monkeypatch.setattr(Ensemble, "forward", failing_forward)
    out = tmp_path / "submission.csv"
    out.write_text("stale output of an earlier run\n")
    assert run_in_process(setup, out, "--batch-size", "1", "--strict") == kernel.RUN_FAILED
    assert "prediction failed mid-run" in caplog.text and "CUDA out of memory (injected)" in caplog.text
    assert submission.validate(out, setup["samples"][Layout.ORIGINAL]) == []
    assert len(calls) in (3, 4)  # the batch queued behind the failing one may still have run
    # The first image's rows are kept exactly; every later image is written empty.
    first = setup["ids"][0]
    kept, expected = tidy(out), tidy(full)
    assert kept.equals(expected[expected["ImageId"] == first].reset_index(drop=True))
    calls.clear()
    assert run_in_process(setup, out, "--batch-size", "1") == kernel.OK  # not strict: Kaggle still scores it
    assert "DEGRADED RUN" in caplog.text


def test_default_paths_are_kaggle_inputs(tmp_path):
    where = Locations(True, tmp_path / "input", tmp_path / "working")
    competition = tmp_path / "input" / "severstal-steel-defect-detection"
    (competition / "test_images").mkdir(parents=True)
    (competition / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n")
    (tmp_path / "input" / "w").mkdir()
    (tmp_path / "input" / "w" / "manifest.json").write_text("{}")
    args = kernel.parse_args(["--competition", "severstal-steel-defect-detection", "--weights-dataset", "w"])
    assert kernel.resolve_inputs(args, where) == Inputs(
        competition / "test_images",
        competition / "sample_submission.csv",
        tmp_path / "input" / "w",
        tmp_path / "working" / "submission.csv",
        search_root=tmp_path / "input",
    )


def test_inputs_mounted_elsewhere_are_found_by_their_marker(tmp_path):
    where = Locations(True, tmp_path / "input", tmp_path / "working")
    competition = tmp_path / "input" / "competitions" / "severstal-steel-defect-detection"
    (competition / "test_images").mkdir(parents=True)
    (competition / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n")
    weights = tmp_path / "input" / "datasets" / "someone" / "steel-seg-weights"
    weights.mkdir(parents=True)
    (weights / "manifest.json").write_text("{}")
    args = kernel.parse_args(["--weights-dataset", "steel-seg-weights"])
    inputs = kernel.resolve_inputs(args, where)
    assert (inputs.images_dir, inputs.weights_dir) == (competition / "test_images", weights)
    (tmp_path / "input" / "other").mkdir()
    (tmp_path / "input" / "other" / "manifest.json").write_text("{}")
    assert kernel.resolve_inputs(args, where).weights_dir == weights  # the one named after the slug
    args = kernel.parse_args(["--weights-dataset", "renamed"])
    with pytest.raises(
        FileNotFoundError, match=r"no folder named renamed holds manifest.json; expected one"
    ) as error:
        kernel.resolve_inputs(args, where)
    assert f"{tmp_path / 'input'} holds:\n  competitions/\n    severstal-steel-defect-detection/\n" in str(
        error.value
    )


def kaggle_input(setup: dict, root: Path) -> Path:
    """An input root as Kaggle mounts it now, everything renamed: the competition under another name, the
    weights dataset renamed and nested, the model dir renamed (4 levels down), a second dataset with a
    manifest of its own; returns the root."""
    competition = root / "competitions" / "steel-comp-copy"
    shutil.copytree(setup["data"], competition)
    shutil.copy(setup["samples"][Layout.FINAL], competition / "sample_submission.csv")
    weights = root / "datasets" / "someone" / "steel-seg-weights-v2"
    weights.mkdir(parents=True)
    shutil.copy(setup["weights"] / "manifest.json", weights / "manifest.json")
    shutil.copytree(setup["weights"] / "tiny", weights / "tiny-v2")
    other = root / "datasets" / "someone" / "other-models"
    shutil.copytree(setup["weights"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["models"][0]["sha256"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    (other / "tiny" / "model.safetensors").write_bytes(b"other weights")
    return root


def test_renamed_and_nested_inputs_are_found(setup, tmp_path, monkeypatch, caplog):
    root = kaggle_input(setup, tmp_path / "input")
    monkeypatch.setenv("STEEL_SEG_INPUT", str(root))
    out = tmp_path / "submission.csv"
    args = [
        "--weights-dataset",
        "steel-seg-weights",
        "--out",
        str(out),
        *RUN_FLAGS,
        "--workers",
        "0",
        "--limit",
        "2",
    ]
    assert kernel.main(args, *embedded(setup)) == kernel.OK
    weights = root / "datasets" / "someone" / "steel-seg-weights-v2"
    assert f"model 'tiny': not in {weights}; using {weights / 'tiny-v2'} (same sha256)" in caplog.text
    assert submission.validate(out, root / "competitions" / "steel-comp-copy" / "sample_submission.csv") == []


def test_a_model_found_nowhere_stops_the_kernel_with_a_listing(setup, tmp_path, monkeypatch, caplog):
    root = kaggle_input(setup, tmp_path / "input")
    shutil.rmtree(root / "datasets" / "someone" / "steel-seg-weights-v2" / "tiny-v2")
    monkeypatch.setenv("STEEL_SEG_INPUT", str(root))
    out = tmp_path / "submission.csv"
    assert kernel.main(["--out", str(out), *RUN_FLAGS], *embedded(setup)) == kernel.STARTUP_FAILED
    assert (
        "model(s) 'tiny' (dir tiny, sha256" in caplog.text
        and "is the weights dataset attached" in caplog.text
    )
    assert f"{root} holds:\n  competitions/\n    steel-comp-copy/\n  datasets/\n    someone/\n" in caplog.text
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_the_kernel_stops_unless_asked_for_the_cpu(setup, tmp_path, caplog):
    out = tmp_path / "submission.csv"
    args = [
        a for a in kernel_args(setup, setup["samples"][Layout.FINAL], out)[1:] if a not in ("--device", "cpu")
    ]
    assert kernel.main(args, *embedded(setup)) == kernel.STARTUP_FAILED
    assert "no GPU is visible" in caplog.text and "--devices cpu" in caplog.text
    assert "NvidiaTeslaT4" in caplog.text and not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_bad_budget_is_refused_by_the_parser(value, capsys):
    with pytest.raises(SystemExit):
        kernel.parse_args(["--budget-s", value])
    assert f"argument --budget-s: {value!r} is not a finite number of seconds > 0" in capsys.readouterr().err


def test_a_missing_package_stops_the_kernel_with_its_name(setup, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "timm", None)
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out) == kernel.STARTUP_FAILED
    assert "timm: cannot be imported: ModuleNotFoundError" in caplog.text
    assert not out.exists()


def test_inference_path_needs_no_training_only_packages():
    """The kernel imports neither albumentations nor scikit-learn: Kaggle's versions cannot break it."""
    code = (
        "import sys, steel_seg.kernel, steel_seg.engine.predict, steel_seg.postprocess.rules;"
        "import steel_seg.formats.submission;"
        "print(sorted(m for m in ('albumentations', 'sklearn', 'iterstrat') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- Kaggle's two runs: the push run and the scoring re-run -------------------------------------------------


PUSH = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_URL_BASE": "https://www.kaggle.com"}
RERUN = {**PUSH, "KAGGLE_IS_COMPETITION_RERUN": "1"}


def predicted_images(out: Path) -> set[str]:
    return set(submission.read_predictions(out)["ImageId"])


@pytest.fixture
def bright(setup, tmp_path) -> dict:
    """The setup with rules that turn every pixel of a readable image on: a predicted image always has masks,
    an image left empty has none, so the file tells which images the run predicted."""
    weights = tmp_path / "weights"
    shutil.copytree(setup["weights"], weights)
    Rules(tuple(ClassRule(k, 0.0) for k in range(1, 5))).save(weights / "thresholds.json")
    return {**setup, "weights": weights}


def test_the_push_run_predicts_a_sample_and_projects_the_full_run(bright, tmp_path, monkeypatch, caplog):
    """Every push used to spend the whole run (~55 GPU minutes) on a file Kaggle does not score."""
    for name, value in {**PUSH, "KAGGLE_USER_SECRETS_TOKEN": "s3cret-token"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    out = tmp_path / "submission.csv"
    assert run_in_process(bright, out, "--push-sample", "2", weights=bright["weights"]) == kernel.OK
    assert predicted_images(out) == set(bright["ids"][:2]) - set(BAD)
    assert submission.validate(out, bright["samples"][Layout.ORIGINAL]) == []
    assert "run: push run (KAGGLE_IS_COMPETITION_RERUN not set)" in caplog.text
    assert "KAGGLE_KERNEL_RUN_TYPE=Batch" in caplog.text and "s3cret-token" not in caplog.text
    assert "KAGGLE_USER_SECRETS_TOKEN=<set, 12 characters, not shown>" in caplog.text
    total = len(bright["ids"])
    assert (
        f"PUSH RUN (not scored: Kaggle's scoring re-run predicts every image): predicted the first 2 of "
        f"{total} images with the full ensemble (tiny: none) on 1 device(s)" in caplog.text
    )
    projected = rf"projected full run: \d+s start-up \+ {total} images / [\d.]+ images/s = \d+s against the "
    assert re.search(projected + r"3300s budget: fits \(\d+% of it\)", caplog.text)
    record = json.loads(out.with_suffix(".run.json").read_text())
    assert len(record["not_predicted"]["limit"]) == total - 2


def test_the_scoring_rerun_predicts_every_image(bright, tmp_path, monkeypatch, caplog):
    for name, value in RERUN.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "submission.csv"
    code = run_in_process(bright, out, "--push-sample", "2", "--limit", "1", weights=bright["weights"])
    assert code == kernel.OK
    assert predicted_images(out) == set(bright["ids"]) - set(BAD)
    assert "run: scoring re-run (KAGGLE_IS_COMPETITION_RERUN set)" in caplog.text
    assert "scoring re-run: --limit 1 ignored, every image is predicted" in caplog.text
    assert "PUSH RUN" not in caplog.text


def test_a_local_run_predicts_every_image_whatever_the_push_sample(bright, tmp_path, monkeypatch, caplog):
    for name in (*RERUN, "KAGGLE_USER_SECRETS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "submission.csv"
    assert run_in_process(bright, out, "--push-sample", "2", weights=bright["weights"]) == kernel.OK
    assert predicted_images(out) == set(bright["ids"]) - set(BAD)
    assert "run: local run" in caplog.text and "no KAGGLE_* variable is set" in caplog.text


def only_competition(setup: dict, root: Path) -> Path:
    """An input root holding the competition and no weights dataset."""
    competition = root / "competitions" / "severstal-steel-defect-detection"
    shutil.copytree(setup["data"], competition)
    shutil.copy(setup["samples"][Layout.FINAL], competition / "sample_submission.csv")
    return competition


def test_the_rerun_without_the_weights_dataset_still_leaves_a_valid_file(
    setup, tmp_path, monkeypatch, caplog
):
    competition = only_competition(setup, tmp_path / "input")
    monkeypatch.setenv("STEEL_SEG_INPUT", str(tmp_path / "input"))
    out = tmp_path / "working" / "submission.csv"
    args = ["--out", str(out), *RUN_FLAGS, "--workers", "0"]
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    assert kernel.main(args, *embedded(setup)) == kernel.STARTUP_FAILED and not out.exists()  # fails loudly
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    caplog.clear()
    assert kernel.main(args, *embedded(setup)) == kernel.OK
    assert submission.validate(out, competition / "sample_submission.csv") == []
    assert submission.read_predictions(out).empty
    assert "is the weights dataset attached" in caplog.text
    assert "SCORING RE-RUN: the run would have ended with exit code 2" in caplog.text
    assert f"SCORING RE-RUN: {out} is a valid submission with 0 predicted mask(s)" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_the_rerun_without_a_gpu_still_leaves_a_valid_file(setup, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    out = tmp_path / "submission.csv"
    sample = setup["samples"][Layout.FINAL]
    args = [a for a in kernel_args(setup, sample, out)[1:] if a not in ("--device", "cpu")]
    assert kernel.main(args, *embedded(setup)) == kernel.OK
    assert submission.validate(out, sample) == [] and submission.read_predictions(out).empty
    assert "no GPU is visible" in caplog.text and "SCORING RE-RUN" in caplog.text


def test_an_invalid_file_on_the_rerun_becomes_its_best_valid_version(bright, tmp_path, monkeypatch, caplog):
    """A validation that fails (here: injected) exits 4 on the push run; the re-run keeps every good row."""
    from steel_seg.engine import submit

    monkeypatch.setattr(submit.submission, "validate", lambda *a, **k: ["injected problem"])
    out = tmp_path / "submission.csv"
    assert run_in_process(bright, out, weights=bright["weights"]) == kernel.INVALID
    written = out.read_bytes()
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    assert run_in_process(bright, out, weights=bright["weights"]) == kernel.OK
    assert "invalid submission" in caplog.text and "SCORING RE-RUN: the run would have ended with exit code 4"
    assert out.read_bytes() == written  # every row was well formed: all kept, byte for byte
    monkeypatch.setattr(submit, "run", lambda *a, **k: 1 / 0)  # an unexpected error after the checks
    caplog.clear()
    assert run_in_process(bright, out, weights=bright["weights"]) == kernel.OK
    assert "ZeroDivisionError" in caplog.text and "exit code 3" in caplog.text
    assert submission.read_predictions(out).empty  # this run wrote nothing of its own: all empty
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN")
    with pytest.raises(ZeroDivisionError):
        run_in_process(bright, out, weights=bright["weights"])


# --- the kernel's output ------------------------------------------------------------------------------------


def models_loaded(log: str) -> bool:
    return "one image through the ensemble" in log


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder nobody can write in: a read-only tmpfs for root (who ignores modes), mode 0555 otherwise."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]).returncode:
        pytest.skip("cannot mount a read-only tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_an_unwritable_out_stops_the_kernel_before_the_models_load(setup, read_only, caplog):
    """The old kernel predicted everything, logged "the submission is complete and valid", then "no
    submission was written", and exited 0."""
    out = read_only / "submission.csv"
    assert run_in_process(setup, out) == kernel.STARTUP_FAILED
    assert f"{out}: cannot write in {read_only}" in caplog.text
    assert not models_loaded(caplog.text) and "complete and valid" not in caplog.text


@pytest.mark.parametrize("target", ["sample", "manifest", "folder"])
def test_an_out_that_is_an_input_or_a_folder_is_refused_at_start(setup, tmp_path, caplog, target):
    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    weights = tmp_path / "weights"
    shutil.copytree(setup["weights"], weights)
    sample = data / "sample.csv"
    shutil.copy(setup["samples"][Layout.ORIGINAL], sample)
    out = {"sample": sample, "manifest": weights / "manifest.json", "folder": tmp_path / "outdir"}[target]
    out.mkdir(exist_ok=True) if target == "folder" else None
    before = {p: p.read_bytes() for p in [sample, weights / "manifest.json"]}
    args = [
        "--data-dir",
        str(data),
        "--sample-csv",
        str(sample),
        "--weights-dir",
        str(weights),
        "--out",
        str(out),
    ]
    assert kernel.main([*args, *RUN_FLAGS, "--workers", "0"], *embedded(setup)) == kernel.STARTUP_FAILED
    expected = {
        "sample": "--out is the sample submission this run reads",
        "manifest": f"--out is inside the weights folder {weights}, an input of this run",
        "folder": f"--out is a folder; give the submission's file, e.g. {out / 'submission.csv'}",
    }[target]
    assert f"{out}: {expected}" in caplog.text and not models_loaded(caplog.text)
    assert {p: p.read_bytes() for p in before} == before
    assert not list(tmp_path.glob("**/*.partial"))


def test_a_full_disk_leaves_the_earlier_file_and_no_partial(setup, tmp_path, caplog):
    """On a full tmpfs the old kernel left a truncated `.partial` and said the submission was complete."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "submission.csv"
        out.write_text("an earlier submission\n")
        with open(disk / "filler", "wb", buffering=0) as filler, pytest.raises(OSError, match="No space"):
            while True:
                filler.write(b"\0" * 4096)
        assert run_in_process(setup, out) == kernel.RUN_FAILED
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "submission.csv"]
        assert out.read_text() == "an earlier submission\n"
        assert f"{out}: cannot write the submission (No space left on device)" in caplog.text
        assert f"NO SUBMISSION: this run wrote nothing at {out}" in caplog.text
        assert "complete and valid" not in caplog.text
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- input discovery ----------------------------------------------------------------------------------------


def test_a_stale_weights_dataset_at_the_slug_loses_to_the_matching_one(setup, tmp_path, monkeypatch, caplog):
    """The old kernel took the slug's dataset and stopped on its sha256; the matching one sits 5 levels deep
    (datasets/<owner>/<slug>/<zip folder>/<model dir>), beyond the old search depth of 4."""
    root = tmp_path / "input"
    only_competition(setup, root)
    stale = root / "steel-seg-weights"
    shutil.copytree(setup["weights"], stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["models"][0]["sha256"] = "e" * 64
    (stale / "manifest.json").write_text(json.dumps(manifest))
    (stale / "tiny" / "model.safetensors").write_bytes(b"last week's weights")
    good = root / "datasets" / "someone" / "steel-seg-weights-v3"
    good.mkdir(parents=True)
    shutil.copy(setup["weights"] / "manifest.json", good / "manifest.json")
    shutil.copytree(setup["weights"] / "tiny", good / "archive" / "tiny")  # model dir at folder depth 5
    monkeypatch.setenv("STEEL_SEG_INPUT", str(root))
    out = tmp_path / "submission.csv"
    args = ["--weights-dataset", "steel-seg-weights", "--out", str(out), *RUN_FLAGS, "--workers", "0"]
    assert kernel.main(args, *embedded(setup)) == kernel.OK
    assert f"{stale} also holds manifest.json; not taken (not listing this kernel's weights): using {good}" \
        in caplog.text  # fmt: skip
    assert f"model 'tiny': not in {good}; using {good / 'archive' / 'tiny'} (same sha256)" in caplog.text


def test_the_rerun_with_inputs_it_cannot_tell_apart_still_leaves_a_valid_file(
    setup, tmp_path, monkeypatch, caplog
):
    """Two copies of the competition, neither in competitions/ nor named like it: start-up stops (exit 2) on
    the push run; the re-run writes an all-empty file from the first one's sample."""
    root = tmp_path / "input"
    for name in ("copy-a", "copy-b"):
        shutil.copytree(setup["data"], root / name)
        shutil.copy(setup["samples"][Layout.FINAL], root / name / "sample_submission.csv")
    monkeypatch.setenv("STEEL_SEG_INPUT", str(root))
    out = tmp_path / "submission.csv"
    args = ["--weights-dir", str(setup["weights"]), "--out", str(out), *RUN_FLAGS, "--workers", "0"]
    assert kernel.main(args, *embedded(setup)) == kernel.STARTUP_FAILED and not out.exists()
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "true")
    assert kernel.main(args, *embedded(setup)) == kernel.OK
    assert submission.validate(out, root / "copy-a" / "sample_submission.csv") == []
    assert f"SCORING RE-RUN: taking the sample of {root / 'copy-a'}, the first of" in caplog.text
