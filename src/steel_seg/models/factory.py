"""The model factory: a small frozen `ModelSpec` -> an smp segmenter or an image-level classifier.

Training, the inference engine and the kernel all build models through `build_model`; a model on disk is a
directory holding `spec.json` and `model.safetensors`, written by `save` and read back by `load`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file
from segmentation_models_pytorch.base.heads import ClassificationHead
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn

from steel_seg import fileio
from steel_seg.competition import N_CLASSES
from steel_seg.models import encoders

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
CLASSIFIER = "Classifier"
GREY_MEAN, GREY_STD = 0.37, 0.17  # grey mean / std (0..1 scale) of the 27 real sample images: 0.369, 0.166


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it.

    `decoder_channels` (empty = smp's default) means per-stage channels for Unet/UnetPlusPlus (one per encoder
    stage) and `(pyramid, segmentation)` channels for FPN; other architectures take smp's default only.
    Model input channel c is `(grey / 255 - mean[c]) / std[c]` (see `to_tensor`). `mean`/`std` hold one value
    per input channel; one number (an old spec.json, a YAML scalar) is given to every channel.
    """

    arch: str
    encoder: str
    in_channels: int = 3
    classes: int = 4
    aux_head: bool = False
    mean: tuple[float, ...] = (GREY_MEAN,)
    std: tuple[float, ...] = (GREY_STD,)
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        if self.in_channels not in (1, 3):
            raise ValueError(f"ModelSpec.in_channels must be 1 or 3, got {self.in_channels}")
        object.__setattr__(self, "mean", _per_channel("mean", self.mean, self.in_channels))
        object.__setattr__(self, "std", _per_channel("std", self.std, self.in_channels))
        if min(self.std) <= 0:
            raise ValueError(f"ModelSpec.std must be positive, got {self.std}")
        if self.arch == CLASSIFIER and self.aux_head:
            raise ValueError("ModelSpec: a Classifier has no aux_head (it is the classifier)")

    @property
    def has_seg(self) -> bool:
        return self.arch != CLASSIFIER

    def check_classes(self, where: str) -> None:
        """ValueError naming `where` unless the model has one output per competition class (rules, manifests,
        OOF dirs and submissions all index classes 1..N_CLASSES)."""
        if self.classes != N_CLASSES:
            raise ValueError(
                f"{where}: the model has {self.classes} output classes; the competition has {N_CLASSES}"
            )

    @property
    def has_cls(self) -> bool:
        return self.arch == CLASSIFIER or self.aux_head

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("mean", "std", "decoder_channels"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelSpec: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelSpec:
        return fileio.load_json(path, "model spec", cls.from_dict)


def _per_channel(name: str, value: float | Sequence[float], channels: int) -> tuple[float, ...]:
    """One value per input channel: a number or a 1-sequence is broadcast; otherwise exactly `channels`."""
    values = [value] if isinstance(value, numbers.Real) else list(value)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
        raise ValueError(
            f"ModelSpec.{name} must be one number or {channels} (one per channel), got {value!r}"
        )
    return tuple(float(v) for v in values)


class ImageClassifier(nn.Module):
    """An smp encoder + global average pooling + dropout + linear: `(N, C, H, W) -> (N, classes)` logits."""

    def __init__(
        self, encoder: str, in_channels: int, classes: int, depth: int = 5, weights: str | bool | None = None
    ):
        super().__init__()
        self.encoder = get_encoder(encoder, in_channels=in_channels, depth=depth, weights=weights)
        self.head = ClassificationHead(self.encoder.out_channels[-1], classes, pooling="avg", dropout=0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)[-1])


def _smp_kwargs(spec: ModelSpec) -> dict:
    kwargs: dict = {"encoder_depth": spec.encoder_depth}
    if spec.aux_head:
        kwargs["aux_params"] = {"classes": spec.classes, "pooling": "avg", "dropout": 0.2}
    return kwargs


def _build_unet_like(spec: ModelSpec, weights: str | bool | None) -> nn.Module:
    kwargs = _smp_kwargs(spec)
    if spec.decoder_channels:
        kwargs["decoder_channels"] = spec.decoder_channels
    return smp.create_model(spec.arch, spec.encoder, weights, spec.in_channels, spec.classes, **kwargs)


def _build_fpn(spec: ModelSpec, weights: str | bool | None) -> nn.Module:
    kwargs = _smp_kwargs(spec)
    if spec.decoder_channels:
        if len(spec.decoder_channels) != 2:
            raise ValueError(f"FPN decoder_channels is (pyramid, segmentation), got {spec.decoder_channels}")
        if spec.decoder_channels[1] % 32:
            raise ValueError(f"FPN segmentation channels must be a multiple of 32: {spec.decoder_channels}")
        kwargs["decoder_pyramid_channels"], kwargs["decoder_segmentation_channels"] = spec.decoder_channels
    return smp.create_model("FPN", spec.encoder, weights, spec.in_channels, spec.classes, **kwargs)


def _build_smp_default(spec: ModelSpec, weights: str | bool | None) -> nn.Module:
    if spec.decoder_channels:
        raise ValueError(f"decoder_channels is not supported for {spec.arch}; leave it empty")
    kwargs = _smp_kwargs(spec)
    return smp.create_model(spec.arch, spec.encoder, weights, spec.in_channels, spec.classes, **kwargs)


def _build_classifier(spec: ModelSpec, weights: str | bool | None) -> nn.Module:
    return ImageClassifier(spec.encoder, spec.in_channels, spec.classes, spec.encoder_depth, weights)


ARCHITECTURES: dict[str, Callable[[ModelSpec, str | bool | None], nn.Module]] = {
    "Unet": _build_unet_like,
    "UnetPlusPlus": _build_unet_like,
    "FPN": _build_fpn,
    "PSPNet": _build_smp_default,
    "Linknet": _build_smp_default,
    "MAnet": _build_smp_default,
    "DeepLabV3Plus": _build_smp_default,
    CLASSIFIER: _build_classifier,
}


def build_model(
    spec: ModelSpec, encoder_weights_path: str | Path | None = None, encoder_weights: str | None = None
) -> nn.Module:
    """Build the model of `spec` with random weights, or with a pretrained encoder: `encoder_weights` (a name
    smp knows for the encoder, loaded by smp from its Hugging Face cache, downloaded once when online) or
    `encoder_weights_path` (a local state-dict file).

    Raises:
        KeyError: unknown architecture (the message lists the valid names).
        ValueError: encoder weights that do not fit the encoder (naming the file and the mismatch), or
            `encoders.EncoderWeightsError`: unknown weights, or not cached while offline (with the ways out).
    """
    if spec.arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {spec.arch!r}; valid: {sorted(ARCHITECTURES)}")
    if encoder_weights is not None and encoder_weights_path is not None:
        raise ValueError(
            "give encoder_weights (from the hub) or encoder_weights_path (a local file), not both"
        )
    with encoders.from_hub(spec.encoder, encoder_weights):
        model = ARCHITECTURES[spec.arch](spec, encoders.smp_argument(spec.encoder, encoder_weights))
    if encoder_weights_path is not None:
        load_encoder_weights(model, encoder_weights_path)
    return model


def set_seg_prior(model: nn.Module, spec: ModelSpec, prior: float) -> None:
    """Start a segmenter predicting probability `prior` everywhere (the RetinaNet bias trick).

    Most pixels and ~85% of (image, class) pairs are empty, so a model that starts near 0 instead of 0.5 skips
    the early phase of false positives that the competition metric punishes hardest.
    """
    if not spec.has_seg or not 0.0 < prior < 1.0:
        raise ValueError(f"set_seg_prior: needs a segmenter and 0 < prior < 1, got {spec.arch}, {prior}")
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(math.log(prior / (1.0 - prior)))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from `.safetensors` or a torch file (`weights_only=True`: no arbitrary pickle)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read weights: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load pretrained encoder weights (e.g. ImageNet files kept offline) into `model.encoder`.

    Keys may carry an `encoder.` prefix. A 3-channel stem loads into a 1-channel encoder by summing over the
    input channels (what smp does for pretrained grey models). Anything else that does not fit raises.
    """
    state = read_state_dict(path)
    if state and all(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    state = _drop_classifier_keys(model.encoder, state)
    state = _fit_stem_channels(model.encoder, state)
    check_state_dict(model.encoder, state, f"{path} (encoder weights)")
    model.encoder.load_state_dict(state)


def _drop_classifier_keys(encoder: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """ImageNet files carry the classifier (`fc.`, `_fc.`, `classifier.`) that smp encoders delete."""
    own = encoder.state_dict()
    heads = ("fc.", "_fc.", "classifier.", "last_linear.")
    return {k: v for k, v in state.items() if k in own or not k.startswith(heads)}


def _fit_stem_channels(encoder: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    own = encoder.state_dict()
    fitted = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if target is None or value.ndim != 4 or (target.shape[1], value.shape[1]) != (1, 3):
            continue
        if value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            fitted[key] = value.sum(dim=1, keepdim=True)
    return fitted


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise the whole model from a model dir (its `model.safetensors`) or a weights file, strictly."""
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    state = read_state_dict(file)
    check_state_dict(model, state, str(file))
    model.load_state_dict(state)


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], where: str, show: int = 5) -> None:
    """Raise a ValueError naming `where` when `state` has missing/unexpected keys or shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": shapes}
    problems = [f"{len(items)} {label} (e.g. {items[:show]})" for label, items in found.items() if items]
    if problems:
        raise ValueError(f"{where}: weights do not match the model: " + "; ".join(problems))


def save(model: nn.Module, spec: ModelSpec, directory: str | Path) -> Path:
    """Write `directory/model.safetensors` then `directory/spec.json`, each atomically (temp + os.replace)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    fileio.write_with(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)), size=size)
    text = json.dumps(spec.to_dict(), indent=2) + "\n"
    fileio.write_with(directory / SPEC_FILE, lambda p: p.write_text(text))
    return directory


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of `directory/spec.json`, load its weights, and return it in eval mode on `device`.

    Raises:
        ValueError: naming the directory when a file is missing or the weights and the spec disagree.
    """
    directory = Path(directory)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ValueError(f"{directory}: not a model dir ({name} missing)")
    spec = ModelSpec.from_json(directory / SPEC_FILE)
    model = build_model(spec)
    state = read_state_dict(directory / WEIGHTS_FILE)
    check_state_dict(model, state, f"{directory} (spec.json vs {WEIGHTS_FILE})")
    model.load_state_dict(state)
    return model.to(device).eval(), spec


def forward_logits(model: nn.Module, spec: ModelSpec, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Raw outputs for `x (N, C, H, W)`: (seg (N, classes, H, W) or None, cls (N, classes) or None) logits."""
    if spec.arch == CLASSIFIER:
        return None, model(x)
    if spec.aux_head:
        seg, cls = model(x)
        return seg, cls
    return model(x), None


def to_tensor(grey: np.ndarray | Tensor, spec: ModelSpec) -> Tensor:
    """The model input of a grey batch: channel c is `(grey / 255 - spec.mean[c]) / spec.std[c]`.

    The grey image is replicated to `spec.in_channels` and normalised per channel in one fused
    multiply-add (`grey * scale + shift`, scale and shift cached per spec and device).

    Args:
        grey: (N, H, W) uint8, numpy or a torch tensor on any device (normalised there).

    Returns:
        (N, spec.in_channels, H, W) float32, contiguous, on the input's device.
    """
    t = torch.from_numpy(np.ascontiguousarray(grey)) if isinstance(grey, np.ndarray) else grey
    if t.ndim != 3:
        raise ValueError(f"to_tensor expects (N, H, W) grey, got shape {tuple(t.shape)}")
    scale, shift = _scale_shift(spec.mean, spec.std, t.device)
    return torch.addcmul(shift, t.unsqueeze(1).float(), scale)


@functools.lru_cache(maxsize=64)
def _scale_shift(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """`(1, C, 1, 1)` float32 factors with `grey * scale + shift == (grey / 255 - mean) / std`."""
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    scale, shift = 1.0 / (255.0 * s), -m / s
    return (scale.float().view(1, -1, 1, 1).to(device), shift.float().view(1, -1, 1, 1).to(device))
