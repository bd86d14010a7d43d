"""steel_seg.models.encoders: pretrained encoders through smp's own Hugging Face cache, planted here offline.

A resnet18 `imagenet` snapshot with distinctive random tensors and distinctive mean / std sits where smp's
loader reads it (`planted_hub`): the built model starts from it, `steel-seg encoder-weights` exports it, a
one-step `steel-seg train` starts from it and saves its per-channel normalisation in the spec, and the kernel
built from that run normalises the same way. An empty cache gives the clear error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import offline_env
from planted_hub import plant, serve_hub
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders import encoders as smp_table
from test_kernel import TEMPLATE, isolated_site, run_isolated
from tiny_models import forward_probs

from steel_seg import bundle
from steel_seg.cli import main as steel_seg_cli
from steel_seg.competition import IMAGE_SHAPE
from steel_seg.formats import rle, submission
from steel_seg.formats.images import read_grey
from steel_seg.models import encoders, factory
from steel_seg.models.encoders import EncoderWeightsError, HubWeights
from steel_seg.models.factory import GREY_MEAN, GREY_STD, ModelSpec, build_model
from steel_seg.postprocess.rules import ClassRule, Rules, threshold
from steel_seg.synthetic import dataset
from steel_seg.train.config import ModelConfig

ENCODER = "resnet18"
MEAN, STD = (0.2, 0.5, 0.8), (0.1, 0.2, 0.3)  # no real encoder's values: a match proves where they came from
REVISION = smp_table[ENCODER]["pretrained_settings"]["imagenet"]["revision"]
CLI = str(Path(sys.executable).parent / "steel-seg")
UNET = ModelSpec("Unet", ENCODER, decoder_channels=(16, 16, 8, 8, 8))


@pytest.fixture(scope="module")
def planted(hf_home) -> dict[str, torch.Tensor]:
    return plant(hf_home, ENCODER, "imagenet", MEAN, STD)


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------------------------ smp's table
def test_hub_weights_come_from_smps_table():
    assert encoders.hub_weights(ENCODER, "ssl") == HubWeights(
        ENCODER, "ssl", "smp-hub/resnet18.ssl", smp_table[ENCODER]["pretrained_settings"]["ssl"]["revision"]
    )
    with pytest.raises(EncoderWeightsError, match=r"weights 'nope'.*\['imagenet', 'ssl', 'swsl'\]"):
        encoders.hub_weights(ENCODER, "nope")
    with pytest.raises(EncoderWeightsError, match="unknown encoder 'resnet19'"):
        encoders.hub_weights("resnet19", "imagenet")


def test_timm_encoders_take_timms_weights():
    hub = encoders.hub_weights("tu-mobilenetv3_small_050", "imagenet")
    assert (hub.repo_id, hub.revision) == ("timm/mobilenetv3_small_050.lamb_in1k", None) and hub.smp_argument
    assert encoders.hub_weights("tu-resnet18.a1_in1k", "imagenet").repo_id == "timm/resnet18.a1_in1k"
    with pytest.raises(EncoderWeightsError, match="put a pretrained tag in the name"):
        encoders.hub_weights("tu-resnet18", "ssl")


# ------------------------------------------------------------------------------------------ building
@pytest.mark.parametrize("spec", [UNET, ModelSpec("Classifier", ENCODER)], ids=["Unet", "Classifier"])
def test_the_built_model_starts_from_the_planted_encoder(planted, spec):
    torch.manual_seed(0)
    model = build_model(spec, encoder_weights="imagenet")
    assert_same_state(model.encoder.state_dict(), planted)


def test_a_grey_model_gets_the_planted_stem_summed_over_rgb(planted):
    model = build_model(ModelSpec("Unet", ENCODER, in_channels=1), encoder_weights="imagenet")
    torch.testing.assert_close(model.encoder.conv1.weight, planted["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.encoder.layer4[1].conv2.weight, planted["layer4.1.conv2.weight"])


def test_weights_not_in_the_cache_offline_name_the_ways_out(planted):
    with pytest.raises(EncoderWeightsError) as err:
        build_model(UNET, encoder_weights="ssl")
    message = str(err.value)
    for part in ("encoder resnet18", "'ssl'", "smp-hub/resnet18.ssl", "steel-seg encoder-weights --encoder "
                 "resnet18 --weights ssl", "model.encoder_weights_path"):  # fmt: skip
        assert part in message
    with pytest.raises(EncoderWeightsError, match="timm/mobilenetv3_small_050.lamb_in1k"):
        build_model(ModelSpec("Unet", "tu-mobilenetv3_small_050"), encoder_weights="imagenet")


# ------------------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def exported(planted, hf_home, tmp_path_factory) -> Path:
    """`steel-seg encoder-weights` as a user runs it: a subprocess reading HF_HOME, offline."""
    out = tmp_path_factory.mktemp("export") / "resnet18-imagenet.safetensors"
    done = run_cli("encoder-weights", "--encoder", ENCODER, "--out", str(out), env=offline_env(hf_home),
                   cwd=out.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    return out


def test_export_writes_exactly_the_planted_state_and_its_preprocessing(exported, planted):
    assert_same_state(load_file(str(exported)), planted)
    info = json.loads(exported.with_suffix(".json").read_text())
    assert info["encoder"] == ENCODER and info["weights"] == "imagenet"
    assert (info["repo_id"], info["revision"]) == ("smp-hub/resnet18.imagenet", REVISION)
    assert (info["mean"], info["std"], info["input_range"]) == (list(MEAN), list(STD), [0, 1])


def test_the_exported_file_loads_as_encoder_weights_path(exported, planted):
    model = build_model(UNET, encoder_weights_path=exported)
    assert_same_state(model.encoder.state_dict(), planted)


@pytest.mark.slow
def test_online_the_first_use_downloads_through_smp_then_offline_reads_the_cache(planted, hf_home, tmp_path):
    """huggingface.co's stand-in on 127.0.0.1 serves the planted files; a fresh HF_HOME, online, downloads
    them once at smp's pinned revision; the same HF_HOME offline then exports from its cache alone."""
    home, out = tmp_path / "fresh_hf_home", tmp_path / "online.safetensors"
    with serve_hub(hf_home, ENCODER, "imagenet") as (endpoint, log):
        online = {**offline_env(home), "HF_ENDPOINT": endpoint, "NO_PROXY": "*"}
        online.pop("HF_HUB_OFFLINE")
        done = run_cli("encoder-weights", "--encoder", ENCODER, "--out", str(out), env=online, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        at = f"GET /smp-hub/resnet18.imagenet/resolve/{REVISION}/"
        downloads = [x.removeprefix(at) for x in log if x.startswith("GET /smp-hub")]
        assert downloads == ["config.json", "model.safetensors"]
        assert_same_state(load_file(str(out)), planted)
        served = len(log)
        offline = {**offline_env(home), "HF_ENDPOINT": endpoint}
        done = run_cli("encoder-weights", "--encoder", ENCODER, "--out", str(out), env=offline, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(log) == served
    assert_same_state(load_file(str(out)), planted)


# ------------------------------------------------------------------------------------------ normalisation
def model_config(**model) -> ModelConfig:
    return ModelConfig.from_dict({"arch": "Unet", "encoder": ENCODER, **model})


def test_auto_normalisation_follows_the_encoder(planted, exported):
    assert model_config(encoder_weights="imagenet").spec.mean == MEAN
    assert model_config(encoder_weights="imagenet", mean="auto", std="auto").spec.std == STD
    grey = model_config(encoder_weights="imagenet", in_channels=1).spec
    assert grey.mean == pytest.approx((sum(MEAN) / 3,)) and grey.std == pytest.approx((sum(STD) / 3,))
    assert model_config().spec.mean == (GREY_MEAN,) * 3 and model_config().spec.std == (GREY_STD,) * 3
    explicit = model_config(encoder_weights="imagenet", mean=0.4).spec
    assert explicit.mean == (0.4, 0.4, 0.4) and explicit.std == STD
    assert model_config(mean=[0.1, 0.2, 0.3], std=[1, 2, 3]).spec.std == (1.0, 2.0, 3.0)
    assert model_config(encoder_weights_path=str(exported)).spec.mean == MEAN


def test_auto_normalisation_errors(tmp_path, exported):
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(exported.read_bytes())
    with pytest.raises(ValueError, match=r"bare\.json beside encoder_weights_path"):
        model_config(encoder_weights_path=str(bare))
    with pytest.raises(ValueError, match="not both"):
        model_config(encoder_weights="imagenet", encoder_weights_path=str(exported), mean=0.5, std=0.2)
    with pytest.raises(ValueError, match=r"resnet18-imagenet\.json: .*exported for encoder 'resnet18'"):
        ModelConfig.from_dict({"arch": "Unet", "encoder": "resnet34", "encoder_weights_path": str(exported)})
    with pytest.raises(ValueError, match="ModelSpec.mean must be one number or 3"):
        model_config(mean=[0.1, 0.2])


# ------------------------------------------------------------------------------------------ train + kernel
def train_config(data: Path, **model) -> dict:
    """One step of a small resnet18 Unet on the synthetic set, pretrained by name, normalisation auto."""
    return {
        "data": {"train_csv": str(data / "train.csv"), "images_dir": str(data / "train_images"),
                 "folds": "random 3", "crop": [128, 256], "batch_size": 2, "val_batch_size": 2,
                 "workers": 0, "batches_per_epoch": 1},
        "model": {"arch": "Unet", "encoder": ENCODER, "decoder_channels": [16, 16, 8, 8, 8],
                  "encoder_weights": "imagenet", **model},
        "optim": {"lr": LR},
        "schedule": {"epochs": 1},
        "train": {"device": "cpu", "progress": False},
    }  # fmt: skip


LR = 1e-4


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    dataset.write_dataset(out, 6, 3, layout="original", seed=4, progress=False)
    return out


def test_an_empty_cache_stops_training_with_one_clear_message(synthetic_set, tmp_path):
    config = tmp_path / "r18.yaml"
    config.write_text(yaml.safe_dump(train_config(synthetic_set)))
    env = offline_env(tmp_path / "empty_hf_home")
    done = run_cli("train", "--config", str(config), "--out", str(tmp_path / "run"), env=env, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for part in ("encoder resnet18", "'imagenet'", "smp-hub/resnet18.imagenet", REVISION,
                 "steel-seg encoder-weights --encoder resnet18 --weights imagenet",
                 "model.encoder_weights_path"):  # fmt: skip
        assert part in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_exporting_weights_not_in_the_cache_offline_is_the_same_clear_error(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    args = ["encoder-weights", "--encoder", ENCODER, "--weights", "swsl", "--out", str(out)]
    assert steel_seg_cli(args) == 2
    assert "smp-hub/resnet18.swsl" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def one_step_run(planted, synthetic_set, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("r18run")
    config = root / "r18.yaml"
    config.write_text(yaml.safe_dump(train_config(synthetic_set)))
    assert steel_seg_cli(["train", "--config", str(config), "--out", str(root / "run")]) == 0
    return root / "run"


def test_one_step_training_starts_from_the_planted_encoder(one_step_run, planted):
    raw = json.loads((one_step_run / "best" / "spec.json").read_text())
    assert (raw["mean"], raw["std"]) == (list(MEAN), list(STD))
    trained = load_file(str(one_step_run / "best" / "model.safetensors"))
    params = {name for name, _ in build_model(UNET).encoder.named_parameters()}
    for name in params:  # one AdamW step moves each parameter by about lr
        assert (trained[f"encoder.{name}"] - planted[name]).abs().max() <= 2 * LR, name
    saved = yaml.safe_load((one_step_run / "config.yaml").read_text())["model"]
    assert (saved["encoder_weights"], saved["mean"], saved["std"]) == ("imagenet", list(MEAN), list(STD))


def training_side_probs(model_dir: Path, spec: ModelSpec, paths: list[Path]) -> np.ndarray:
    """(N, 4, H, W) probabilities the way training validates: to_tensor + forward_probs, float32, CPU."""
    model, _ = factory.load(model_dir)
    grey = np.stack([read_grey(p) for p in paths])
    with torch.no_grad():
        seg, _ = forward_probs(model, spec, factory.to_tensor(grey, spec))
    return seg.numpy()


def kernel_masks(predicted: pd.DataFrame, image_id: str) -> np.ndarray:
    """(4, H, W) bool masks of one image from tidy submission rows (absent rows: empty)."""
    masks = np.zeros((4, *IMAGE_SHAPE), bool)
    for row in predicted[predicted["ImageId"] == image_id].itertuples():
        masks[row.ClassId - 1] = rle.decode(row.EncodedPixels).astype(bool)
    return masks


@pytest.mark.slow
def test_the_kernel_built_from_the_run_normalises_the_same_way(one_step_run, synthetic_set, tmp_path):
    weights = tmp_path / "weights"
    assert steel_seg_cli(["manifest", "--weights-dir", str(weights), "--model", f"r18={one_step_run}/best",
                          "--tta", "none"]) == 0  # fmt: skip
    spec = ModelSpec.from_json(weights / "r18" / "spec.json")
    sample = submission.read_sample(synthetic_set / "sample_submission.csv")
    paths = [synthetic_set / "test_images" / i for i in sample.image_ids]
    probs = training_side_probs(weights / "r18", spec, paths)
    thresholds = np.median(probs, axis=(0, 2, 3))  # about half of each class's pixels on: any shift shows
    rules = Rules(tuple(ClassRule(k + 1, float(t)) for k, t in enumerate(thresholds)))
    rules.save(weights / "thresholds.json")
    script = bundle.build(weights, tmp_path / "kernel", TEMPLATE).script
    out = tmp_path / "submission.csv"
    args = [str(script), "--data-dir", str(synthetic_set), "--weights-dir", str(weights), "--out", str(out),
            "--device", "cpu", "--batch-size", "2", "--workers", "0", "--no-progress"]  # fmt: skip
    done = run_isolated({"site": isolated_site(tmp_path / "site")}, args, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    predicted = submission.read_predictions(out)
    expected = threshold(probs, rules).astype(bool)  # read at the OOF's 1/255, as the kernel reads them
    for i, image_id in enumerate(sample.image_ids):
        assert (kernel_masks(predicted, image_id) != expected[i]).mean() < 1e-4, image_id
    grey_spec = ModelSpec(**{**spec.to_dict(), "mean": GREY_MEAN, "std": GREY_STD})
    grey_probs = training_side_probs(weights / "r18", grey_spec, paths)
    assert (threshold(grey_probs, rules).astype(bool) != expected).mean() > 0.01  # the check can fail
