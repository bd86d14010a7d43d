"""The inference engine's two products: a submission streamed to its CSV, and per-image probabilities.

`predict_submission`: the `runner`'s batches -> per-class threshold and gate scores on the device
(`postprocess.on_device`) -> small uint8 masks to the CPU -> component filtering + RLE in a worker pool,
overlapped with the accelerator -> rows streamed to the CSV in the sample's order. At the deadline every image
not reached is written empty. `iter_probs` runs the same batches and yields probabilities instead (for OOF
predictions and pseudo-labels).
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
from torch import Tensor

from steel_seg.competition import IMAGE_SHAPE, N_CLASSES
from steel_seg.engine.budget import Budget, BudgetDecision
from steel_seg.engine.ensemble import Ensemble, views_text
from steel_seg.engine.runner import BAD, BadImage, Batch, PredictSettings, Runner
from steel_seg.formats import submission
from steel_seg.models.manifest import DEFAULT_BUDGET_S
from steel_seg.postprocess.on_device import encode_image, threshold_on_device
from steel_seg.postprocess.rules import Rules
from steel_seg.progress import Progress

log = logging.getLogger(__name__)

EMPTY_ROW = ("",) * N_CLASSES


@dataclass(kw_only=True)
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
    fp32_retries: dict[str, int] = field(default_factory=dict)
    steady_images_per_s: float | None = None  # after the warm-up batches (the budget's measure)

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
        lines += [
            f"model {n}: NaN/inf under autocast in {k} batch(es), each redone in float32 (finite there)"
            for n, k in self.fp32_retries.items()
        ]
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
            "fp32_retries": self.fp32_retries,
            "steady_images_per_s": self.steady_images_per_s,
        }


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
    runner = Runner(ensemble, paths, settings)
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
    runner = Runner(ensemble, [Path(images_dir) / i for i in ids], settings, budget)
    writer = submission.SubmissionWriter(out_csv, sample, check_rle=False, final_format=settings.final_format)
    try:
        _stream(runner, rules, writer, ids, settings)
    except BaseException:
        missing = _not_reached(writer.close(), ids)  # every row written is kept, the rest empty: complete
        log.error("run stopped: %d of %d images written empty in %s", len(missing), len(ids), out_csv)
        _record(out_csv, sample, ids, "failure", missing)
        raise
    cut = _not_reached(writer.close(), ids)
    _record(out_csv, sample, ids, "deadline", cut)
    if len(ids) < len(sample.image_ids):
        log.info("--limit %d: the other %d images of the sample are written empty", len(ids),
                 len(sample.image_ids) - len(ids))  # fmt: skip
    if runner.cut:
        log.error("DEADLINE: %d of %d images were not reached and are written empty in %s (limit %gs)",
                  len(cut), len(ids), out_csv, budget_s)  # fmt: skip
    summary = RunSummary(
        images=len(ids),
        seconds=time.perf_counter() - start,
        stage_s=runner.stage_s,
        bad=runner.bad,
        decisions=budget.decisions,
        plan=runner.plan,
        budget_s=budget_s,
        out_csv=str(out_csv),
        cut=len(cut),
        nonfinite=runner.nonfinite,
        fp32_retries=runner.fp32_retries,
        steady_images_per_s=budget.rate(),
    )
    log.info("%s", summary.text())
    return summary


def _not_reached(missing: list[str], ids: list[str]) -> list[str]:
    """The run's images (`ids`, within `--limit`) that the writer had to fill empty."""
    wanted = set(ids)
    return [i for i in missing if i in wanted]


def _record(
    out_csv: str | Path, sample: submission.Sample, ids: list[str], why: str, missed: list[str]
) -> None:
    """Record beside the submission what it holds unpredicted: the images past `--limit`, and `missed` (the
    run's own images left empty) under `why`; a record that cannot be written is only logged."""
    reasons = {"limit": sample.image_ids[len(ids) :], why: missed}
    try:
        submission.write_record(out_csv, len(sample.image_ids), reasons)
    except OSError as exc:
        log.warning("%s: the record of what was predicted could not be written (%s)", out_csv, exc)


def _stream(
    runner: Runner,
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
    runner: Runner, writer: submission.SubmissionWriter, pending: deque[tuple[str, Future | None]], keep: int
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
