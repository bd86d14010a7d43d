"""Pretrained encoders through smp's own loading (its Hugging Face cache), their preprocessing, and export.

smp keeps a table: encoder -> weights name (`imagenet`, `advprop`, `ssl`, ...) -> hub repository and pinned
revision (`smp-hub/<encoder>.<weights>`); a `tu-` encoder takes timm's weights, the pretrained tag in its name
(`tu-resnet18.a1_in1k`) or timm's default tag. Building with weights downloads once on a machine with
internet and reads the cache offline (`HF_HOME`, `HF_HUB_OFFLINE`: huggingface_hub reads them itself); a
miss offline becomes one `EncoderWeightsError` naming the encoder, the weights, the repository and the ways
out. `export` writes the encoder state dict smp loads plus a JSON of its preprocessing beside it, to carry to
an offline machine or attach to a Kaggle notebook as a dataset (`model.encoder_weights_path`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from segmentation_models_pytorch import encoders as smp_encoders

from steel_seg import fileio

TIMM_PREFIX = "tu-"
TIMM_WEIGHTS = ("imagenet",)  # a `tu-` encoder's weights are named by the tag in its name


class EncoderWeightsError(ValueError):
    """Pretrained weights that cannot be named, found or loaded; the message says what to do."""


@dataclass(frozen=True)
class HubWeights:
    """Where smp (or timm, for `tu-` encoders) loads an encoder's pretrained weights from."""

    encoder: str
    weights: str
    repo_id: str
    revision: str | None  # None: the repository's main branch

    @property
    def smp_argument(self) -> str | bool:
        """smp's `encoder_weights` argument: the name, or True for `tu-` (the tag is in the name)."""
        return True if self.encoder.startswith(TIMM_PREFIX) else self.weights


@dataclass(frozen=True)
class Preprocessing:
    """An encoder's input normalisation as its pretrained weights expect it, per RGB channel.

    `mean`/`std` are in units of `input_range` (smp's convention: [0, 1] for nearly every encoder).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_space: str = "RGB"
    input_range: tuple[float, float] = (0.0, 1.0)

    def for_channels(self, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) on the 0..1 scale for a model of `in_channels` (1: channel averages, since smp sums
        a pretrained RGB stem over its channels for a 1-channel model)."""
        scale = float(self.input_range[1])
        mean, std = [v / scale for v in self.mean], [v / scale for v in self.std]
        if in_channels == 1:
            return (sum(mean) / len(mean),), (sum(std) / len(std),)
        return tuple(mean), tuple(std)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            input_space=str(d.get("input_space", "RGB")),
            input_range=tuple(float(v) for v in d.get("input_range", (0, 1))),
        )


def hub_weights(encoder: str, weights: str) -> HubWeights:
    """Look `weights` up in smp's encoder table (timm's pretrained configs for `tu-`); no network.

    Raises:
        EncoderWeightsError: unknown encoder, or weights smp does not know for it (the message lists them).
    """
    if encoder.startswith(TIMM_PREFIX):
        return _timm_hub_weights(encoder, weights)
    if encoder not in smp_encoders.encoders:
        raise EncoderWeightsError(f"unknown encoder {encoder!r} (see smp.encoders.get_encoder_names())")
    table = smp_encoders.encoders[encoder]["pretrained_settings"]
    if weights not in table:
        raise EncoderWeightsError(
            f"encoder {encoder}: smp has no pretrained weights {weights!r}; it knows {sorted(table)}"
        )
    return HubWeights(encoder, weights, table[weights]["repo_id"], table[weights]["revision"])


def _timm_hub_weights(encoder: str, weights: str) -> HubWeights:
    name = encoder.removeprefix(TIMM_PREFIX)
    if weights not in TIMM_WEIGHTS:
        raise EncoderWeightsError(
            f"encoder {encoder}: weights must be {' or '.join(TIMM_WEIGHTS)} (timm's weights; put a "
            f"pretrained tag in the name to choose others, e.g. tu-resnet18.a1_in1k), got {weights!r}"
        )
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise EncoderWeightsError(f"encoder {encoder}: {exc}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise EncoderWeightsError(f"encoder {encoder}: timm has no pretrained weights for {name!r}")
    repo_id, _, revision = (cfg.hf_hub_id or cfg.url).partition("@")
    return HubWeights(encoder, weights, repo_id, revision or None)


def missing_message(hub: HubWeights) -> str:
    """What to do when `hub`'s weights are neither in the cache nor downloadable here."""
    at = f" at revision {hub.revision}" if hub.revision else ""
    out = f"{hub.encoder}.{hub.weights}.safetensors"
    return (
        f"encoder {hub.encoder}: pretrained weights {hub.weights!r} (hub repository {hub.repo_id}{at}) are "
        f"not in the Hugging Face cache ({hub_constants.HF_HUB_CACHE}) and the hub cannot be reached "
        f"(offline). Either run `steel-seg encoder-weights --encoder {hub.encoder} --weights {hub.weights} "
        f"--out {out}` on a machine with internet and bring the file (and the .json beside it) here, or set "
        f"model.encoder_weights_path to that file (or another encoder state dict) with "
        f"model.encoder_weights: null"
    )


@contextlib.contextmanager
def from_hub(encoder: str, weights: str | None) -> Iterator[None]:
    """Run smp/timm hub loading; a cache miss offline becomes an `EncoderWeightsError` with the ways out."""
    try:
        yield
    except LocalEntryNotFoundError as exc:
        raise EncoderWeightsError(missing_message(hub_weights(encoder, weights or ""))) from exc


def smp_argument(encoder: str, weights: str | None) -> str | bool | None:
    """smp's `encoder_weights` argument for `weights` (validated against smp's table), None for none."""
    return None if weights is None else hub_weights(encoder, weights).smp_argument


def preprocessing(encoder: str, weights: str) -> Preprocessing:
    """The encoder's preprocessing for its pretrained `weights` (smp's `get_preprocessing_params`: the hub's
    `config.json`, downloaded or cached; timm's pretrained config for `tu-`)."""
    hub_weights(encoder, weights)  # our message for an unknown name, not smp's bare one
    with from_hub(encoder, weights):
        return Preprocessing.from_dict(smp_encoders.get_preprocessing_params(encoder, weights))


def preprocessing_file(weights_path: str | Path) -> Path:
    """The JSON `export` writes beside a weights file: same name, suffix `.json`."""
    return Path(weights_path).with_suffix(".json")


def read_preprocessing(weights_path: str | Path, encoder: str) -> Preprocessing | None:
    """The preprocessing JSON beside `weights_path`, or None when there is none.

    Raises:
        ValueError: naming the JSON when it is unreadable or was exported for another encoder.
    """
    path = preprocessing_file(weights_path)
    if not path.is_file():
        return None
    return fileio.load_json(path, "encoder preprocessing file", lambda d: _for_encoder(d, encoder))


def _for_encoder(d: dict, encoder: str) -> Preprocessing:
    if d.get("encoder", encoder) != encoder:
        raise ValueError(f"exported for encoder {d['encoder']!r}, but the model's encoder is {encoder!r}")
    return Preprocessing.from_dict(d)


def export(encoder: str, weights: str, out: str | Path) -> tuple[Path, Path]:
    """Write the state dict smp loads into `encoder` for `weights` (3 input channels) to `out` (.safetensors)
    and its preprocessing with provenance to `out` with suffix `.json`; both atomically. Downloads once when
    online and not cached.

    Returns:
        (weights file, JSON file).
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must be a .safetensors file")
    hub = hub_weights(encoder, weights)
    with from_hub(encoder, weights):
        module = smp_encoders.get_encoder(encoder, weights=hub.smp_argument)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    info = {"encoder": encoder, "weights": weights, "repo_id": hub.repo_id, "revision": hub.revision,
            "file": out.name, **asdict(preprocessing(encoder, weights))}  # fmt: skip
    fileio.write_with(out, lambda p: save_file(state, str(p)))
    return out, fileio.write_json(preprocessing_file(out), info)
