"""The loaded ensemble: models, their TTA views and weights, and one batched forward pass on the device.

`Ensemble.forward` takes a `(B, H, W) uint8` grey batch already on the device, normalises it per model
(`factory.to_tensor`), stacks the model's TTA views into ONE batch, un-flips them on the device and averages
views and models (ensemble weights) on the device. Image-level probabilities come from the classifiers
(role "cls"), else from the segmenters' aux heads, else None (the caller then uses the max pixel probability).
With `check_finite`, each model's logits are checked for NaN/inf (an fp16 overflow of a model trained in
bf16): such a model is left out of that batch's average and named in the result, for the caller to drop it.
`replicate(device)` gives the same ensemble on another device (one replica per GPU).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from steel_seg.engine.budget import Plan
from steel_seg.models.factory import ModelSpec, forward_logits, to_tensor
from steel_seg.models.manifest import DEFAULT_BUDGET_S, TTA_VIEWS, Manifest, check_model_dir, load_model
from steel_seg.models.precision import autocast

_FLIP_DIMS = {"none": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}


@dataclass
class Member:
    """One loaded model of the ensemble."""

    name: str
    role: str
    model: nn.Module
    spec: ModelSpec
    weight: float = 1.0
    views: tuple[str, ...] = ("none",)


@dataclass(frozen=True, kw_only=True)
class Output:
    """One batch through the ensemble, on its device.

    `seg (B, 4, H, W) float32` (None when every segmenter was left out), `cls (B, 4) float32` (None without an
    image-level output), each model's seconds (`timed` forwards only) and the models left out for NaN/inf.
    """

    seg: Tensor | None
    cls: Tensor | None
    model_s: dict[str, float] = field(default_factory=dict)
    nonfinite: tuple[str, ...] = ()


def flip(x: Tensor, view: str) -> Tensor:
    """`x (..., H, W)` seen through a TTA view; each view is its own inverse."""
    dims = _FLIP_DIMS[view]
    return x.flip(dims) if dims else x


class Ensemble:
    """Models on one device with their weights and views, plus the manifest's `drop_order` and `budget_s`.

    Immutable during a run: the time budget works on a `Plan` (a copy of the views).
    """

    def __init__(
        self,
        members: Sequence[Member],
        device: str | torch.device = "cpu",
        *,
        drop_order: Sequence[str] = (),
        budget_s: float = DEFAULT_BUDGET_S,
    ):
        if not any(m.role == "seg" for m in members):
            raise ValueError("an ensemble needs at least one segmenter (role 'seg')")
        for m in members:
            if m.role not in ("seg", "cls") or (m.role == "seg") != m.spec.has_seg:
                raise ValueError(
                    f"model {m.name!r}: role {m.role!r} does not fit its spec (arch {m.spec.arch})"
                )
            m.spec.check_classes(f"model {m.name!r}")
            if not m.views or any(v not in TTA_VIEWS for v in m.views):
                raise ValueError(
                    f"model {m.name!r}: views {m.views} must be a non-empty subset of {TTA_VIEWS}"
                )
        self.device = _indexed(torch.device(device))
        self.members = {m.name: m for m in members}
        self.drop_order, self.budget_s = tuple(drop_order), budget_s
        for m in members:
            # channels_last: faster convolutions on CUDA and on the CPU alike (1.8x for a small Unet here).
            m.model.to(self.device, memory_format=torch.channels_last).eval()

    @classmethod
    def load(
        cls, weights_dir: str | Path, manifest: Manifest, device: str | torch.device = "cpu"
    ) -> Ensemble:
        """Check every model's files and sha256 first, then load each (spec vs weights checked by `models`).

        Raises:
            ManifestError: naming the file and what is wrong, before any model is built.
        """
        dirs = [check_model_dir(weights_dir, entry) for entry in manifest.models]
        members = []
        for entry, model_dir in zip(manifest.models, dirs, strict=True):
            model, spec = load_model(model_dir, entry.name, entry.role)
            members.append(Member(entry.name, entry.role, model, spec, entry.weight, entry.tta))
        return cls(members, device, drop_order=manifest.drop_order, budget_s=manifest.budget_s)

    def replicate(self, device: str | torch.device) -> Ensemble:
        """This ensemble on `device`: itself when it is already there, else a copy of every model."""
        device = _indexed(torch.device(device))
        if device == self.device:
            return self
        members = [copy.copy(m) for m in self.members.values()]
        for m in members:
            m.model = copy.deepcopy(m.model)
        return Ensemble(members, device, drop_order=self.drop_order, budget_s=self.budget_s)

    def plan(self, views: Sequence[str] | None = None) -> Plan:
        """Every model with its manifest views, or with `views` for all (e.g. `steel-seg oof --tta`)."""
        return {n: tuple(views) if views else m.views for n, m in self.members.items()}

    def roles(self) -> dict[str, str]:
        return {n: m.role for n, m in self.members.items()}

    def has_cls(self, plan: Plan | None = None) -> bool:
        """Whether `forward` under `plan` (default: all models) returns image-level probabilities."""
        names = self.members if plan is None else plan
        return any(self.members[n].spec.has_cls for n in names)

    def forward(
        self,
        grey: Tensor,
        plan: Plan,
        amp: torch.dtype | None = None,
        *,
        timed: bool = False,
        check_finite: bool = False,
    ) -> Output:
        """Ensemble probabilities of a batch.

        Args:
            grey: `(B, H, W) uint8` on the device.
            plan: active model name -> views.
            amp: autocast dtype on CUDA (float16/bfloat16), None for float32.
            timed: record each model's seconds for this batch (synchronised on CUDA).
            check_finite: leave out (and name) the models whose logits hold NaN/inf.
        """
        seg_sum, seg_w, cls_sum, cls_w, aux_sum, aux_w = None, 0.0, None, 0.0, None, 0.0
        model_s: dict[str, float] = {}
        nonfinite: list[str] = []
        for name, views in plan.items():
            member = self.members[name]
            start = time.perf_counter()
            seg, cls, finite = self._member_probs(member, grey, views, amp, check_finite)
            if timed:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                model_s[name] = time.perf_counter() - start
            if not finite:
                nonfinite.append(name)
                continue
            w = member.weight
            if seg is not None:
                seg_sum, seg_w = _accumulate(seg_sum, seg, w), seg_w + w
            if cls is not None and member.role == "cls":
                cls_sum, cls_w = _accumulate(cls_sum, cls, w), cls_w + w
            elif cls is not None:
                aux_sum, aux_w = _accumulate(aux_sum, cls, w), aux_w + w
        image = cls_sum / cls_w if cls_sum is not None else (aux_sum / aux_w if aux_sum is not None else None)
        seg = None if seg_sum is None else (seg_sum if seg_w == 1.0 else seg_sum / seg_w)
        return Output(seg=seg, cls=image, model_s=model_s, nonfinite=tuple(nonfinite))

    def _member_probs(
        self, member: Member, grey: Tensor, views: Sequence[str], amp: torch.dtype | None, check_finite: bool
    ) -> tuple[Tensor | None, Tensor | None, bool]:
        """One model, its views stacked into one batch: seg `(B, 4, H, W)`, cls `(B, 4)` float32 (or None),
        and whether its logits were finite (always True without `check_finite`; False: no outputs)."""
        x = to_tensor(grey, member.spec)
        stacked = flip(x, views[0]) if len(views) == 1 else torch.cat([flip(x, v) for v in views])
        stacked = stacked.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, amp):
            seg, cls = forward_logits(member.model, member.spec, stacked)
        if check_finite and not _finite(seg, cls):
            return None, None, False
        seg, cls = (None if seg is None else seg.sigmoid()), (None if cls is None else cls.sigmoid())
        n_views, batch = len(views), grey.shape[0]
        if seg is not None:
            seg = _unflip_mean(seg.float().unflatten(0, (n_views, batch)), views)
        if cls is not None:
            cls = cls.float().unflatten(0, (n_views, batch)).mean(0)
        return seg, cls, True


def _finite(*outputs: Tensor | None) -> bool:
    """Whether every output is free of NaN/inf (one device reduction and one sync per tensor)."""
    return all(bool(torch.isfinite(t).all()) for t in outputs if t is not None)


def _indexed(device: torch.device) -> torch.device:
    """`cuda` -> `cuda:<current>`, so that two spellings of one GPU compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _unflip_mean(seg: Tensor, views: Sequence[str]) -> Tensor:
    """`(V, B, 4, H, W)` view outputs -> `(B, 4, H, W)`: un-flipped, averaged in place (no stacked copy)."""
    total = flip(seg[0], views[0])  # seg is this call's own output: summing into its first view is safe
    for i in range(1, len(views)):
        total.add_(flip(seg[i], views[i]))
    return total.div_(len(views)) if len(views) > 1 else total


def _accumulate(total: Tensor | None, value: Tensor, weight: float) -> Tensor:
    """Weighted running sum; the first value is taken as it is when its weight is 1 (it is ours to modify)."""
    if total is None:
        return value if weight == 1.0 else value * weight
    return total.add_(value, alpha=weight)


def views_text(plan: Mapping[str, Sequence[str]]) -> str:
    """`unet: none+h, cls: none` — a plan in one line, for logs and summaries."""
    return ", ".join(f"{n}: {'+'.join(v)}" for n, v in plan.items())
