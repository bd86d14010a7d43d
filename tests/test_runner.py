"""The runner's dispatch: the next batch to whichever device is free, two queued per device, batches handed
back in order; the start-up forward on every device; float32 retries counted. Two CPU "devices" (workers
sharing the CPU's model) stand in for two GPUs; a real module that sleeps stands in for GPU work (a sleep
releases the GIL as CUDA kernels do)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from steel_seg.engine import devices
from steel_seg.engine.budget import Budget
from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.runner import IN_FLIGHT, PredictSettings, Runner, preflight
from steel_seg.models.factory import ModelSpec

SPEC = ModelSpec(arch="Unet", encoder="tu-mobilenetv3_small_050", in_channels=1, encoder_depth=3)


class ByDevice(nn.Module):
    """A real 1x1 convolution that sleeps `seconds[k]` per batch on the worker thread of device slot k and
    records which slot ran each batch (by its first pixel: the image's number)."""

    def __init__(self, seconds: tuple[float, ...]):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=1)
        self.seconds, self.ran = seconds, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = threading.current_thread().name  # "replica-<slot>-<device>"
        slot = int(name.split("-")[1]) if name.startswith("replica-") else 0
        self.ran.append(slot)
        time.sleep(self.seconds[slot])
        return self.conv(x)


def numbered_images(folder: Path, n: int) -> list[Path]:
    """`n` JPEGs, image i a flat grey of value i (so a batch's rows can be told apart)."""
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:03d}.jpg")
        cv2.imwrite(str(paths[-1]), np.full((256, 1600), 10 * i, np.uint8))
    return paths


def test_the_faster_device_takes_more_batches_and_the_order_holds(tmp_path):
    """The old dispatch sent batch k to device k mod 2: 6 and 6 here, the slow card setting the pace."""
    paths = numbered_images(tmp_path / "images", 12)
    model = ByDevice(seconds=(0.02, 0.6))
    ensemble = Ensemble([Member("m", "seg", model, SPEC)])
    settings = PredictSettings(device="cpu,cpu", batch_size=1, workers=0, progress=False)
    batches = list(Runner(ensemble, paths, settings).batches(lambda seg, cls: seg.mean().item()))
    assert [b.index for b in batches] == [[i] for i in range(12)]  # handed back in order
    assert model.ran.count(1) <= 4 < model.ran.count(0)  # the slow device ran few: the quick one the rest


def test_a_device_starts_its_next_batch_while_the_caller_holds_the_last(tmp_path):
    """Two batches are queued per device: the old runner dispatched batch k+1 only once the caller came back
    for it, so the device idled while the caller wrote rows."""
    paths = numbered_images(tmp_path / "images", 4)
    started = threading.Event()

    class Watch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.calls = nn.Conv2d(1, 4, kernel_size=1), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                started.set()
            return self.conv(x)

    ensemble = Ensemble([Member("m", "seg", Watch(), SPEC)])
    settings = PredictSettings(device="cpu", batch_size=1, workers=0, progress=False)
    batches = Runner(ensemble, paths, settings).batches(lambda seg, cls: None)
    first = next(batches)
    assert first.index == [0]
    assert started.wait(timeout=10), "batch 1 did not start while the caller held batch 0"
    assert [b.index for b in batches] == [[1], [2], [3]]
    assert IN_FLIGHT == 2


def test_the_deadline_counts_the_batches_queued_ahead(tmp_path, caplog):
    """1 s a batch, a 4.5 s limit: at 3 s a batch is queued, so the next would end at ~5 s and is not
    started. The old check (one batch time from now) started it and then waited for it until the limit."""
    paths = numbered_images(tmp_path / "images", 8)
    ensemble = Ensemble([Member("m", "seg", ByDevice(seconds=(1.0,)), SPEC)])
    settings = PredictSettings(device="cpu", batch_size=1, workers=0, progress=False)
    run = Runner(ensemble, paths, settings, Budget(4.5, (), {"m": "seg"}, len(paths), time.perf_counter()))
    done = list(run.batches(lambda seg, cls: None))
    assert run.cut and [b.index for b in done] == [[i] for i in range(len(done))]
    assert re.search(r"the next batch would need ~2\.\ds", caplog.text)
    assert "a batch was still running" not in caplog.text


def test_preflight_runs_the_ensemble_once_per_device_before_any_image(monkeypatch):
    model = ByDevice(seconds=(0.0,))
    ensemble = Ensemble([Member("m", "seg", model, SPEC, views=("none", "h"))])
    preflight(ensemble, PredictSettings(device="cpu,cpu"))
    assert model.ran == [0]  # two slots of one CPU: one device, one forward (of both views, stacked)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED (injected)")

    broken = Ensemble([Member("bad", "seg", Broken(), SPEC)])
    failed = (
        r"cpu: one image through the ensemble \(bad: none\) failed at start-up: RuntimeError: cuDNN error"
    )
    with pytest.raises(devices.DeviceError, match=failed):
        preflight(broken, PredictSettings(device="cpu"))


def test_float32_retries_are_counted_and_logged_once(tmp_path, caplog):
    """bf16 autocast on the CPU (the runner's per-device dtype set by hand: on the CPU it is always float32)
    stands in for a T4's fp16."""

    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, kernel_size=1)

        def forward(self, x):
            out = self.conv(x)
            return out * float("nan") if out.dtype != torch.float32 else out

    paths = numbered_images(tmp_path / "images", 3)
    ensemble = Ensemble([Member("flaky", "seg", Flaky(), SPEC)])
    run = Runner(ensemble, paths, PredictSettings(device="cpu", batch_size=1, workers=0, progress=False))
    run.amp = [torch.bfloat16]
    done = [b for b in run.batches(lambda seg, cls: seg.isfinite().all().item())]
    assert [b.out for b in done] == [True] * 3 and run.fp32_retries == {"flaky": 3} and not run.nonfinite
    assert caplog.text.count("redone in float32") == 1
