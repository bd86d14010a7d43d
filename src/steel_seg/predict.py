"""The inference engine: the one path from JPEGs to probabilities or submission rows.

JPEG -> decode in DataLoader workers (a bad image becomes a flag, never an exception) -> pinned uint8
batch -> device -> `Ensemble.forward` (normalise, TTA views stacked in one batch, un-flipped and averaged on
the device) -> per-class threshold and gate scores on the device -> small uint8 masks to the CPU ->
component filtering + RLE in a worker pool, overlapped with the accelerator -> rows streamed to the CSV.
`iter_probs` runs the same batches and yields probabilities instead (for `steel-seg oof`).
A `Budget` may drop views/models mid-run to finish in time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from steel_seg import postprocess, rle, submission
from steel_seg.budget import Budget, BudgetDecision, Plan
from steel_seg.competition import IMAGE_SHAPE, N_CLASSES
from steel_seg.ensemble import Ensemble, views_text
from steel_seg.images import ImageError, fit_shape, read_grey
from steel_seg.manifest import DEFAULT_BUDGET_S
from steel_seg.precision import device_dtype

log = logging.getLogger(__name__)

OK, RESIZED, BAD = 0, 1, 2
EMPTY_ROW = ("",) * N_CLASSES


@dataclass
class PredictSettings:
    """How to run the engine (see docs/CONTRACTS.md, "Inference engine")."""

    device: str = "cpu"
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

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype on `device` (`precision.device_dtype`): None = float32, always on the CPU."""
        return device_dtype(torch.device(self.device), self.amp)


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

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        """A few lines for the end of a run."""
        shares = (
            ", ".join(f"{k} {v / self.seconds:.0%}" for k, v in self.stage_s.items()) if self.seconds else ""
        )
        lines = [
            f"predicted {self.images} images in {self.seconds:.1f}s ({self.images_per_s:.2f} images/s, "
            f"limit {self.budget_s:.0f}s) -> {self.out_csv}",
            f"time: {shares}",
            f"models: {views_text(self.plan)}",
        ]
        lines += [d.text() for d in self.decisions]
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
    """One predicted batch: positions in the image list, statuses, and device probabilities."""

    index: list[int]
    status: list[int]
    note: list[str]
    seg: Tensor
    cls: Tensor | None


class _Runner:
    """Batches through the ensemble under a plan, timing the stages and consulting the budget per batch."""

    def __init__(
        self,
        ensemble: Ensemble,
        paths: Sequence[Path],
        settings: PredictSettings,
        budget: Budget | None = None,
    ):
        self.ensemble, self.paths, self.settings, self.budget = ensemble, list(paths), settings, budget
        self.plan: Plan = ensemble.plan(settings.tta)
        self.stage_s = {"decode_wait": 0.0, "model": 0.0, "transfer": 0.0, "post_wait": 0.0, "write": 0.0}
        self.bad: list[BadImage] = []
        self.amp = settings.amp_dtype()

    def batches(self) -> Iterator[Batch]:
        device = self.ensemble.device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        loader = DataLoader(
            ImageSet(self.paths),
            batch_size=self.settings.batch_size,
            num_workers=self.settings.workers,
            pin_memory=device.type == "cuda",
        )
        batch_start = time.perf_counter()
        for index, grey, status, note in loader:
            self.stage_s["decode_wait"] += time.perf_counter() - batch_start
            self._log_bad(index.tolist(), status.tolist(), list(note))
            timings: dict[str, float] = {}
            start = time.perf_counter()
            with torch.inference_mode():
                seg, cls = self._forward(grey, status != BAD, timings)
            self.stage_s["model"] += time.perf_counter() - start
            yield Batch(index.tolist(), status.tolist(), list(note), seg, cls)
            now = time.perf_counter()
            self._review(len(index), now - batch_start, timings)
            batch_start = now

    def _forward(self, grey: Tensor, good: Tensor, timings: dict[str, float]) -> tuple[Tensor, Tensor | None]:
        """The ensemble on the readable rows of `grey (B, H, W) uint8`; the bad rows get zeros."""
        device = self.ensemble.device
        if good.all():
            return self.ensemble.forward(grey.to(device, non_blocking=True), self.plan, self.amp, timings)
        seg = torch.zeros((len(good), N_CLASSES, *grey.shape[1:]), device=device)
        cls = torch.zeros((len(good), N_CLASSES), device=device) if self.ensemble.has_cls(self.plan) else None
        if good.any():
            seg_good, cls_good = self.ensemble.forward(grey[good].to(device), self.plan, self.amp, timings)
            rows = good.to(device)
            seg[rows] = seg_good
            if cls is not None:
                cls[rows] = cls_good
        return seg, cls

    def _review(self, n_images: int, wall_s: float, timings: dict[str, float]) -> None:
        if self.budget is None:
            return
        self.budget.record(n_images, wall_s, timings, self.plan)
        seen = len(self.budget.decisions)
        self.plan = self.budget.review(self.plan)
        for decision in self.budget.decisions[seen:]:
            log.warning(decision.text())

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
    """
    settings = settings or PredictSettings()
    paths = [Path(p) for p in image_paths][: settings.limit]
    runner = _Runner(ensemble, paths, settings)
    with tqdm(total=len(paths), desc="probs", unit="img", disable=not settings.progress) as bar:
        for batch in runner.batches():
            seg = batch.seg.cpu().numpy()
            cls = None if batch.cls is None else batch.cls.cpu().numpy()
            for j, (i, status) in enumerate(zip(batch.index, batch.status, strict=True)):
                bad = status == BAD
                yield (
                    paths[i].name,
                    np.zeros_like(seg[j]) if bad else seg[j],
                    None if cls is None else (np.zeros_like(cls[j]) if bad else cls[j]),
                )
            bar.update(len(batch.index))


def threshold_on_device(seg: Tensor, cls: Tensor | None, rules: postprocess.Rules) -> tuple[Tensor, Tensor]:
    """Steps 1-2 of `postprocess` on the device: `seg (B, 4, H, W)` -> masks (B, 4, H, W) uint8, gates (B, 4).

    The same float32 comparisons as `postprocess.threshold`/`gate_scores`, so the results are identical.
    """
    thresholds = torch.from_numpy(rules.thresholds()).to(seg.device)[None, :, None, None]
    masks = seg > thresholds
    if rules.one_class_per_pixel:
        classes = torch.arange(seg.shape[1], device=seg.device)[None, :, None, None]
        masks &= seg.argmax(dim=1, keepdim=True) == classes
    gates = cls if cls is not None else seg.amax(dim=(2, 3))
    return masks.to(torch.uint8), gates.float()


def encode_image(masks: np.ndarray, rules: postprocess.Rules, gates: np.ndarray) -> list[str]:
    """The CPU half of one image: `masks (4, H, W) uint8`, `gates (4,)` -> 4 RLE strings (a pool job)."""
    return rle.encode_many(postprocess.filter_masks(masks, rules, gates))


def predict_submission(
    ensemble: Ensemble,
    rules: postprocess.Rules,
    images_dir: str | Path,
    sample_csv: str | Path,
    out_csv: str | Path,
    settings: PredictSettings | None = None,
) -> RunSummary:
    """Predict every image of the sample submission and stream the rows to `out_csv` in the sample's layout.

    Bad images are logged and written empty; the time budget (settings, else the ensemble's manifest) may
    drop views/models in the manifest's `drop_order`. Returns the run's summary (also logged). `out_csv` is
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
        warmup_batches=settings.warmup_batches,
    )
    runner = _Runner(ensemble, [Path(images_dir) / i for i in ids], settings, budget)
    writer = submission.SubmissionWriter(out_csv, sample, check_rle=False)
    try:
        _stream(runner, rules, writer, ids, settings)
    except BaseException:
        missing = writer.close()  # keeps every row written; the rest empty: a complete, valid file
        log.error("run stopped: %d of %d images written empty in %s", len(missing), len(ids), out_csv)
        raise
    writer.close()
    summary = RunSummary(
        len(ids),
        time.perf_counter() - start,
        runner.stage_s,
        runner.bad,
        budget.decisions,
        runner.plan,
        budget_s,
        str(out_csv),
    )
    log.info("%s", summary.text())
    return summary


def _stream(
    runner: _Runner,
    rules: postprocess.Rules,
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
        tqdm(total=len(ids), desc="predict", unit="img", disable=not settings.progress) as bar,
    ):
        try:
            for batch in runner.batches():
                _submit(runner, batch, rules, pool, pending, ids)
                _drain(runner, writer, pending, keep=2 * settings.batch_size)
                bar.update(len(batch.index))
            _drain(runner, writer, pending, keep=0)
        except BaseException:
            with contextlib.suppress(Exception):
                _drain(runner, writer, pending, keep=0)
            raise


def _submit(
    runner: _Runner,
    batch: Batch,
    rules: postprocess.Rules,
    pool: Executor,
    pending: deque[tuple[str, Future | None]],
    ids: Sequence[str],
) -> None:
    start = time.perf_counter()
    with torch.inference_mode():
        masks, gates = threshold_on_device(batch.seg, batch.cls, rules)
    masks, gates = masks.cpu().numpy(), gates.cpu().numpy()
    runner.stage_s["transfer"] += time.perf_counter() - start
    for j, (i, status) in enumerate(zip(batch.index, batch.status, strict=True)):
        job = None if status == BAD else pool.submit(encode_image, masks[j], rules, gates[j])
        pending.append((ids[i], job))


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
