"""The training loop: one process, or one per device under `torchrun` (DDP).

`train(cfg, run_dir)` fits `cfg.model` on every fold but `cfg.data.fold` (plus the images of the config's
extra sources, `sources`, which never reach validation), evaluates each epoch on that fold
(`epoch_eval`: the competition metric at default post-processing on full-size images), and writes the run
directory (`runs`): `run.json`, `config.yaml`, `best/`, `last/`, `checkpoint.pt`, `log.jsonl`, `metrics.csv`,
`tb/`. `resume=True` continues from `checkpoint.pt` exactly: every random draw is a function of
(seed, epoch, position) or restored from the checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from steel_seg.formats.runs import InputFile, RunDir, RunInfo
from steel_seg.models.factory import forward_logits, save
from steel_seg.models.precision import autocast, device_dtype
from steel_seg.progress import Progress
from steel_seg.train.checkpoint import Ema, load_state, save_state
from steel_seg.train.config import RESUMABLE, TrainConfig
from steel_seg.train.data import memory_format, prepare, raise_image_errors, to_device
from steel_seg.train.distributed import Dist, barrier, gather, init_dist
from steel_seg.train.epoch_eval import SELECT_GRID, evaluate
from steel_seg.train.inputs import check_resume, run_inputs
from steel_seg.train.losses import ModelLoss, as_float
from steel_seg.train.optim import make_optimizer, make_scheduler
from steel_seg.train.run_log import RunLog
from steel_seg.train.swa import WeightAverage

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the loop
class Trainer:
    """One training run's state and its steps; `run()` trains the remaining epochs."""

    def __init__(self, cfg: TrainConfig, run: RunDir, dist: Dist):
        self.cfg, self.run, self.dist = cfg, run, dist
        self.spec = cfg.model.spec
        self.data = prepare(cfg.data, run, seed=cfg.train.seed, rank=dist.rank, world=dist.world,
                            device_type=dist.device.type, progress=cfg.train.progress)  # fmt: skip
        torch.manual_seed(cfg.train.seed)
        self.model = cfg.model.build(cfg.data.fold).to(dist.device, memory_format=memory_format(dist.device))
        self.net = DistributedDataParallel(self.model) if dist.world > 1 else self.model
        self.ema = Ema(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        n_average, epochs = cfg.train.average_epochs, cfg.schedule.epochs
        self.average = WeightAverage(self.eval_model, n_average, epochs) if n_average else None
        self.optimizer = make_optimizer(cfg.optim, self.model)
        self.steps_per_epoch = math.ceil(self.data.batches / cfg.train.accumulate)
        total_steps = cfg.schedule.epochs * self.steps_per_epoch
        self.scheduler = make_scheduler(cfg.schedule, self.optimizer, total_steps)
        self.amp = device_dtype(dist.device, cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.loss_fn = ModelLoss(cfg.loss).to(dist.device)
        self.epoch, self.batch, self.step, self.loss_sum, self.loss_count = 0, 0, 0, 0.0, 0
        self.best = -math.inf

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "average": self.average.state_dict() if self.average else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "best": self.best,
            "rng": self._gather_rng(),
        }  # fmt: skip

    def resume(self, state: dict[str, Any]) -> None:
        """`load_state_dict` of the run's checkpoint; ValueError naming it when it does not fit this model."""
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{self.run.checkpoint}: does not fit this run's model or optimiser: {exc}"
            ) from None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        if self.average:
            self.average.load_state_dict(state["average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.loss_sum, self.loss_count, self.best = state["loss_sum"], state["loss_count"], state["best"]
        rng = state["rng"]
        if len(rng) == self.dist.world:
            torch.set_rng_state(rng[self.dist.rank]["cpu"])
            if rng[self.dist.rank]["cuda"] is not None and self.dist.device.type == "cuda":
                torch.cuda.set_rng_state(rng[self.dist.rank]["cuda"], self.dist.device)

    def _gather_rng(self) -> list[dict[str, Tensor | None]]:
        """Every process's torch RNG state (dropout draws), index = rank."""
        cuda = torch.cuda.get_rng_state(self.dist.device) if self.dist.device.type == "cuda" else None
        return gather(self.dist, {"cpu": torch.get_rng_state(), "cuda": cuda})

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        if self.dist.main:
            save_state(state, self.run.checkpoint)

    @property
    def eval_model(self) -> nn.Module:
        """What gets validated and saved: the EMA weights when enabled."""
        return self.ema.module if self.ema else self.model

    # -- steps
    def _micro_step(self, batch: dict[str, Tensor], sync: bool) -> None:
        device, cfg = self.dist.device, self.cfg.train
        x, mask, presence = to_device(batch, self.spec, device)
        no_sync = self.net.no_sync if isinstance(self.net, DistributedDataParallel) and not sync else None
        with no_sync() if no_sync else contextlib.nullcontext():
            with autocast(device, self.amp):
                seg, cls = forward_logits(self.net, self.spec, x)
            loss = self.loss_fn(as_float(seg), as_float(cls), mask, presence)
            self.scaler.scale(loss / cfg.accumulate).backward()
        self.loss_sum += loss.item()
        self.loss_count += 1

    def _optimizer_step(self) -> None:
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.ema:
            self.ema.update(self.model)
        every = self.cfg.train.checkpoint_every
        if every and self.step % every == 0 and self.batch < self.data.batches:
            self.save_checkpoint()

    def train_batch(self, batch: dict[str, Tensor]) -> None:
        """One loader batch: forward, backward, and the optimiser step at each `accumulate` boundary."""
        raise_image_errors(batch)
        self.batch += 1
        boundary = self.batch % self.cfg.train.accumulate == 0 or self.batch == self.data.batches
        self._micro_step(batch, sync=boundary)
        if boundary:
            self._optimizer_step()

    def train_epoch(self) -> float:
        """Train the rest of the current epoch (from `self.batch`); returns its mean training loss."""
        if self.batch == 0:
            seed = np.random.SeedSequence([self.cfg.train.seed, self.epoch, self.dist.rank]).generate_state(1)
            torch.manual_seed(int(seed[0]))
        self.data.sampler.set_epoch(self.epoch, start=self.batch * self.cfg.data.batch_size)
        self.model.train()
        batches = itertools.islice(self.data.loader, self.data.batches - self.batch)
        bar = Progress(self.data.batches, f"epoch {self.epoch + 1}", unit="batches", initial=self.batch,
                       bar=self.cfg.train.progress, show=self.dist.main)  # fmt: skip
        with bar:
            for batch in batches:
                self.train_batch(batch)
                bar.update(loss=f"{self.loss_sum / self.loss_count:.4f}")
        mean = self.loss_sum / max(1, self.loss_count)
        self.epoch, self.batch, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
        return mean

    def end_epoch(self, train_loss: float, started: float, log: RunLog | None) -> dict[str, Any] | None:
        """Validate, write last/ and best/ (what `train.select` chooses) and the logs (main process), then the
        checkpoint (all). At the schedule's last epoch `select: average` writes the average to best/."""
        averaged = self.average is not None and self.average.update(self.eval_model, self.epoch)
        record = None
        if self.dist.main:
            result = self._evaluate(self.eval_model)
            value = self._selection_value(result)
            chosen = self.cfg.train.select in ("last", "average")
            is_best = chosen or value > self.best
            self.best = value if chosen else max(self.best, value)
            save(self.eval_model, self.spec, self.run.last)
            if is_best:
                save(self.eval_model, self.spec, self.run.best)
            lrs = self.scheduler.get_last_lr()
            record = {"epoch": self.epoch, "step": self.step, "lr": lrs[0], "train_loss": train_loss,
                      **result, "seconds": round(time.time() - started, 2), "is_best": is_best}  # fmt: skip
            if len(lrs) > 1:
                record["encoder_lr"] = lrs[1]
            if averaged and self.epoch == self.cfg.schedule.epochs:
                record["average"] = self._finish_average()
            log.write(record)
        self.save_checkpoint()
        barrier(self.dist)
        return record

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        tune = SELECT_GRID if self.cfg.train.select == "tuned" else None
        data = self.data
        return evaluate(model, self.spec, data.val_loader, data.labels, self.loss_fn, self.amp, tune)

    def _selection_value(self, result: dict[str, Any]) -> float:
        """The validation number `train.select` ranks epochs by (and reports as the run's best)."""
        if self.cfg.train.select == "tuned":
            return result["val_dice_tuned"]
        return result["val_dice"] if self.spec.has_seg else -result["val_loss"]

    def _finish_average(self) -> dict[str, Any]:
        """BatchNorm statistics of the average recomputed on one epoch of training batches (a new epoch's
        draw), then validated and written to best/; its validation numbers for the record."""
        self.data.sampler.set_epoch(self.epoch)
        batches = itertools.islice(self.data.loader, self.data.batches)
        model = self.average.finish(self._inputs(batches))
        result = self._evaluate(model)
        save(model, self.spec, self.run.best)
        self.best = self._selection_value(result)
        return {"epochs": self.average.count, **{k: v for k, v in result.items() if k != "score"}}

    def _inputs(self, batches: Iterable[dict]) -> Iterator[Tensor]:
        for batch in batches:
            raise_image_errors(batch)
            yield to_device(batch, self.spec, self.dist.device)[0]


@dataclass(frozen=True)
class TrainResult:
    """What a run did; `records` (the epoch logs) and `best` are filled on the main process only."""

    run_dir: Path
    epochs: int
    best: float | None
    records: list[dict[str, Any]]
    main: bool = True
    processes: int = 1


def run_info(
    cfg: TrainConfig,
    run: RunDir,
    folds_csv: Path,
    sources: list[dict[str, Any]],
    inputs: dict[str, InputFile] | None = None,
) -> RunInfo:
    """What `steel-seg oof` needs to know of this run (absolute paths, so it can run from anywhere), the
    fingerprints of its input files (`inputs.run_inputs`), and for the record the spec and every labelled
    source with the images it gave (`sources.Sources.record`)."""
    d = cfg.data
    paths = [Path(p).resolve() for p in (folds_csv, d.train_csv, d.images_dir)]
    extra = {"spec": cfg.model.spec.to_dict(), "sources": sources}
    return RunInfo(run.path, run.path.name, d.fold, *paths, model_dir=run.best.name, inputs=inputs or {},
                   extra=extra)  # fmt: skip


def _out_of_time(cfg: TrainConfig, started: float, next_epoch_s: float) -> bool:
    limit = cfg.train.time_limit_min
    return limit is not None and time.time() - started + next_epoch_s > 60 * limit


def prepare_run_dir(
    cfg: TrainConfig, run: RunDir, resume: bool, overwrite: bool, allow_changed_inputs: bool = False
) -> bool:
    """A run dir is never replaced by accident: a fresh run refuses a dir holding a run unless `overwrite`
    (which removes exactly the run's own files, each reported); `resume` needs the run's checkpoint, a
    config that matches the run's config.yaml except in RESUMABLE keys (ValueError naming the others) and
    the input files the run recorded, unchanged (`inputs.check_resume`). Returns whether the run dir was
    made now (then a run that fails before it starts removes it again)."""
    if resume:
        if not run.checkpoint.is_file():
            raise ValueError(f"{run.checkpoint}: no checkpoint to resume from")
        if run.config.is_file():
            changed = TrainConfig.from_yaml(run.config).differences(cfg, ignore=RESUMABLE)
            if changed:
                raise ValueError(f"{run.config}: --resume with a config that no longer matches the run's: "
                                 f"{'; '.join(changed)} (start a new run dir, or --overwrite)")  # fmt: skip
        check_resume(run, allow_changed_inputs)
        return False
    for path in run.refuse_or_clear(overwrite):
        log.warning("--overwrite: removed %s", path)
    made = not run.path.exists()
    run.path.mkdir(parents=True, exist_ok=True)
    return made


@contextlib.contextmanager
def removed_on_failure(path: Path | None):
    """Remove `path` (a run dir made by this run, so holding nothing else) when the block raises."""
    try:
        yield
    except BaseException:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed_inputs: bool = False,
) -> TrainResult:
    """Train `cfg` into `run_dir` (or continue it from its checkpoint with `resume`); see the module doc.
    `allow_changed_inputs`: resume even when an input file the run recorded has changed."""
    run = RunDir(Path(run_dir))
    dist = init_dist(cfg.train.device)
    made = dist.main and prepare_run_dir(cfg, run, resume, overwrite, allow_changed_inputs)
    barrier(dist)
    with removed_on_failure(run.path if made else None):
        trainer = Trainer(cfg, run, dist)
    if resume:
        trainer.resume(load_state(run.checkpoint))
    log = None
    if dist.main:
        cfg.save_yaml(run.config)
        inputs = run_inputs(cfg, trainer.data.folds_csv)
        run_info(cfg, run, trainer.data.folds_csv, trainer.data.sources, inputs).save()
        log = RunLog(run, keep_epochs=trainer.epoch)
    records, run_started, last_epoch_s = [], time.time(), 0.0
    while trainer.epoch < cfg.schedule.epochs and not _out_of_time(cfg, run_started, last_epoch_s):
        started = time.time()
        train_loss = trainer.train_epoch()
        records.append(trainer.end_epoch(train_loss, started, log))
        last_epoch_s = time.time() - started
    if log:
        log.close()
    best = trainer.best if math.isfinite(trainer.best) else None
    return TrainResult(
        run.path, trainer.epoch, best, [r for r in records if r], main=dist.main, processes=dist.world
    )


def summary(result: TrainResult) -> str:
    """A short line for the end of a run (a resumed run that had every epoch already says so)."""
    if not result.records:
        return f"{result.run_dir}: all {result.epochs} epoch(s) were trained already; nothing to do"
    last = result.records[-1]
    where = f" in {result.processes} processes (DDP)" if result.processes > 1 else ""
    best = "none" if result.best is None else f"{result.best:.4f}"
    return (
        f"trained {result.epochs} epoch(s){where} -> {result.run_dir}; best {best}; "
        f"last val_dice {last.get('val_dice')}, val_loss {last.get('val_loss')}"
    )
