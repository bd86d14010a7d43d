"""The ensemble's forward pass: one read from the device per batch, per-model timers, the NaN policy (a batch
that overflows under autocast is redone in float32 before a model is dropped), replicas made once."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.models.factory import ModelSpec

SPEC = ModelSpec(arch="Unet", encoder="tu-mobilenetv3_small_050", in_channels=1, encoder_depth=3)
GREY = torch.randint(0, 256, (2, 32, 64), dtype=torch.uint8)


class Head(nn.Module):
    """A real 1x1 convolution whose logits turn NaN in the situations asked for: always, or only when it runs
    under autocast (an fp16 overflow of a model trained in bf16, in effect), and that sleeps `seconds`."""

    def __init__(self, nan: str = "never", seconds: float = 0.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, kernel_size=1)
        self.nan, self.seconds, self.calls = nan, seconds, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        reduced = out.dtype != torch.float32  # the convolution ran under autocast
        self.calls.append("autocast" if reduced else "float32")
        time.sleep(self.seconds)
        if self.nan == "always" or (self.nan == "autocast" and reduced):
            return out * math.nan
        return out


def member(name: str, head: Head, weight: float = 1.0) -> Member:
    return Member(name, "seg", head, SPEC, weight=weight)


def _under(head: Head, amp: torch.dtype | None) -> torch.Tensor:
    """The reference: the head alone in an ensemble, under `amp`."""
    with torch.inference_mode():
        return Ensemble([member("h", head)]).forward(GREY, {"h": ("none",)}, amp).seg


def test_a_batch_that_overflows_under_autocast_is_redone_in_float32_and_kept():
    """bf16 autocast on the CPU stands in for a T4's fp16: the old engine dropped such a model at once."""
    good, flaky = Head(seed=0), Head("autocast", seed=1)
    ensemble = Ensemble([member("good", good), member("flaky", flaky, weight=3.0)])
    with torch.inference_mode():
        out = ensemble.forward(GREY, ensemble.plan(), torch.bfloat16, timed=True, check_finite=True)
    assert out.nonfinite == () and out.fp32_retries == ("flaky",)
    assert flaky.calls == ["autocast", "float32"]
    assert set(out.model_seconds()) == {"good", "flaky"}
    expected = (_under(good, torch.bfloat16) + 3 * _under(flaky, None)) / 4
    torch.testing.assert_close(out.seg, expected)


def test_a_model_non_finite_in_float32_too_is_left_out_and_named():
    good, broken = Head(seed=0), Head("always", seed=1)
    ensemble = Ensemble([member("broken", broken, weight=5.0), member("good", good)])
    with torch.inference_mode():
        out = ensemble.forward(GREY, ensemble.plan(), torch.bfloat16, check_finite=True)
        reference = _under(good, torch.bfloat16)
    assert out.nonfinite == ("broken",) and out.fp32_retries == ()
    assert broken.calls == ["autocast", "float32"]
    torch.testing.assert_close(out.seg, reference)  # the good model alone, weight 1: NaN left no trace
    with torch.inference_mode():  # in float32 there is nothing to retry: left out at once
        plain = ensemble.forward(GREY, ensemble.plan(), None, check_finite=True)
    assert plain.nonfinite == ("broken",) and broken.calls[-1] == "float32" and len(broken.calls) == 3
    only_broken = Ensemble([member("broken", Head("always"))])
    with torch.inference_mode():
        assert only_broken.forward(GREY, only_broken.plan(), None, check_finite=True).seg is None


def test_one_read_from_the_device_per_batch(monkeypatch):
    """Every host read of a device value waits for the device; the old forward made one per model (and a
    synchronize per model when timed). Counted on the CPU through the same calls."""
    reads = []
    for name in ("__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: reads.append("synchronize"))
    ensemble = Ensemble([member(f"m{i}", Head(seed=i)) for i in range(3)])
    with torch.inference_mode():
        out = ensemble.forward(GREY, ensemble.plan(), None, timed=True, check_finite=True)
    assert reads == ["tolist"] and out.nonfinite == ()


def test_timers_attribute_each_model_its_own_time():
    """On the CPU the timer is perf_counter around each model (its ops are synchronous): a model that sleeps
    0.3 s is charged at least that, and the quick one less."""
    slow, quick = Head(seconds=0.3), Head(seed=1)
    ensemble = Ensemble([member("slow", slow), member("quick", quick)])
    with torch.inference_mode():
        seconds = ensemble.forward(GREY, ensemble.plan(), timed=True).model_seconds()
    assert seconds["slow"] >= 0.3 and seconds["quick"] < seconds["slow"]
    with torch.inference_mode():
        assert ensemble.forward(GREY, ensemble.plan()).model_seconds() == {}


def test_a_replica_is_made_once_per_device():
    ensemble = Ensemble([member("m", Head())])
    assert ensemble.replicate("cpu") is ensemble
    if torch.cuda.is_available():
        assert ensemble.replicate("cuda:0") is ensemble.replicate("cuda")


@pytest.mark.parametrize("weights", [(1.0, 1.0), (2.0, 0.5)])
def test_weighted_average_is_unchanged_by_the_finite_check(weights):
    heads = [Head(seed=0), Head(seed=1)]
    ensemble = Ensemble([member(f"m{i}", h, w) for i, (h, w) in enumerate(zip(heads, weights, strict=True))])
    with torch.inference_mode():
        checked = ensemble.forward(GREY, ensemble.plan(), check_finite=True).seg
        unchecked = ensemble.forward(GREY, ensemble.plan()).seg
        alone = [_under(h, None) for h in heads]
    torch.testing.assert_close(checked, unchecked)
    torch.testing.assert_close(checked, (alone[0] * weights[0] + alone[1] * weights[1]) / sum(weights))
