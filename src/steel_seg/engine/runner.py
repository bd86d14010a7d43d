"""The engine's runner: image batches through one ensemble replica per device, in order, within a deadline.

JPEG -> decode in DataLoader workers (`ImageSet`: a bad image becomes a flag, never an exception) -> pinned
uint8 batch -> the next batch to whichever replica has a free slot (`dispatch`: one thread per device, up to
IN_FLIGHT batches queued on each, so a device never waits for the main thread and the faster card takes
more batches) -> `Ensemble.forward` -> the caller's `finish` on the device (threshold, or a copy to the CPU)
-> `Batch`es handed back in batch order (finished ones wait for their turn, at most LOOKAHEAD per device),
so the results are the same whatever D. A `Budget` may drop views/models mid-run to finish in time
(projecting from the devices' combined rate); its `Deadline` is hard: the runner never starts a batch its
device's measured time (with the batches queued before it) says cannot end in time and never waits past the
limit for decode or a device. A model whose logits hold NaN/inf in float32 too is dropped for the rest of
the run, loudly. `preflight` runs one image through the whole ensemble on every device before the run.
`predict` builds submissions and probabilities on it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from steel_seg.competition import DEFAULT_FINAL_FORMAT, IMAGE_SHAPE, N_CLASSES
from steel_seg.engine import devices
from steel_seg.engine.budget import Budget, Deadline, Plan
from steel_seg.engine.dispatch import DeviceWorker, Feed
from steel_seg.engine.ensemble import Ensemble, Output, views_text
from steel_seg.formats.images import ImageError, fit_shape, read_grey
from steel_seg.models.precision import device_dtype

log = logging.getLogger(__name__)

OK, RESIZED, BAD = 0, 1, 2
IN_FLIGHT = 2  # batches queued per device: the next one starts the moment the device is free
LOOKAHEAD = 4  # finished batches per device held for an earlier one before dispatch pauses (bounds memory)


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
    final_format: str = DEFAULT_FINAL_FORMAT  # the FINAL layout's form (`formats.submission`)

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
    """A device worker's result for one batch: the batch, its replica and plan, seconds, NaN/inf models and
    those redone in float32."""

    batch: Batch
    slot: int
    plan: Plan
    model_s: dict[str, float]
    nonfinite: list[str]
    forward_s: float
    finish_s: float
    fp32_retries: list[str] = field(default_factory=list)


@dataclass
class _Flight:
    """Batches dispatched and not yet handed back: those running or queued on each device (future -> batch
    number, device slot) and those finished, by batch number, waiting for their turn (a Done, or the error
    the batch raised)."""

    devices: int
    running: dict[Future, tuple[int, int]] = field(default_factory=dict)
    finished: dict[int, Done | BaseException] = field(default_factory=dict)
    dispatched: int = 0
    handed: int = 0

    def queued(self, slot: int) -> int:
        return sum(s == slot for _, s in self.running.values())

    def free_slot(self) -> int | None:
        """The least loaded device with room for another batch; None when all are full or too many finished
        batches wait for an earlier one."""
        if len(self.finished) >= LOOKAHEAD * self.devices:
            return None
        slot = min(range(self.devices), key=self.queued)
        return slot if self.queued(slot) < IN_FLIGHT else None

    def add(self, future: Future, slot: int) -> None:
        self.running[future] = (self.dispatched, slot)
        self.dispatched += 1

    def ready(self) -> Iterator[Done]:
        """The finished batches whose turn has come, in batch order; a failed one raises its error."""
        while self.handed in self.finished:
            result = self.finished.pop(self.handed)
            self.handed += 1
            if isinstance(result, BaseException):
                raise result
            yield result


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
        self.fp32_retries: dict[str, int] = {}
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
        """Every batch, yielded in batch order; ends early at the deadline (then the batches that finished
        behind one the deadline abandoned are yielded too, out of order: only submissions have a deadline,
        and their writer puts rows in the sample's order)."""
        if any(r.device.type == "cuda" for r in self.replicas):
            torch.backends.cudnn.benchmark = True
        feed = Feed(iter(self._loader()), name="decode")
        workers = [DeviceWorker(f"replica-{i}-{r.device}") for i, r in enumerate(self.replicas)]
        try:
            yield from self._run(feed, workers, finish)
        finally:  # wait for the threads unless the deadline cut the run (a batch may still be running)
            feed.close(wait=not self.cut)
            for worker in workers:
                worker.close(wait=not self.cut)

    def _run(self, feed: Feed, workers: list[DeviceWorker], finish: Finish) -> Iterator[Batch]:
        """Keep every device's slots filled, book each batch as it finishes, hand them back in order."""
        flight, ended, last = _Flight(len(workers)), False, time.perf_counter()
        while True:
            while not ended and (slot := flight.free_slot()) is not None:
                item = self._next(feed, slot, flight.queued(slot))
                if item is None:  # the end of the images, or the deadline
                    ended = True
                    break
                flight.add(workers[slot].submit(self._predict, slot, dict(self.plan), item, finish), slot)
            yield from (done.batch for done in flight.ready())
            if not flight.running:
                if ended:
                    return
                continue
            finished = self._wait_any(flight.running)
            if finished is None:  # the deadline passed with batches still running: hand back what is done
                yield from (r.batch for r in flight.finished.values() if isinstance(r, Done))
                return
            for future in finished:
                number, _ = flight.running.pop(future)
                if future.exception() is not None:
                    flight.finished[number], ended = future.exception(), True
                else:
                    last = self._account(future.result(), last)
                    flight.finished[number] = future.result()

    def _loader(self) -> DataLoader:
        return DataLoader(
            ImageSet(self.paths),
            batch_size=self.settings.batch_size,
            num_workers=self.settings.workers,
            pin_memory=any(r.device.type == "cuda" for r in self.replicas),
        )

    def _next(self, feed: Feed, slot: int, queued: int) -> tuple | None:
        """The next decoded batch for device `slot` (`queued` batches ahead of it there); None at the end, or
        when the deadline forbids starting it."""
        deadline, start = self.deadline, time.perf_counter()
        try:
            item = feed.get(self._timeout())
        except StopIteration:
            return None
        except TimeoutError:
            return self._stop("still waiting for decoded images")
        finally:
            self.stage_s["decode_wait"] += time.perf_counter() - start
        batch_s = self._batch_s[slot]
        expected = None if batch_s is None else batch_s * (queued + 1)
        if deadline is not None and expected is not None and not deadline.allows(expected):
            return self._stop(f"the next batch would need ~{expected:.1f}s")
        return item

    def _wait_any(self, running: dict[Future, tuple[int, int]]) -> set[Future] | None:
        """The batches that have finished (at least one); None when the deadline passes first."""
        finished, _ = wait(running, timeout=self._timeout(), return_when=FIRST_COMPLETED)
        return finished or self._stop("a batch was still running")

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
        model_s = out.model_seconds()  # after `finish`, whose copy to the CPU waited for the device
        finish_s = time.perf_counter() - start - forward_s
        batch = Batch(index.tolist(), status.tolist(), list(note), finished)
        return Done(
            batch, slot, plan, model_s, list(out.nonfinite), forward_s, finish_s, list(out.fp32_retries)
        )

    def _account(self, done: Done, last: float) -> float:
        """Book a finished batch (stages, bad images, NaN models, budget); returns the time it was taken.

        The "model" stage is the models' own seconds (CUDA events), "transfer" the rest of the batch (input
        copy, threshold, copy to the CPU), each divided by the number of devices.
        """
        n = len(self.replicas)
        batch, now = done.batch, time.perf_counter()
        batch_s = done.forward_s + done.finish_s
        model_s = min(sum(done.model_s.values()), batch_s)
        self._batch_s[done.slot] = batch_s
        self.stage_s["model"] += model_s / n
        self.stage_s["transfer"] += (batch_s - model_s) / n
        self._images_done += len(batch.index)
        self._log_bad(batch.index, batch.status, batch.note)
        self._count_fp32_retries(done.fp32_retries)
        self._drop_nonfinite(done.nonfinite)
        if self.budget is not None:
            per_model = {name: seconds / n for name, seconds in done.model_s.items()}
            self.budget.record(len(batch.index), now - last, per_model, done.plan)
            self._review()
        return now

    def _review(self) -> None:
        seen = len(self.budget.decisions)
        self.plan = self.budget.review(self.plan)
        for decision in self.budget.decisions[seen:]:
            log.warning(decision.text())

    def _count_fp32_retries(self, names: list[str]) -> None:
        """Count the batches a model redid in float32 after a NaN/inf under autocast; log the first."""
        for name in names:
            if name not in self.fp32_retries:
                log.warning("model %r: NaN/inf outputs under %s autocast (batch ending at image %d): that "
                            "batch was redone in float32, finite there: kept; later retries are counted in "
                            "the summary", name, self.settings.amp, self._images_done)  # fmt: skip
            self.fp32_retries[name] = self.fp32_retries.get(name, 0) + 1

    def _drop_nonfinite(self, names: list[str]) -> None:
        """Drop each model that produced NaN/inf from the plan for the rest of the run, loudly."""
        for name in names:
            if name not in self.plan:
                continue
            self.plan = {n: v for n, v in self.plan.items() if n != name}
            self.nonfinite.append(name)
            log.error("model %r produced NaN/inf outputs (batch ending at image %d, in float32 too): dropped "
                      "from the ensemble for the rest of the run", name, self._images_done)  # fmt: skip
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


def preflight(ensemble: Ensemble, settings: PredictSettings) -> None:
    """One image (zeros, full size) through the whole plan on every device, as the run calls it (its autocast
    dtype, channels_last, every view): a cuDNN, memory-format or fp16 problem stops the run before any image
    is read, naming the device, instead of showing mid-run.

    Raises:
        devices.DeviceError: the device, the models and the error.
    """
    plan = ensemble.plan(settings.tta)
    for device in dict.fromkeys(settings.devices()):
        replica, start = ensemble.replicate(device), time.perf_counter()
        grey = torch.zeros((1, *IMAGE_SHAPE), dtype=torch.uint8, device=replica.device)
        try:
            with torch.inference_mode():
                out = replica.forward(grey, plan, settings.amp_dtype(replica.device), check_finite=True)
                if replica.device.type == "cuda":  # wait for the device: its errors surface here
                    torch.cuda.synchronize(replica.device)
        except RuntimeError as exc:
            raise devices.DeviceError(
                f"{replica.device}: one image through the ensemble ({views_text(plan)}) failed at start-up: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        log.info("%s: one image through the ensemble (%s) in %.2fs at start-up%s", replica.device,
                 views_text(plan), time.perf_counter() - start,
                 f"; NaN/inf outputs from {', '.join(out.nonfinite)}" if out.nonfinite else "")  # fmt: skip
