"""The training loop: one process, or one per device under `torchrun` (DDP).

`train(cfg, run_dir)` fits `cfg.model` on every fold but `cfg.data.fold`, validates each epoch on that fold
with the competition metric at default post-processing (pixel threshold 0.5 on full-size images, nothing
else), and writes the run directory of docs/CONTRACTS.md: `run.json`, `config.yaml`, `best/`, `last/`,
`checkpoint.pt`, `log.jsonl`, `metrics.csv`, `tb/`. `resume=True` continues from `checkpoint.pt` exactly:
every random draw is a function of (seed, epoch, position) or restored from the checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from steel_seg import metric, rle
from steel_seg.augment import build_pipeline
from steel_seg.checkpoint import Ema, load_state, save_state
from steel_seg.data import EpochSampler, SteelDataset, balanced_weights
from steel_seg.labels import Labels
from steel_seg.losses import ModelLoss
from steel_seg.models import ModelSpec, build_model, forward_logits, load_init_weights, save, set_seg_prior
from steel_seg.precision import device_autocast_dtype
from steel_seg.run_log import RunLog
from steel_seg.trainer_config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig

VAL_THRESHOLD = 0.5
CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------- processes and devices
@dataclass(frozen=True)
class Dist:
    """This process's place: rank among `world` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_dist(device: str) -> Dist:
    """A single process, or (under torchrun) join the process group: nccl on CUDA, gloo on CPU."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if not torch_dist.is_torchelastic_launched():
        return Dist(0, 1, torch.device(name))
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if name.startswith("cuda") else "gloo")
    rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    if name.startswith("cuda"):
        name = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(name)
    return Dist(rank, world, torch.device(name))


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch_dist.barrier()


# ---------------------------------------------------------------- folds
def read_folds(path: str | Path, labels: Labels) -> pd.Series:
    """`folds.csv` (`ImageId,fold`, maybe `cluster`) -> fold by ImageId; ValueError naming file and row."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"ImageId": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot read folds: {exc}") from exc
    if not {"ImageId", "fold"} <= set(table.columns):
        found = ",".join(map(str, table.columns))
        raise ValueError(f"{path}: columns must include ImageId,fold; got {found}")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    bad = np.flatnonzero(folds.isna().to_numpy() | table["ImageId"].duplicated().to_numpy())
    if bad.size:
        raise ValueError(f"{path}: row {bad[0] + 2}: bad or repeated entry {table.iloc[bad[0]].to_dict()}")
    unknown = sorted(set(table["ImageId"]) - set(labels.image_ids))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} image(s) not in the train labels, e.g. {unknown[:3]}")
    return pd.Series(folds.astype(int).to_numpy(), index=table["ImageId"].to_numpy(), name="fold")


def random_folds(image_ids: list[str], k: int, seed: int) -> pd.Series:
    """`k` random folds of equal size (quick use only: random folds leak across near-duplicate clusters)."""
    order = np.random.default_rng(seed).permutation(len(image_ids))
    folds = np.empty(len(image_ids), int)
    folds[order] = np.arange(len(image_ids)) % k
    return pd.Series(folds, index=image_ids, name="fold")


def resolve_folds(
    cfg: DataConfig, labels: Labels, run_dir: Path, seed: int, write: bool = True
) -> tuple[pd.Series, Path]:
    """The folds and the folds.csv they live in (`folds: random K` writes `run_dir/folds.csv`)."""
    if cfg.folds_csv:
        return read_folds(cfg.folds_csv, labels), Path(cfg.folds_csv)
    kind, _, k = (cfg.folds or "").partition(" ")
    if kind != "random" or not k.strip().isdigit() or int(k) < 2:
        raise ValueError(f"data: give folds_csv, or folds: 'random K' with K >= 2 (got folds={cfg.folds!r})")
    folds = random_folds(labels.image_ids, int(k), seed)
    path = run_dir / "folds.csv"
    if write:
        folds.rename_axis("ImageId").reset_index().to_csv(path, index=False)
    return folds, path


def split(folds: pd.Series, fold: int) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): every fold but `fold`, and `fold`."""
    val = sorted(folds.index[folds == fold])
    if not val:
        raise ValueError(f"data.fold {fold} is empty; the folds are {sorted(set(folds))}")
    return sorted(folds.index[folds != fold]), val


# ---------------------------------------------------------------- building blocks
def make_model(cfg: TrainConfig) -> nn.Module:
    model = build_model(cfg.model.spec, cfg.model.encoder_weights_path, cfg.model.encoder_weights)
    if cfg.model.seg_prior is not None:
        set_seg_prior(model, cfg.model.spec, cfg.model.seg_prior)
    if cfg.model.init_weights:
        load_init_weights(model, cfg.model.init_weights)
    return model


def make_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to `min_ratio` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    factor = functools.partial(
        lr_factor, total=total_steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_train_loader(
    cfg: TrainConfig, labels: Labels, ids: list[str], dist: Dist
) -> tuple[DataLoader, EpochSampler, int]:
    """Loader, its sampler, and the number of batches per epoch (per process)."""
    d, seed = cfg.data, cfg.train.seed
    dataset = SteelDataset(
        d.images_dir, ids, labels, cfg.model.spec, d.crop, d.defect_crop_p, build_pipeline(d.augment, seed)
    )
    weights = balanced_weights(labels.presence().loc[ids].to_numpy()) if d.balanced else None
    sampler = EpochSampler(len(ids), seed, weights=weights, num_replicas=dist.world, rank=dist.rank)
    drop_last = len(sampler) >= d.batch_size
    batches = len(sampler) // d.batch_size if drop_last else 1
    if d.batches_per_epoch:
        batches = min(batches, d.batches_per_epoch)
    loader = DataLoader(
        dataset, d.batch_size, sampler=sampler, num_workers=d.workers, drop_last=drop_last,
        pin_memory=dist.device.type == "cuda", generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return loader, sampler, batches


def make_val_loader(cfg: TrainConfig, labels: Labels, ids: list[str], dist: Dist) -> DataLoader:
    dataset = SteelDataset(cfg.data.images_dir, ids, labels, cfg.model.spec)
    return DataLoader(
        dataset, cfg.data.val_batch_size, shuffle=False, num_workers=cfg.data.workers,
        pin_memory=dist.device.type == "cuda",
    )  # fmt: skip


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _float(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


# ---------------------------------------------------------------- validation
def validate(
    model: nn.Module,
    spec: ModelSpec,
    loader: DataLoader,
    labels: Labels,
    loss_fn: ModelLoss,
    amp: torch.dtype | None = None,
) -> dict[str, Any]:
    """Validation loss and the competition metric at pixel threshold 0.5 (segmenters) / cls accuracy, under
    autocast `amp` (a dtype from `precision.autocast_dtype`; None = float32).

    Returns flat numbers (`val_loss`, `val_dice`, `dice_1..4`, `cls_accuracy`; None where not applicable)
    plus the metric's full breakdown under `score`.
    """
    device = next(model.parameters()).device
    model.eval()
    ids, rows, loss_sum, correct, n_cls = loader.dataset.image_ids, [], 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            mask, presence = batch["mask"].to(device), batch["presence"].to(device)
            with _autocast(device, amp):
                seg, cls = forward_logits(model, spec, x)
            seg, cls = _float(seg), _float(cls)
            loss_sum += loss_fn(seg, cls, mask, presence).item() * len(x)
            if seg is not None:
                masks = (seg.sigmoid() > VAL_THRESHOLD).to(torch.uint8).cpu().numpy()
                rows += _mask_rows([ids[i] for i in batch["index"].tolist()], masks)
            if cls is not None:
                correct += int(((cls.sigmoid() > VAL_THRESHOLD) == (presence > 0.5)).sum())
                n_cls += presence.numel()
    accuracy = correct / n_cls if n_cls else None
    out: dict[str, Any] = {"val_loss": loss_sum / len(ids), "cls_accuracy": accuracy}
    return out | (_dice(labels, ids, rows) if spec.has_seg else {"val_dice": None})


def _mask_rows(image_ids: list[str], masks: np.ndarray) -> list[tuple[str, int, str]]:
    """Tidy prediction rows of `masks (N, 4, H, W) uint8`: (ImageId, ClassId, RLE) for non-empty masks."""
    return [
        (image_id, k + 1, rle.encode(masks[i, k]))
        for i, image_id in enumerate(image_ids)
        for k in range(masks.shape[1])
        if masks[i, k].any()
    ]


def _dice(labels: Labels, ids: list[str], rows: list[tuple[str, int, str]]) -> dict[str, Any]:
    pred = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    truth = labels.table[labels.table["ImageId"].isin(set(ids))]
    score = metric.score(truth, pred, ids)
    per_class = {f"dice_{c}": float(score.per_class[c]) for c in (1, 2, 3, 4)}
    split_dice = {"dice_empty": score.empty_truth.mean_dice, "dice_nonempty": score.nonempty_truth.mean_dice}
    return {"val_dice": float(score.mean_dice), **per_class, **split_dice, "score": score.to_dict()}


# ---------------------------------------------------------------- the loop
class Trainer:
    """One training run's state and its steps; `run()` trains the remaining epochs."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: Dist):
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.spec = cfg.model.spec
        labels = Labels.from_csv(cfg.data.train_csv, cfg.data.images_dir)
        folds, self.folds_csv = resolve_folds(cfg.data, labels, run_dir, cfg.train.seed, dist.main)
        train_ids, val_ids = split(folds, cfg.data.fold)
        self.loader, self.sampler, self.batches = make_train_loader(cfg, labels, train_ids, dist)
        self.val_loader = make_val_loader(cfg, labels, val_ids, dist) if dist.main else None
        self.labels = labels
        torch.manual_seed(cfg.train.seed)
        self.model = make_model(cfg).to(dist.device)
        self.net = DistributedDataParallel(self.model) if dist.world > 1 else self.model
        self.ema = Ema(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        self.optimizer = make_optimizer(cfg.optim, self.model)
        self.steps_per_epoch = math.ceil(self.batches / cfg.train.accumulate)
        total_steps = cfg.schedule.epochs * self.steps_per_epoch
        self.scheduler = make_scheduler(cfg.schedule, self.optimizer, total_steps)
        self.amp = device_autocast_dtype(dist.device, cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.loss_fn = ModelLoss(cfg.loss)
        self.epoch, self.batch, self.step, self.loss_sum, self.loss_count = 0, 0, 0, 0.0, 0
        self.best = -math.inf

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "best": self.best,
            "rng": self._gather_rng(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
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
        mine = {"cpu": torch.get_rng_state(), "cuda": cuda}
        if self.dist.world == 1:
            return [mine]
        every: list[Any] = [None] * self.dist.world
        torch_dist.all_gather_object(every, mine)
        return every

    def save_checkpoint(self) -> None:
        state = self.state_dict()
        if self.dist.main:
            save_state(state, self.run_dir / CHECKPOINT)

    @property
    def eval_model(self) -> nn.Module:
        """What gets validated and saved: the EMA weights when enabled."""
        return self.ema.module if self.ema else self.model

    # -- steps
    def _micro_step(self, batch: dict[str, Tensor], sync: bool) -> None:
        device, cfg = self.dist.device, self.cfg.train
        x = batch["image"].to(device, non_blocking=True)
        mask, presence = batch["mask"].to(device), batch["presence"].to(device)
        no_sync = self.net.no_sync if isinstance(self.net, DistributedDataParallel) and not sync else None
        with no_sync() if no_sync else contextlib.nullcontext():
            with _autocast(device, self.amp):
                seg, cls = forward_logits(self.net, self.spec, x)
            loss = self.loss_fn(_float(seg), _float(cls), mask, presence)
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
        if every and self.step % every == 0 and self.batch < self.batches:
            self.save_checkpoint()

    def train_epoch(self) -> float:
        """Train the rest of the current epoch (from `self.batch`); returns its mean training loss."""
        if self.batch == 0:
            seed = np.random.SeedSequence([self.cfg.train.seed, self.epoch, self.dist.rank]).generate_state(1)
            torch.manual_seed(int(seed[0]))
        self.sampler.set_epoch(self.epoch, start=self.batch * self.cfg.data.batch_size)
        self.model.train()
        batches = itertools.islice(self.loader, self.batches - self.batch)
        bar = tqdm(batches, total=self.batches, initial=self.batch, desc=f"epoch {self.epoch + 1}",
                   disable=not (self.dist.main and self.cfg.train.progress), leave=False)  # fmt: skip
        for batch in bar:
            self.batch += 1
            boundary = self.batch % self.cfg.train.accumulate == 0 or self.batch == self.batches
            self._micro_step(batch, sync=boundary)
            if boundary:
                self._optimizer_step()
            bar.set_postfix(loss=f"{self.loss_sum / self.loss_count:.4f}")
        mean = self.loss_sum / max(1, self.loss_count)
        self.epoch, self.batch, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
        return mean

    def end_epoch(self, train_loss: float, started: float, log: RunLog | None) -> dict[str, Any] | None:
        """Validate, write last/ and best/ and the logs (main process), then the checkpoint (all)."""
        record = None
        if self.dist.main:
            result = validate(self.eval_model, self.spec, self.val_loader, self.labels, self.loss_fn,
                              self.amp)  # fmt: skip
            value = result["val_dice"] if self.spec.has_seg else -result["val_loss"]
            is_best = value > self.best
            self.best = max(self.best, value)
            save(self.eval_model, self.spec, self.run_dir / "last")
            if is_best:
                save(self.eval_model, self.spec, self.run_dir / "best")
            record = {"epoch": self.epoch, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
                      "train_loss": train_loss, **result, "seconds": round(time.time() - started, 2),
                      "is_best": is_best}  # fmt: skip
            log.write(record)
        self.save_checkpoint()
        _barrier(self.dist)
        return record


@dataclass(frozen=True)
class TrainResult:
    """What a run did; `records` (the epoch logs) and `best` are filled on the main process only."""

    run_dir: Path
    epochs: int
    best: float | None
    records: list[dict[str, Any]]
    main: bool = True


def write_run_json(cfg: TrainConfig, run_dir: Path, folds_csv: Path) -> None:
    """`run.json` for `steel-seg oof`: where the held-out fold, the labels, the images and `best/` are."""
    info = {
        "name": run_dir.name,
        "fold": cfg.data.fold,
        "folds_csv": str(folds_csv.resolve()),
        "train_csv": str(Path(cfg.data.train_csv).resolve()),
        "images_dir": str(Path(cfg.data.images_dir).resolve()),
        "model_dir": "best",
        "spec": cfg.model.spec.to_dict(),
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")


def _out_of_time(cfg: TrainConfig, started: float, next_epoch_s: float) -> bool:
    limit = cfg.train.time_limit_min
    return limit is not None and time.time() - started + next_epoch_s > 60 * limit


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train `cfg` into `run_dir` (or continue it from its checkpoint with `resume`); see the module doc."""
    run_dir = Path(run_dir)
    dist = init_dist(cfg.train.device)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    _barrier(dist)
    trainer = Trainer(cfg, run_dir, dist)
    if resume:
        trainer.load_state_dict(load_state(run_dir / CHECKPOINT))
    log = None
    if dist.main:
        cfg.save_yaml(run_dir / "config.yaml")
        write_run_json(cfg, run_dir, trainer.folds_csv)
        log = RunLog(run_dir, keep_epochs=trainer.epoch)
    records, run_started, last_epoch_s = [], time.time(), 0.0
    while trainer.epoch < cfg.schedule.epochs and not _out_of_time(cfg, run_started, last_epoch_s):
        started = time.time()
        train_loss = trainer.train_epoch()
        records.append(trainer.end_epoch(train_loss, started, log))
        last_epoch_s = time.time() - started
    if log:
        log.close()
    best = trainer.best if math.isfinite(trainer.best) else None
    return TrainResult(run_dir, trainer.epoch, best, [r for r in records if r], dist.main)


def summary(result: TrainResult) -> str:
    """A short line for the end of a run."""
    last = result.records[-1] if result.records else {}
    return (
        f"trained {result.epochs} epoch(s) -> {result.run_dir}; best {result.best}; "
        f"last val_dice {last.get('val_dice')}, val_loss {last.get('val_loss')}"
    )
