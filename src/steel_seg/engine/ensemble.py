"""The loaded ensemble: models, their TTA views and weights, and one batched forward pass on the device.

`Ensemble.forward` takes a `(B, H, W) uint8` grey batch already on the device, normalises it per model
(`factory.to_tensor`), stacks the model's TTA views into ONE batch, un-flips them on the device and averages
views and models (ensemble weights) on the device, without waiting for the device between models: per-model
seconds (`timed`) come from CUDA events read once the batch is done (perf_counter on the CPU, whose ops are
synchronous). Image-level probabilities come from the classifiers (role "cls"), else from the segmenters'
aux heads, else None (the caller then uses the max pixel probability). With `check_finite`, each model's
logits are checked for NaN/inf on the device and the flags read once per batch: a model whose autocast
(fp16) output overflowed is run again on that batch in float32, and only a model still non-finite there is
left out of the average and named in the result, for the caller to drop it. `replicate(device)` gives the
same ensemble on another device (one replica per GPU, made once).
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


class ModelTimer:
    """A model's seconds in one batch, without waiting for the device: CUDA events on a GPU (read once the
    batch is done anyway), `time.perf_counter` on the CPU (its ops are synchronous). Spans add up (a model
    run again in float32)."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._spans: list[list] = []

    def start(self) -> ModelTimer:
        self._spans.append([self._mark(), None])
        return self

    def stop(self) -> None:
        self._spans[-1][1] = self._mark()

    def _mark(self) -> torch.cuda.Event | float:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> float:
        """The spans' seconds; on CUDA this waits for the last end event (the batch's sync passed it)."""
        if not self._cuda:
            return sum(end - start for start, end in self._spans)
        self._spans[-1][1].synchronize()
        return sum(start.elapsed_time(end) for start, end in self._spans) / 1000.0


@dataclass(frozen=True, kw_only=True)
class Output:
    """One batch through the ensemble, on its device.

    `seg (B, 4, H, W) float32` (None when every segmenter was left out), `cls (B, 4) float32` (None without an
    image-level output), each model's timer (`timed` forwards only), the models left out for NaN/inf and
    those whose batch was redone in float32 (finite there, so kept).
    """

    seg: Tensor | None
    cls: Tensor | None
    timers: Mapping[str, ModelTimer] = field(default_factory=dict)
    nonfinite: tuple[str, ...] = ()
    fp32_retries: tuple[str, ...] = ()

    def model_seconds(self) -> dict[str, float]:
        """Each timed model's seconds in this batch (on CUDA: call once the batch's results are in hand)."""
        return {name: timer.seconds() for name, timer in self.timers.items()}


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
        self._replicas: dict[torch.device, Ensemble] = {}
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
        """This ensemble on `device`: itself when it is already there, else a copy of every model (made on
        the first call for that device, the same one after)."""
        device = _indexed(torch.device(device))
        if device == self.device:
            return self
        if device not in self._replicas:
            members = [copy.copy(m) for m in self.members.values()]
            for m in members:
                m.model = copy.deepcopy(m.model)
            self._replicas[device] = Ensemble(
                members, device, drop_order=self.drop_order, budget_s=self.budget_s
            )
        return self._replicas[device]

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
        """Ensemble probabilities of a batch, queued on the device without a wait between models.

        Args:
            grey: `(B, H, W) uint8` on the device.
            plan: active model name -> views.
            amp: autocast dtype on CUDA (float16/bfloat16), None for float32.
            timed: time each model (`Output.model_seconds`; CUDA events, no synchronisation here).
            check_finite: leave out (and name) the models whose logits hold NaN/inf, after one float32 retry
                of that batch when `amp` was on; the flags are read once per batch.
        """
        sums, timers, flags = _Sums(), {}, {}
        for name, views in plan.items():
            timer = ModelTimer(self.device).start() if timed else None
            seg, cls, flags[name] = self._member_probs(self.members[name], grey, views, amp, check_finite)
            sums.add(self.members[name], seg, cls, flags[name])
            if timer is not None:
                timer.stop()
                timers[name] = timer
        suspects = _nonfinite(flags)
        retried = [
            n for n in suspects if amp is not None and self._retry_fp32(n, grey, plan[n], sums, timers)
        ]
        nonfinite = tuple(n for n in suspects if n not in retried)
        seg, cls = sums.result([self.members[n] for n in plan if n not in nonfinite])
        return Output(seg=seg, cls=cls, timers=timers, nonfinite=nonfinite, fp32_retries=tuple(retried))

    def _retry_fp32(
        self, name: str, grey: Tensor, views: Sequence[str], sums: _Sums, timers: dict[str, ModelTimer]
    ) -> bool:
        """Run model `name` on the batch again in float32; add its outputs when finite. Returns whether."""
        member, timer = self.members[name], timers.get(name)
        if timer is not None:
            timer.start()
        seg, cls, ok = self._member_probs(member, grey, views, None, True)
        finite = bool(ok)
        if finite:
            sums.add(member, seg, cls, None)
        if timer is not None:
            timer.stop()
        return finite

    def _member_probs(
        self, member: Member, grey: Tensor, views: Sequence[str], amp: torch.dtype | None, check_finite: bool
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """One model, its views stacked into one batch: seg `(B, 4, H, W)`, cls `(B, 4)` float32 (or None),
        and with `check_finite` a 0-dim bool tensor on the device: whether its logits were finite."""
        x = to_tensor(grey, member.spec)
        stacked = flip(x, views[0]) if len(views) == 1 else torch.cat([flip(x, v) for v in views])
        stacked = stacked.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, amp):
            seg, cls = forward_logits(member.model, member.spec, stacked)
        ok = _finite(seg, cls) if check_finite else None
        seg, cls = (None if seg is None else seg.sigmoid()), (None if cls is None else cls.sigmoid())
        n_views, batch = len(views), grey.shape[0]
        if seg is not None:
            seg = _unflip_mean(seg.float().unflatten(0, (n_views, batch)), views)
        if cls is not None:
            cls = cls.float().unflatten(0, (n_views, batch)).mean(0)
        return seg, cls, ok


class _Sums:
    """Weighted running sums of the members' probabilities on the device. A member with a finite-flag tensor
    adds its values times the flag (zeros when False), so nothing waits for the flag; the weights to divide
    by are those of the members found finite."""

    def __init__(self) -> None:
        self.seg: Tensor | None = None
        self.cls: Tensor | None = None
        self.aux: Tensor | None = None

    def add(self, member: Member, seg: Tensor | None, cls: Tensor | None, ok: Tensor | None) -> None:
        if seg is not None:
            self.seg = _accumulate(self.seg, seg, member.weight, ok)
        if cls is not None and member.role == "cls":
            self.cls = _accumulate(self.cls, cls, member.weight, ok)
        elif cls is not None:
            self.aux = _accumulate(self.aux, cls, member.weight, ok)

    def result(self, finite: Sequence[Member]) -> tuple[Tensor | None, Tensor | None]:
        """(seg, image-level) averages over the `finite` members: classifiers before aux heads."""
        seg_w = sum(m.weight for m in finite if m.spec.has_seg)
        cls_w = sum(m.weight for m in finite if m.role == "cls" and m.spec.has_cls)
        aux_w = sum(m.weight for m in finite if m.role == "seg" and m.spec.has_cls)
        seg = None if not seg_w else (self.seg if seg_w == 1.0 else self.seg / seg_w)
        if cls_w:
            return seg, self.cls / cls_w
        return seg, (self.aux / aux_w if aux_w else None)


def _nonfinite(flags: Mapping[str, Tensor | None]) -> list[str]:
    """The names whose flag is False: ONE read of every flag from the device."""
    names = [n for n, flag in flags.items() if flag is not None]
    if not names:
        return []
    values = torch.stack([flags[n] for n in names]).tolist()
    return [n for n, ok in zip(names, values, strict=True) if not ok]


def _finite(*outputs: Tensor | None) -> Tensor:
    """Whether every output is free of NaN/inf: a 0-dim bool tensor on their device (no wait)."""
    flags = [torch.isfinite(t).all() for t in outputs if t is not None]
    return torch.stack(flags).all()


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


def _accumulate(total: Tensor | None, value: Tensor, weight: float, ok: Tensor | None) -> Tensor:
    """Weighted running sum (`value` is this call's own output, modified in place). With a finite-flag `ok`,
    NaN/inf become 0 and the value counts only when `ok` is True."""
    if ok is not None:
        value = value.nan_to_num_(0.0, 0.0, 0.0).mul_(ok.to(value.dtype) * weight)
        weight = 1.0
    if total is None:
        return value if weight == 1.0 else value * weight
    return total.add_(value, alpha=weight)


def views_text(plan: Mapping[str, Sequence[str]]) -> str:
    """`unet: none+h, cls: none` — a plan in one line, for logs and summaries."""
    return ", ".join(f"{n}: {'+'.join(v)}" for n, v in plan.items())
