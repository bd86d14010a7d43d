"""steel_seg.models.factory: spec round trips, builders, forward_logits, save/load, local weights"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import forward_probs

from steel_seg.models import factory
from steel_seg.models.factory import ModelSpec, build_model

TINY = "tu-mobilenetv3_small_050"
SPECS = [
    ModelSpec("Unet", TINY, in_channels=1, encoder_depth=4, decoder_channels=(32, 16, 16, 8)),
    ModelSpec("FPN", TINY, in_channels=3, aux_head=True, decoder_channels=(32, 32)),
    ModelSpec("Classifier", TINY, in_channels=1),
]


def test_spec_round_trips_through_dict_and_json(tmp_path):
    spec = SPECS[0]
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert ModelSpec.from_json(path) == spec


def test_spec_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        ModelSpec.from_dict({"arch": "Unet", "encoder": "resnet18", "colour": 1})
    with pytest.raises(ValueError, match="in_channels"):
        ModelSpec("Unet", "resnet18", in_channels=2)
    with pytest.raises(ValueError, match="aux_head"):
        ModelSpec("Classifier", "resnet18", aux_head=True)
    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=str(bad)):
        ModelSpec.from_json(bad)


def test_mean_and_std_are_per_channel():
    spec = ModelSpec("Unet", TINY, in_channels=3, mean=[0.2, 0.5, 0.8], std=0.25)
    assert spec.mean == (0.2, 0.5, 0.8) and spec.std == (0.25, 0.25, 0.25)
    assert spec.to_dict()["mean"] == [0.2, 0.5, 0.8] and ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec("Unet", TINY, in_channels=1).mean == (factory.GREY_MEAN,)
    with pytest.raises(ValueError, match=r"mean must be one number or 1 \(one per channel\)"):
        ModelSpec("Unet", TINY, in_channels=1, mean=(0.2, 0.5, 0.8))
    with pytest.raises(ValueError, match="std must be positive"):
        ModelSpec("Unet", TINY, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="mean must be one number or 3"):
        ModelSpec("Unet", TINY, mean="auto")


def test_to_tensor_replicates_grey_and_normalises_each_channel():
    spec = ModelSpec("Unet", TINY, in_channels=3, mean=(0.2, 0.5, 0.8), std=(0.1, 0.2, 0.4))
    grey = torch.randint(0, 256, (2, 5, 7), dtype=torch.uint8)
    x = factory.to_tensor(grey, spec)
    expected = torch.stack([(grey / 255 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)], dim=1)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(factory.to_tensor(grey.numpy(), spec), expected)


# spec.json exactly as `factory.save` wrote it before mean / std became per-channel (one number each).
OLD_SPEC_JSON = """{
  "arch": "Unet",
  "encoder": "tu-mobilenetv3_small_050",
  "in_channels": 3,
  "classes": 4,
  "aux_head": false,
  "mean": 0.37,
  "std": 0.17,
  "encoder_depth": 3,
  "decoder_channels": [
    8,
    8,
    8
  ]
}
"""


def test_a_spec_json_from_before_per_channel_values_still_loads(tmp_path):
    old = ModelSpec("Unet", TINY, encoder_depth=3, decoder_channels=(8, 8, 8))
    factory.save(build_model(old), old, tmp_path / "m")
    (tmp_path / "m" / "spec.json").write_text(OLD_SPEC_JSON)
    model, spec = factory.load(tmp_path / "m")
    assert spec.mean == (0.37, 0.37, 0.37) and spec.std == (0.17, 0.17, 0.17)
    grey = torch.tensor([[[0, 94, 255]]], dtype=torch.uint8)
    x = factory.to_tensor(grey, spec)
    for c in range(3):
        torch.testing.assert_close(x[0, c, 0], (grey[0, 0].float() / 255 - 0.37) / 0.17)


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(KeyError, match="FPN"):
        build_model(ModelSpec("NoSuchNet", TINY))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.arch}-aux{s.aux_head}")
def test_forward_probs_shapes_and_range(spec):
    model = build_model(spec).eval()
    x = torch.randn(2, spec.in_channels, 64, 128)
    with torch.no_grad():
        seg, cls = forward_probs(model, spec, x)
    assert (seg is None) == (not spec.has_seg) and (cls is None) == (not spec.has_cls)
    if seg is not None:
        assert seg.shape == (2, 4, 64, 128) and seg.min() >= 0 and seg.max() <= 1
    if cls is not None:
        assert cls.shape == (2, 4) and cls.min() >= 0 and cls.max() <= 1


@pytest.mark.parametrize("spec", SPECS[:2], ids=["Unet", "FPN-aux"])
def test_save_load_round_trip_gives_the_same_outputs(tmp_path, spec):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    factory.save(model, spec, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "spec.json"]
    loaded, loaded_spec = factory.load(tmp_path / "m")
    assert loaded_spec == spec and not loaded.training
    x = torch.randn(1, spec.in_channels, 64, 64)
    with torch.no_grad():
        for a, b in zip(forward_probs(model, spec, x), forward_probs(loaded, spec, x), strict=True):
            torch.testing.assert_close(a, b)


def test_load_fails_fast_when_spec_and_weights_disagree(tmp_path):
    spec = SPECS[0]
    factory.save(build_model(spec), spec, tmp_path / "m")
    other = ModelSpec(**{**spec.to_dict(), "decoder_channels": (16, 16, 8, 8), "aux_head": True})
    (tmp_path / "m" / "spec.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(ValueError) as err:
        factory.load(tmp_path / "m")
    message = str(err.value)
    assert str(tmp_path / "m") in message
    assert "missing keys" in message and "classification_head" in message
    assert "shape mismatches" in message and "decoder" in message


def test_load_names_the_dir_when_a_file_is_missing(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match=r"m: not a model dir \(spec.json missing\)"):
        factory.load(tmp_path / "m")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_encoder_weights_load_from_a_local_file(tmp_path, suffix):
    spec = ModelSpec("Unet", "resnet18", in_channels=3, encoder_depth=3, decoder_channels=(16, 8, 8))
    torch.manual_seed(1)
    source = build_model(spec).encoder.state_dict()
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".pth":
        torch.save({f"encoder.{k}": v for k, v in source.items()}, path)
    else:
        save_file(dict(source), str(path))
    torch.manual_seed(2)
    model = build_model(spec, encoder_weights_path=path)
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, source[key])


def test_imagenet_style_file_loads_into_a_grey_encoder(tmp_path):
    """A 3-channel file with the torchvision `fc.` head loads into in_channels=1 (stem summed over RGB)."""
    rgb = ModelSpec("Unet", "resnet18", in_channels=3, encoder_depth=3, decoder_channels=(16, 8, 8))
    source = build_model(rgb).encoder.state_dict()
    file_state = {**source, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    save_file(file_state, str(tmp_path / "imagenet.safetensors"))
    grey = ModelSpec(**{**rgb.to_dict(), "in_channels": 1, "mean": 0.37, "std": 0.17})
    model = build_model(grey, encoder_weights_path=tmp_path / "imagenet.safetensors")
    torch.testing.assert_close(model.encoder.conv1.weight, source["conv1.weight"].sum(dim=1, keepdim=True))


def test_encoder_weights_of_another_encoder_fail_with_the_file_name(tmp_path):
    other = build_model(ModelSpec("Unet", TINY, encoder_depth=4, decoder_channels=(8, 8, 8, 8))).encoder
    path = tmp_path / "wrong.safetensors"
    save_file(dict(other.state_dict()), str(path))
    spec = ModelSpec("Unet", "resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
    with pytest.raises(ValueError, match=r"wrong\.safetensors.*weights do not match.*missing keys"):
        build_model(spec, encoder_weights_path=path)


def test_weights_files_are_read_without_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(ValueError, match="evil.pth: cannot read weights"):
        factory.read_state_dict(path)
    with pytest.raises(ValueError, match="not found"):
        factory.read_state_dict(tmp_path / "absent.pth")


def test_init_weights_from_a_model_dir(tmp_path):
    spec = SPECS[1]
    torch.manual_seed(3)
    trained = build_model(spec)
    factory.save(trained, spec, tmp_path / "m")
    torch.manual_seed(4)
    fresh = build_model(spec)
    factory.load_init_weights(fresh, tmp_path / "m")
    for (k, a), b in zip(trained.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_seg_prior_starts_the_segmenter_near_empty():
    spec = SPECS[0]
    model = build_model(spec).eval()
    factory.set_seg_prior(model, spec, 0.01)
    with torch.no_grad():
        seg, _ = forward_probs(model, spec, torch.zeros(1, 1, 64, 64))
    torch.testing.assert_close(seg.mean(), torch.tensor(0.01), atol=5e-3, rtol=0)
    with pytest.raises(ValueError, match="segmenter"):
        factory.set_seg_prior(build_model(SPECS[2]), SPECS[2], 0.01)
