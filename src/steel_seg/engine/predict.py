"""The inference engine: the one path from JPEGs to probabilities or submission rows.

JPEG -> decode in DataLoader workers (a bad image becomes a flag, never an exception) -> pinned uint8
batch -> device -> `Ensemble.forward` (normalise, TTA views stacked in one batch, un-flipped and averaged on
the device) -> per-class threshold and gate scores on the device -> small uint8 masks to the CPU ->
component filtering + RLE in a worker pool, overlapped with the accelerator -> rows streamed to the CSV.
`iter_probs` runs the same batches and yields probabilities instead (for `steel-seg oof`).

Every device of `settings.device` (a comma list; `cuda` = every visible GPU) holds one replica of the
ensemble (a device listed twice shares it) and runs it on its own thread; batch k runs on replica k mod D and
the results are taken back in batch order, so the rows are the same whatever D. A `Budget` may drop
views/models mid-run to finish in time, projecting from the devices' combined rate; its `Deadline` is hard:
at the limit the engine stops (never starting a batch its measured time says cannot end in time, never
waiting past the limit for decode or a device) and every image not reached is written empty. A model whose
logits hold NaN/inf is dropped for the rest of the run, loudly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from steel_seg.competition import IMAGE_SHAPE, N_CLASSES
from steel_seg.engine import devices
from steel_seg.engine.budget import Budget, BudgetDecision, Deadline, Plan
from steel_seg.engine.dispatch import DeviceWorker, Feed
from steel_seg.engine.ensemble import Ensemble, views_text
from steel_seg.formats import rle, submission
from steel_seg.formats.images import ImageError, fit_shape, read_grey
from steel_seg.models.manifest import DEFAULT_BUDGET_S
from steel_seg.models.precision import device_dtype
from steel_seg.postprocess.rules import Rules, filter_masks
from steel_seg.progress import Progress

log = logging.getLogger(__name__)

OK, RESIZED, BAD = 0, 1, 2
EMPTY_ROW = ("",) * N_CLASSES


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


@dataclass
class RunSummary:
    """What a `predict_submission` run did, where the time went, and what it had to give up."""

    images: int = 0
    seconds: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    bad: list[BadImage] = field(default_factory=list)
    decisions: list[BudgetDecision] = field(default_factory=list)
    plan: dict[str, tuple[str, ...]] = field(default_factory=dict)
    budget_s: float = DEFAULT_BUDGET_S
    out_csv: str = ""
    cut: int = 0
    nonfinite: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Images predicted (not cut by the deadline) per second."""
        return (self.images - self.cut) / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        """A few lines for the end of a run."""
        shares = (
            ", ".join(f"{k} {v / self.seconds:.0%}" for k, v in self.stage_s.items()) if self.seconds else ""
        )
        done = f"{self.images - self.cut} of {self.images}" if self.cut else f"{self.images}"
        lines = [
            f"predicted {done} images in {self.seconds:.1f}s ({self.images_per_s:.2f} images/s, "
            f"limit {self.budget_s:.0f}s) -> {self.out_csv}",
            f"time: {shares}",
            f"models: {views_text(self.plan)}",
        ]
        lines += [d.text() for d in self.decisions]
        lines += [f"model {n}: NaN/inf outputs, dropped for the rest of the run" for n in self.nonfinite]
        if self.cut:
            lines.append(f"DEADLINE: {self.cut} of {self.images} images not reached, written empty")
        lines += [f"bad image {b.path}: {b.reason} ({b.action})" for b in self.bad]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "stage_s": self.stage_s,
            "budget_s": self.budget_s,
            "plan": {k: list(v) for k, v in self.plan.items()},
            "bad": [vars(b) for b in self.bad],
            "decisions": [vars(d) for d in self.decisions],
            "cut": self.cut,
            "nonfinite": self.nonfinite,
        }


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
class _Done:
    """A device worker's result for one batch: the batch, its replica and plan, seconds, NaN/inf models."""

    batch: Batch
    slot: int
    plan: Plan
    model_s: dict[str, float]
    nonfinite: list[str]
    forward_s: float
    finish_s: float


Finish = Callable[[Tensor, Tensor | None], Any]


class _Runner:
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

    def _wait(self, future: Future) -> _Done | None:
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

    def _predict(self, slot: int, plan: Plan, item: tuple, finish: Finish) -> _Done:
        """On replica `slot`'s thread: the forward pass, then `finish` (threshold or copy) on its device."""
        index, grey, status, note = item
        replica = self.replicas[slot]
        if replica.device.type == "cuda":
            torch.cuda.set_device(replica.device)  # per thread: "the current device" is this one
        model_s: dict[str, float] = {}
        nonfinite: list[str] = []
        start = time.perf_counter()
        seg = cls = None
        with torch.inference_mode():
            if any(self.roles[n] == "seg" for n in plan):
                good = status != BAD
                seg, cls = self._forward(replica, self.amp[slot], plan, grey, good, model_s, nonfinite)
            forward_s = time.perf_counter() - start
            out = None if seg is None else finish(seg, cls)
        finish_s = time.perf_counter() - start - forward_s
        batch = Batch(index.tolist(), status.tolist(), list(note), out)
        return _Done(batch, slot, plan, model_s, nonfinite, forward_s, finish_s)

    @staticmethod
    def _forward(
        replica: Ensemble,
        amp: torch.dtype | None,
        plan: Plan,
        grey: Tensor,
        good: Tensor,
        model_s: dict[str, float],
        nonfinite: list[str],
    ) -> tuple[Tensor | None, Tensor | None]:
        """The ensemble on the readable rows of `grey (B, H, W) uint8`; the bad rows get zeros."""
        device = replica.device
        if good.all():
            return replica.forward(grey.to(device, non_blocking=True), plan, amp, model_s, nonfinite)
        seg = torch.zeros((len(good), N_CLASSES, *grey.shape[1:]), device=device)
        cls = torch.zeros((len(good), N_CLASSES), device=device)
        if not good.any():
            return seg, cls if replica.has_cls(plan) else None
        seg_good, cls_good = replica.forward(grey[good].to(device), plan, amp, model_s, nonfinite)
        if seg_good is None:
            return None, None
        rows = good.to(device)
        seg[rows] = seg_good
        if cls_good is None:  # no image-level output (or its only source turned NaN in this batch)
            return seg, None
        cls[rows] = cls_good
        return seg, cls

    def _account(self, done: _Done, last: float) -> float:
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


def iter_probs(
    ensemble: Ensemble, image_paths: Sequence[str | Path], settings: PredictSettings | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """Per-image probabilities, in order: `(image_id, seg (4, H, W) float32, cls (4,) float32 or None)`.

    The same batching/TTA/ensemble code as `predict_submission` (no time budget). An unreadable image yields
    zeros (logged); `settings.tta` overrides every model's views; `image_id` is the file name.

    Raises:
        ValueError once no segmenter is left (every one produced NaN/inf): unlike a submission, OOF
        probabilities and pseudo-labels would read zeros as a confident "no defect".
    """
    settings = settings or PredictSettings()
    paths = [Path(p) for p in image_paths][: settings.limit]
    runner = _Runner(ensemble, paths, settings)
    with Progress(len(paths), "probs", bar=settings.progress) as progress:
        for batch in runner.batches(_to_numpy):
            if batch.out is None:
                raise ValueError(
                    f"no segmenter left at image {paths[batch.index[0]].name}: {', '.join(runner.nonfinite)} "
                    "produced NaN/inf outputs (an fp16 overflow? try --amp off)"
                )
            seg, cls = batch.out
            for j, (i, status) in enumerate(zip(batch.index, batch.status, strict=True)):
                empty = status == BAD
                yield (
                    paths[i].name,
                    np.zeros((N_CLASSES, *IMAGE_SHAPE), np.float32) if empty else seg[j],
                    None if cls is None else (np.zeros_like(cls[j]) if empty else cls[j]),
                )
            progress.update(len(batch.index))


def _to_numpy(seg: Tensor, cls: Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    """`iter_probs`'s finish: the probabilities to the CPU."""
    return seg.cpu().numpy(), None if cls is None else cls.cpu().numpy()


def threshold_on_device(seg: Tensor, cls: Tensor | None, rules: Rules) -> tuple[Tensor, Tensor]:
    """Steps 1-2 of `postprocess` on the device: `seg (B, 4, H, W)` -> masks (B, 4, H, W) uint8, gates (B, 4).

    The same float32 comparisons as `threshold`/`gate_scores`, so the results are identical.
    """
    thresholds = torch.from_numpy(rules.thresholds()).to(seg.device)[None, :, None, None]
    masks = seg > thresholds
    if rules.one_class_per_pixel:
        classes = torch.arange(seg.shape[1], device=seg.device)[None, :, None, None]
        masks &= seg.argmax(dim=1, keepdim=True) == classes
    gates = cls if cls is not None else seg.amax(dim=(2, 3))
    return masks.to(torch.uint8), gates.float()


def encode_image(masks: np.ndarray, rules: Rules, gates: np.ndarray) -> list[str]:
    """The CPU half of one image: `masks (4, H, W) uint8`, `gates (4,)` -> 4 RLE strings (a pool job)."""
    return rle.encode_many(filter_masks(masks, rules, gates))


def predict_submission(
    ensemble: Ensemble,
    rules: Rules,
    images_dir: str | Path,
    sample_csv: str | Path,
    out_csv: str | Path,
    settings: PredictSettings | None = None,
) -> RunSummary:
    """Predict every image of the sample submission and stream the rows to `out_csv` in the sample's layout.

    Bad images are logged and written empty; the time budget (settings, else the ensemble's manifest) may
    drop views/models in the manifest's `drop_order`, and at its limit the run stops and every image not
    reached is written empty (`RunSummary.cut`). Returns the run's summary (also logged). `out_csv` is
    replaced only by a complete file: when the run fails, the rows predicted so far are kept, every other
    image is written empty, and the error is raised after the file is in place.
    """
    settings = settings or PredictSettings()
    start = time.perf_counter()
    sample = submission.read_sample(sample_csv)
    ids = sample.image_ids[: settings.limit]
    budget_s = ensemble.budget_s if settings.budget_s is None else settings.budget_s
    budget = Budget(
        budget_s,
        ensemble.drop_order,
        ensemble.roles(),
        len(ids),
        settings.budget_start if settings.budget_start is not None else start,
        warmup_batches=settings.warmup_batches * len(settings.devices()),  # each device warms up
    )
    runner = _Runner(ensemble, [Path(images_dir) / i for i in ids], settings, budget)
    writer = submission.SubmissionWriter(out_csv, sample, check_rle=False)
    try:
        _stream(runner, rules, writer, ids, settings)
    except BaseException:
        missing = _not_reached(writer.close(), ids)  # every row written is kept, the rest empty: complete
        log.error("run stopped: %d of %d images written empty in %s", missing, len(ids), out_csv)
        raise
    cut = _not_reached(writer.close(), ids)
    if len(ids) < len(sample.image_ids):
        log.info("--limit %d: the other %d images of the sample are written empty", len(ids),
                 len(sample.image_ids) - len(ids))  # fmt: skip
    if runner.cut:
        log.error("DEADLINE: %d of %d images were not reached and are written empty in %s (limit %gs)", cut,
                  len(ids), out_csv, budget_s)  # fmt: skip
    summary = RunSummary(
        len(ids),
        time.perf_counter() - start,
        runner.stage_s,
        runner.bad,
        budget.decisions,
        runner.plan,
        budget_s,
        str(out_csv),
        cut,
        runner.nonfinite,
    )
    log.info("%s", summary.text())
    return summary


def _not_reached(missing: list[str], ids: list[str]) -> int:
    """How many of the run's images (`ids`, within `--limit`) the writer had to fill empty."""
    wanted = set(ids)
    return sum(i in wanted for i in missing)


def _stream(
    runner: _Runner,
    rules: Rules,
    writer: submission.SubmissionWriter,
    ids: list[str],
    settings: PredictSettings,
) -> None:
    """Batches -> device threshold -> CPU pool (filter + RLE) -> writer, in the sample's order.

    On an error every row already predicted (the batches in the pool too) still reaches the writer.
    """
    pool_cls = ProcessPoolExecutor if settings.post_pool == "process" else ThreadPoolExecutor
    pending: deque[tuple[str, Future | None]] = deque()
    with (
        pool_cls(max_workers=max(1, settings.post_workers)) as pool,
        Progress(len(ids), "predict", bar=settings.progress) as progress,
    ):
        try:
            for batch in runner.batches(lambda seg, cls: _to_masks(seg, cls, rules)):
                _submit(batch, rules, pool, pending, ids)
                _drain(runner, writer, pending, keep=2 * settings.batch_size)
                progress.update(len(batch.index))
            _drain(runner, writer, pending, keep=0)
        except BaseException:
            with contextlib.suppress(Exception):
                _drain(runner, writer, pending, keep=0)
            raise


def _to_masks(seg: Tensor, cls: Tensor | None, rules: Rules) -> tuple[np.ndarray, np.ndarray]:
    """`predict_submission`'s finish: threshold on the device, then only uint8 masks and gates to the CPU."""
    masks, gates = threshold_on_device(seg, cls, rules)
    return masks.cpu().numpy(), gates.cpu().numpy()


def _submit(
    batch: Batch,
    rules: Rules,
    pool: Executor,
    pending: deque[tuple[str, Future | None]],
    ids: Sequence[str],
) -> None:
    """One pool job per predicted image; a bad image, or a batch without a segmenter, is an empty row."""
    masks, gates = batch.out if batch.out is not None else (None, None)
    for j, (i, status) in enumerate(zip(batch.index, batch.status, strict=True)):
        empty = masks is None or status == BAD
        pending.append((ids[i], None if empty else pool.submit(encode_image, masks[j], rules, gates[j])))


def _drain(
    runner: _Runner, writer: submission.SubmissionWriter, pending: deque[tuple[str, Future | None]], keep: int
) -> None:
    """Write finished rows until at most `keep` are pending (bounds memory; keeps the pool busy)."""
    while len(pending) > keep:
        image_id, job = pending.popleft()
        start = time.perf_counter()
        rles = EMPTY_ROW if job is None else job.result()
        runner.stage_s["post_wait"] += time.perf_counter() - start
        start = time.perf_counter()
        writer.write(image_id, rles)
        runner.stage_s["write"] += time.perf_counter() - start
