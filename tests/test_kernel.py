"""The built kernel end to end: run where only its embedded copies of steel_seg and smp exist.

The isolated interpreter is the venv's python with `-s -S` (no site-packages, no .pth, so no editable install)
and a PYTHONPATH of symlinks to every site-packages entry except steel_seg and segmentation_models_pytorch.
Models are real tiny smp Unets (random init), images the synthetic set's test JPEGs laid out as a Kaggle test
folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import pandas as pd
import pytest
import torch

from steel_seg import bundle, kernel, models, submission
from steel_seg.cli import main as steel_seg_cli
from steel_seg.competition import SAMPLE_LAYOUTS, Layout
from steel_seg.ensemble import Ensemble
from steel_seg.locations import Locations
from steel_seg.manifest import write_manifest
from steel_seg.postprocess import ClassRule, Rules
from steel_seg.submit import Inputs

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "kernel" / "bootstrap.py.tmpl"
TINY = models.ModelSpec(
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


def make_weights(weights_dir: Path) -> Path:
    torch.manual_seed(0)
    models.save(models.build_model(TINY), TINY, weights_dir / "tiny")
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


def run_isolated(setup: dict, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
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
    result = run_isolated(setup, [*kernel_args(setup, sample, out), "--workers", "1"], tmp_path)
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


def run_in_process(
    setup: dict, out: Path, *extra: str, weights: Path | None = None, manifest: dict | None = None
) -> int:
    """`kernel.main` as the bundled script calls it, with the embedded manifest and rules."""
    weights = weights or setup["weights"]
    manifest = manifest or json.loads((weights / "manifest.json").read_text())
    rules = json.loads((weights / "thresholds.json").read_text())
    args = kernel_args(setup, setup["samples"][Layout.ORIGINAL], out, weights)[1:]
    return kernel.main([*args, "--workers", "0", *extra], manifest, rules)


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


def test_limit_predicts_the_first_images_and_writes_the_rest_empty(setup, tmp_path):
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out, "--limit", "1") == kernel.OK
    sample = setup["samples"][Layout.ORIGINAL]
    assert submission.validate(out, sample) == []
    assert set(tidy(out)["ImageId"]) <= {setup["ids"][0]}


def test_failure_mid_run_still_leaves_a_complete_submission(setup, tmp_path, monkeypatch, caplog):
    """An accelerator error cannot be caused on a CPU, so the second batch's forward is made to raise one."""
    forward, calls = Ensemble.forward, []

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
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
    assert len(calls) == 2
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
    with pytest.raises(FileNotFoundError, match=r"steel-seg-weights/manifest\.json not found; expected one"):
        kernel.resolve_inputs(args, where)


def test_a_missing_package_stops_the_kernel_with_its_name(setup, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "timm", None)
    out = tmp_path / "submission.csv"
    assert run_in_process(setup, out) == kernel.STARTUP_FAILED
    assert "timm: cannot be imported: ModuleNotFoundError" in caplog.text
    assert not out.exists()


def test_inference_path_needs_no_training_only_packages():
    """The kernel imports neither albumentations nor scikit-learn: Kaggle's versions cannot break it."""
    code = (
        "import sys, steel_seg.kernel, steel_seg.predict, steel_seg.postprocess, steel_seg.submission;"
        "print(sorted(m for m in ('albumentations', 'sklearn', 'iterstrat') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
