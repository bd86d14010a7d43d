"""The engine's runner: image batches through one ensemble replica per device, in order, within a deadline.

JPEG -> decode in DataLoader workers (`ImageSet`: a bad image becomes a flag, never an exception) -> pinned
uint8 batch -> batch k to replica k mod D (`dispatch`: one thread per device) -> `Ensemble.forward` -> the
caller's `finish` on the device (threshold, or a copy to the CPU) -> `Batch`es taken back in batch order, so
the results are the same whatever D. A `Budget` may drop views/models mid-run to finish in time (projecting
from the devices' combined rate); its `Deadline` is hard: the runner never starts a batch its measured time
says cannot end in time and never waits past the limit for decode or a device. A model whose logits hold
NaN/inf is dropped for the rest of the run, loudly. `predict` builds submissions and probabilities on it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from steel_seg.competition import IMAGE_SHAPE, N_CLASSES
from steel_seg.engine import devices
from steel_seg.engine.budget import Budget, Deadline, Plan
from steel_seg.engine.dispatch import DeviceWorker, Feed
from steel_seg.engine.ensemble import Ensemble, Output
from steel_seg.formats.images import ImageError, fit_shape, read_grey
from steel_seg.models.precision import device_dtype

log = logging.getLogger(__name__)

OK, RESIZED, BAD = 0, 1, 2


@dataclass
class PredictSettings:
    """How to run the engine (see docs/CONTRACTS.md, "Inference engine")."""

    device: str = "cpu"  # one device or a comma list (`devices.resolve`): cuda = every visible GPU
    batch_size: int = 8
    workers: int = 2
    amp: str = "auto"
    budget_s: float | None = None
    budget_start: float | None = None
    limit: int | None = None
    post_workers: int = 2
    post_pool: str = "thread"
    tta: tuple[str, ...] | None = None
    progress: bool = True
    warmup_batches: int = 1

    def devices(self) -> tuple[torch.device, ...]:
        """The devices the run uses, one ensemble replica each; `devices.DeviceError` when one is unknown."""
        return devices.resolve(self.device)

    def amp_dtype(self, device: torch.device | None = None) -> torch.dtype | None:
        """The autocast dtype on `device` (default: the first; `precision.device_dtype`): None = float32."""
        return device_dtype(device or self.devices()[0], self.amp)


@dataclass(frozen=True)
class BadImage:
    """An image that could not be used as is: what was wrong and what the engine did."""

    image_id: str
    path: str
    reason: str
    action: str


class ImageSet(Dataset):
    """`paths[i]` -> `(i, grey (H, W) uint8 tensor, status, note)`; a bad image is zeros with status BAD."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor, int, str]:
        try:
            grey = read_grey(self.paths[i], shape=None)
        except (ImageError, OSError) as exc:
            return i, torch.zeros(IMAGE_SHAPE, dtype=torch.uint8), BAD, getattr(exc, "reason", str(exc))
        if grey.shape != IMAGE_SHAPE:
            note = f"size {grey.shape[1]}x{grey.shape[0]}, resized to {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]}"
            return i, torch.from_numpy(fit_shape(grey)), RESIZED, note
        return i, torch.from_numpy(grey), OK, ""


@dataclass
class Batch:
    """One predicted batch: positions in the image list, statuses, notes, and what the `finish` function made
    of the device probabilities (None when no segmenter could run: its rows are empty)."""

    index: list[int]
    status: list[int]
    note: list[str]
    out: Any


@dataclass
class Done:
    """A device worker's result for one batch: the batch, its replica and plan, seconds, NaN/inf models."""

    batch: Batch
    slot: int
    plan: Plan
    model_s: dict[str, float]
    nonfinite: list[str]
    forward_s: float
    finish_s: float


Finish = Callable[[Tensor, Tensor | None], Any]


class Runner:
    """Batches through one ensemble replica per device under a plan, in order, within the budget's deadline.

    Stage seconds: `decode_wait` is the main thread's wait for decoded images; `model` and `transfer` are the
    devices' forward and finish seconds divided by the number of devices (their share of the wall time).
    """

    def __init__(
        self,
        ensemble: Ensemble,
        paths: Sequence[Path],
        settings: PredictSettings,
        budget: Budget | None = None,
    ):
        self.paths, self.settings, self.budget = list(paths), settings, budget
        self.replicas = [ensemble.replicate(d) for d in settings.devices()]
        self.amp = [settings.amp_dtype(r.device) for r in self.replicas]
        self.roles = ensemble.roles()
        self.plan: Plan = ensemble.plan(settings.tta)
        self.stage_s = {"decode_wait": 0.0, "model": 0.0, "transfer": 0.0, "post_wait": 0.0, "write": 0.0}
        self.bad: list[BadImage] = []
        self.nonfinite: list[str] = []
        self.cut = False
        self._batch_s: list[float | None] = [None] * len(self.replicas)
        self._images_done = 0

    @property
    def deadline(self) -> Deadline | None:
        return self.budget.deadline if self.budget is not None else None

    def _timeout(self) -> float | None:
        """How long a wait may last: until the deadline; None (as long as it takes) without a finite one."""
        deadline = self.deadline
        if deadline is None or not math.isfinite(deadline.limit_s):
            return None
        return min(max(0.0, deadline.remaining()), threading.TIMEOUT_MAX)

    def batches(self, finish: Finish) -> Iterator[Batch]:
        """Every batch (batch k on replica k mod D), yielded in order; ends early at the deadline."""
        if any(r.device.type == "cuda" for r in self.replicas):
            torch.backends.cudnn.benchmark = True
        feed = Feed(iter(self._loader()), name="decode")
        workers = [DeviceWorker(f"replica-{r.device}") for r in self.replicas]
        last = time.perf_counter()
        try:
            for future in self._dispatch(feed, workers, finish):
                done = self._wait(future)
                if done is None:
                    return
                last = self._account(done, last)
                yield done.batch
        finally:  # wait for the threads unless the deadline cut the run (a batch may still be running)
            feed.close(wait=not self.cut)
            for worker in workers:
                worker.close(wait=not self.cut)

    def _dispatch(self, feed: Feed, workers: list[DeviceWorker], finish: Finish) -> Iterator[Future]:
        """Batch k to worker k mod D, one batch in flight per device; the futures in batch order."""
        inflight: deque[Future] = deque()
        for k in itertools.count():
            slot = k % len(workers)
            item = self._next(feed, slot)
            if item is None:
                break
            inflight.append(workers[slot].submit(self._predict, slot, dict(self.plan), item, finish))
            if len(inflight) == len(workers):
                yield inflight.popleft()
        yield from inflight

    def _loader(self) -> DataLoader:
        return DataLoader(
            ImageSet(self.paths),
            batch_size=self.settings.batch_size,
            num_workers=self.settings.workers,
            pin_memory=any(r.device.type == "cuda" for r in self.replicas),
        )

    def _next(self, feed: Feed, replica: int) -> tuple | None:
        """The next decoded batch for `replica`; None at the end, or when the deadline forbids starting it."""
        deadline, start = self.deadline, time.perf_counter()
        try:
            item = feed.get(self._timeout())
        except StopIteration:
            return None
        except TimeoutError:
            return self._stop("still waiting for decoded images")
        finally:
            self.stage_s["decode_wait"] += time.perf_counter() - start
        expected = self._batch_s[replica]
        if deadline is not None and expected is not None and not deadline.allows(expected):
            return self._stop(f"the next batch would need ~{expected:.1f}s")
        return item

    def _wait(self, future: Future) -> Done | None:
        """A dispatched batch's result; None when the deadline passes first (the batch is abandoned)."""
        try:
            return future.result(self._timeout())
        except FutureTimeout:
            return self._stop("a batch was still running")

    def _stop(self, why: str) -> None:
        """Mark the run cut by the deadline (logged once); returns None for the callers to pass on."""
        if self.cut:
            return
        self.cut = True
        d = self.deadline
        log.error("DEADLINE: %.1fs of the %gs limit elapsed (%s): predicting stops; every image not reached "
                  "is written empty", d.elapsed(), d.limit_s, why)  # fmt: skip

    def _predict(self, slot: int, plan: Plan, item: tuple, finish: Finish) -> Done:
        """On replica `slot`'s thread: the forward pass, then `finish` (threshold or copy) on its device."""
        index, grey, status, note = item
        replica = self.replicas[slot]
        if replica.device.type == "cuda":
            torch.cuda.set_device(replica.device)  # per thread: "the current device" is this one
        start = time.perf_counter()
        out = Output(seg=None, cls=None)
        with torch.inference_mode():
            if any(self.roles[n] == "seg" for n in plan):
                out = _forward(replica, self.amp[slot], plan, grey, status != BAD)
            forward_s = time.perf_counter() - start
            finished = None if out.seg is None else finish(out.seg, out.cls)
        finish_s = time.perf_counter() - start - forward_s
        batch = Batch(index.tolist(), status.tolist(), list(note), finished)
        return Done(batch, slot, plan, out.model_s, list(out.nonfinite), forward_s, finish_s)

    def _account(self, done: Done, last: float) -> float:
        """Book a finished batch (stages, bad images, NaN models, budget); returns the time it was taken."""
        n = len(self.replicas)
        batch, now = done.batch, time.perf_counter()
        self._batch_s[done.slot] = done.forward_s + done.finish_s
        self.stage_s["model"] += done.forward_s / n
        self.stage_s["transfer"] += done.finish_s / n
        self._images_done += len(batch.index)
        self._log_bad(batch.index, batch.status, batch.note)
        self._drop_nonfinite(done.nonfinite)
        if self.budget is not None:
            model_s = {name: seconds / n for name, seconds in done.model_s.items()}
            self.budget.record(len(batch.index), now - last, model_s, done.plan)
            self._review()
        return now

    def _review(self) -> None:
        seen = len(self.budget.decisions)
        self.plan = self.budget.review(self.plan)
        for decision in self.budget.decisions[seen:]:
            log.warning(decision.text())

    def _drop_nonfinite(self, names: list[str]) -> None:
        """Drop each model that produced NaN/inf from the plan for the rest of the run, loudly."""
        for name in names:
            if name not in self.plan:
                continue
            self.plan = {n: v for n, v in self.plan.items() if n != name}
            self.nonfinite.append(name)
            log.error("model %r produced NaN/inf outputs (batch ending at image %d): dropped from the "
                      "ensemble for the rest of the run", name, self._images_done)  # fmt: skip
            if not any(self.roles[n] == "seg" for n in self.plan):
                log.error("no segmenter left: every image from here on is written empty")

    def _log_bad(self, index: list[int], status: list[int], note: list[str]) -> None:
        for i, s, n in zip(index, status, note, strict=True):
            if s == OK:
                continue
            path = self.paths[i]
            action = "predicted empty" if s == BAD else "predicted after resizing"
            self.bad.append(BadImage(path.name, str(path), n, action))
            log.warning("%s: %s (%s)", path, n, action)


def _forward(replica: Ensemble, amp: torch.dtype | None, plan: Plan, grey: Tensor, good: Tensor) -> Output:
    """The ensemble on the readable rows (`good (B,) bool`) of `grey (B, H, W) uint8`; bad rows get zeros."""
    device = replica.device
    if good.all():
        return replica.forward(grey.to(device, non_blocking=True), plan, amp, timed=True, check_finite=True)
    seg = torch.zeros((len(good), N_CLASSES, *grey.shape[1:]), device=device)
    cls = torch.zeros((len(good), N_CLASSES), device=device)
    if not good.any():
        return Output(seg=seg, cls=cls if replica.has_cls(plan) else None)
    out = replica.forward(grey[good].to(device), plan, amp, timed=True, check_finite=True)
    if out.seg is None:
        return out
    rows = good.to(device)
    seg[rows] = out.seg
    if out.cls is not None:  # else no image-level output (or its only source turned NaN in this batch)
        cls[rows] = out.cls
    return dataclasses.replace(out, seg=seg, cls=None if out.cls is None else cls)
