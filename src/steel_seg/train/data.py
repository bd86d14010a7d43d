"""Training data: a crop-and-augment Dataset, a resumable sampler, the training and validation loaders,
`prepare` (everything a run reads, from its `data` config, in one call) and `to_device` (batch -> input).

The loader workers ship what they decode: the grey crop as uint8 and the class masks as one uint8 bit mask
(`augment.pack_masks`), 1/14 of the float32 3-channel image and 4 float masks they shipped before. The
device normalises and expands the channels (`models.factory.to_tensor`, the one normalisation the kernel uses
too) and unpacks the masks (`to_device`), so the hand-off to the main process stays small.

Every random choice of a training sample (its crop, its augmentation) is drawn from a per-sample seed that the
sampler derives from `(seed, epoch, position in the epoch)`: an epoch is the same whatever the number of
loader workers, and a resumed run replays it exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from steel_seg.competition import IMAGE_SHAPE, N_CLASSES
from steel_seg.formats.folds import fold_ids, resolve_folds
from steel_seg.formats.images import ImageError, read_grey
from steel_seg.models.factory import ModelSpec, to_tensor
from steel_seg.train.augment import augment_packed, build_pipeline, pack_masks
from steel_seg.train.sources import load_sources, usable_sources

if TYPE_CHECKING:
    from steel_seg.formats.labels import Labels
    from steel_seg.formats.runs import RunDir
    from steel_seg.train.config import DataConfig

log = logging.getLogger(__name__)


def choose_crop(
    masks: np.ndarray, crop: tuple[int, int], defect_p: float, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left `(y0, x0)` of a `crop (h, w)` window in `masks (C, H, W)`.

    With probability `defect_p` (and when the image has a defect) the window contains a random defect pixel;
    otherwise it is uniform.
    """
    (h, w), (height, width) = crop, masks.shape[1:]
    if h > height or w > width:
        raise ValueError(f"crop {h}x{w} is larger than the image {height}x{width}")
    if defect_p > 0 and rng.random() < defect_p:
        ys, xs = np.nonzero(masks.any(axis=0))
        if ys.size:
            k = rng.integers(ys.size)
            y0 = rng.integers(max(0, ys[k] - h + 1), min(ys[k], height - h) + 1)
            x0 = rng.integers(max(0, xs[k] - w + 1), min(xs[k], width - w) + 1)
            return int(y0), int(x0)
    return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))


class SteelDataset(Dataset):
    """Images with their class masks, optionally cropped and augmented, as the loader workers ship them.

    An item is a dict: `image (h, w) uint8` (the grey crop; `to_device` makes the model input), `mask (h, w)
    uint8` (the class masks packed as bits, bit k = ClassId k+1), `presence (4,) float32` (class present in
    the item's mask: the classifier target), `index` (int) and `error` ("" or what made the image unusable:
    the item is then blank, and `raise_image_errors` stops the run where the batch arrives, so a DataLoader
    worker never turns the message into a worker traceback). A key is an index, or `(index, sample_seed)` as
    `EpochSampler` yields for random crops and augmentation. Images are read from `images_dir`, or from their
    own folder in `folders` (ImageId -> folder: the extra sources' images); each path is resolved once, here.
    """

    def __init__(
        self,
        images_dir: str | Path,
        image_ids: Sequence[str],
        labels: Labels,
        crop: tuple[int, int] | None = None,
        defect_crop_p: float = 0.0,
        pipeline: A.Compose | None = None,
        folders: Mapping[str, Path] | None = None,
    ):
        self.image_ids = list(image_ids)
        folders, default = folders or {}, Path(images_dir)
        self.paths = [folders.get(image_id, default) / image_id for image_id in self.image_ids]
        self.labels = labels
        self.crop = tuple(crop) if crop else None
        self.defect_crop_p = defect_crop_p
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = key if isinstance(key, tuple) else (key, 0)
        grey, masks, error = self._read_or_blank(index)
        rng = np.random.default_rng(sample_seed)
        if self.crop:
            y0, x0 = choose_crop(masks, self.crop, self.defect_crop_p, rng)
            h, w = self.crop
            grey, masks = grey[y0 : y0 + h, x0 : x0 + w], masks[:, y0 : y0 + h, x0 : x0 + w]
        packed = pack_masks(masks)
        if self.pipeline is not None:
            self.pipeline.set_random_seed(int(rng.integers(2**31)))
            grey, packed = augment_packed(self.pipeline, np.ascontiguousarray(grey), packed)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(grey)),
            "mask": torch.from_numpy(np.ascontiguousarray(packed)),
            "presence": torch.from_numpy(packed_presence(packed, len(masks))),
            "index": index,
            "error": error,
        }

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Full-size grey `(H, W) uint8` and masks `(4, H, W) uint8` of image `index`."""
        return read_grey(self.paths[index]), self.labels.masks(self.image_ids[index])

    def _read_or_blank(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """`read`, plus "" — or a blank image, no masks and the reason when the image is unusable."""
        try:
            return (*self.read(index), "")
        except ImageError as exc:
            return np.zeros(IMAGE_SHAPE, np.uint8), np.zeros((N_CLASSES, *IMAGE_SHAPE), np.uint8), str(exc)


def packed_presence(packed: np.ndarray, classes: int) -> np.ndarray:
    """`(classes,) float32` 0/1: whether bit k is set anywhere in the bit mask `packed (h, w) uint8`."""
    bits = int(np.bitwise_or.reduce(packed, axis=None)) if packed.size else 0
    return ((bits >> np.arange(classes)) & 1).astype(np.float32)


def unpack_bits(packed: Tensor, classes: int) -> Tensor:
    """Bit masks `(N, h, w) uint8` -> float32 0/1 masks `(N, classes, h, w)`, on the input's device."""
    bits = torch.arange(classes, dtype=torch.uint8, device=packed.device).view(1, -1, 1, 1)
    return ((packed.unsqueeze(1) >> bits) & 1).float()


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout training uses on `device`: channels_last on CUDA (cuDNN's NHWC convolutions, AMP's tensor
    cores); the default on the CPU, where the demo's mobilenet trained several times slower in channels_last
    and a CPU run keeps exactly the numbers it had before the layout existed."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_device(batch: dict, spec: ModelSpec, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """A loader batch on `device`: model input `(N, C, h, w) float32` (`to_tensor`, in `memory_format`),
    masks `(N, classes, h, w) float32` 0/1 and presence `(N, classes) float32`."""
    image = batch["image"].to(device, non_blocking=True)
    x = to_tensor(image, spec).contiguous(memory_format=memory_format(device))
    mask = unpack_bits(batch["mask"].to(device, non_blocking=True), spec.classes)
    return x, mask, batch["presence"].to(device, non_blocking=True)


def raise_image_errors(batch: dict) -> None:
    """ImageError-like ValueError for the first unusable image of a batch (see `SteelDataset`)."""
    errors = [e for e in batch["error"] if e]
    if errors:
        raise ValueError(f"{errors[0]} ({len(errors)} unusable image(s) in this batch; the pre-flight check "
                         "reads headers only, this one failed to decode)")  # fmt: skip


def balanced_weights(presence: np.ndarray) -> np.ndarray:
    """Sampling weights that balance the classes: `presence (N, 4) bool` -> `(N,) float64`, summing to 1.

    "No defect" counts as a fifth class; an image weighs as its rarest class, so each class is drawn about
    equally often.
    """
    groups = np.concatenate([presence, ~presence.any(axis=1, keepdims=True)], axis=1)
    counts = groups.sum(axis=0)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    weights = (groups * inverse).max(axis=1)
    return weights / weights.sum()


def draw_weights(presence: np.ndarray, source_weights: np.ndarray, balanced: bool) -> np.ndarray | None:
    """Draw probabilities of the training images, `(N,) float64` summing to 1, or None for a plain shuffle.

    Each image's share is its `balanced_weights` share (with `balanced`; else an equal share) times its
    source's weight (`source_weights (N,)`: 1 for the primary set), renormalised: an extra image of weight w
    is drawn w times as often as a primary image of the same class group. Without `balanced` and with every
    weight 1 there is nothing to weigh: the epoch is a permutation, as without extra sources.
    `presence (N, 4) bool` is read only with `balanced`.
    """
    if not balanced and np.all(source_weights == 1.0):
        return None
    shares = balanced_weights(presence) if balanced else np.ones(len(source_weights))
    weights = shares * source_weights
    return weights / weights.sum()


@dataclass(frozen=True)
class BatchShare:
    """Every batch of `batch_size` holds exactly `per_batch` items where `extra (N,) bool` is True (the extra
    sources' images: khornlund fixed 12% pseudo-labelled images per batch), the rest from the others."""

    extra: np.ndarray
    per_batch: int
    batch_size: int

    def __post_init__(self) -> None:
        if not 0 < self.per_batch < self.batch_size or not self.extra.any() or self.extra.all():
            raise ValueError(
                f"a fixed share needs 0 < per batch ({self.per_batch}) < batch size ({self.batch_size}) and "
                f"both kinds of image ({int(self.extra.sum())} of {self.extra.size} are extra)"
            )


class EpochSampler(Sampler):
    """Yields `(index, sample_seed)` for one epoch of one rank; deterministic in `(seed, epoch)`.

    Shuffles (or draws with replacement by `weights`, the class-balanced option), pads the epoch to a
    multiple of `num_replicas` and strides it by `rank`, as `DistributedSampler` does. With `share`, every
    batch of every rank holds its fixed number of extra items at random places (`_shared_order`). `start`
    skips the first positions of this rank's share (a resumed epoch).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        weights: np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        share: BatchShare | None = None,
    ):
        self.n, self.seed, self.shuffle, self.weights, self.share = n, seed, shuffle, weights, share
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _per_rank(self) -> int:
        if self.share is None:
            return -(-self.n // self.num_replicas)
        s = self.share
        kept = (s.batch_size - s.per_batch) * self.num_replicas
        return -(-int((~s.extra).sum()) // kept) * s.batch_size

    def _draw(self, rng: np.random.Generator, items: np.ndarray, size: int, replace: bool) -> np.ndarray:
        """`size` of `items`: a permutation (resized) unless weighted or `replace`; weights renormalised."""
        if self.weights is None and not replace:
            return np.resize(rng.permutation(items) if self.shuffle else items, size)
        p = self.weights
        if p is not None and items.size < self.n:
            p = p[items] / p[items].sum()
        return rng.choice(items, size=size, replace=True, p=p)

    def _shared_order(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch as (batch, rank, place) with `per_batch` extra items in each batch, at shuffled places,
        laid out so that striding by rank gives each rank its own batches."""
        s, world = self.share, self.num_replicas
        batches = self._per_rank() // s.batch_size
        kept = s.batch_size - s.per_batch
        primary = self._draw(rng, np.flatnonzero(~s.extra), batches * world * kept, replace=False)
        extra = self._draw(rng, np.flatnonzero(s.extra), batches * world * s.per_batch, replace=True)
        grid = np.concatenate([primary.reshape(batches, world, kept),
                               extra.reshape(batches, world, s.per_batch)], axis=2)  # fmt: skip
        grid = rng.permuted(grid, axis=2)
        return grid.transpose(0, 2, 1).reshape(-1)

    def _epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        seq = np.random.SeedSequence([self.seed, self.epoch])
        rng = np.random.default_rng(seq)
        total = self._per_rank() * self.num_replicas
        if self.share is not None:
            order = self._shared_order(rng)
        else:
            order = np.resize(self._draw(rng, np.arange(self.n), self.n, self.weights is not None), total)
        seeds = seq.spawn(1)[0].generate_state(total)
        return order, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._epoch_order()
        mine = slice(self.rank, None, self.num_replicas)
        pairs = list(zip(order[mine].tolist(), seeds[mine].tolist(), strict=True))
        return iter(pairs[self.start :])

    def __len__(self) -> int:
        return self._per_rank() - self.start


def train_loader(
    cfg: DataConfig,
    labels: Labels,
    ids: list[str],
    *,
    seed: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    folders: Mapping[str, Path] | None = None,
    source_weights: np.ndarray | None = None,
    is_extra: np.ndarray | None = None,
) -> tuple[DataLoader, EpochSampler, int]:
    """The training loader of `ids` for process `rank` of `world`, its sampler, and its batches per epoch.

    `folders`, `source_weights` and `is_extra` (`(N,)`, one per id) come from `sources.Sources` when the
    config has extra sources: where their images are, how often each is drawn (`draw_weights`), and which
    ones `data.extra_share` puts in every batch at a fixed share (`BatchShare`).
    """
    pipeline = build_pipeline(cfg.augment, seed)
    dataset = SteelDataset(
        cfg.images_dir, ids, labels, cfg.crop, cfg.defect_crop_p, pipeline, folders=folders
    )
    presence = labels.presence().loc[ids].to_numpy() if cfg.balanced else None
    source_weights = np.ones(len(ids)) if source_weights is None else source_weights
    weights = draw_weights(presence, source_weights, cfg.balanced)
    share = None
    if cfg.extra_share is not None:
        extra = np.zeros(len(ids), bool) if is_extra is None else is_extra
        share = BatchShare(extra, round(cfg.extra_share * cfg.batch_size), cfg.batch_size)
    sampler = EpochSampler(len(ids), seed, weights=weights, num_replicas=world, rank=rank, share=share)
    drop_last = len(sampler) >= cfg.batch_size
    batches = len(sampler) // cfg.batch_size if drop_last else 1
    if cfg.batches_per_epoch:
        batches = min(batches, cfg.batches_per_epoch)
    loader = DataLoader(
        dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return loader, sampler, batches


def val_loader(cfg: DataConfig, labels: Labels, ids: list[str], pin_memory: bool = False) -> DataLoader:
    """Full-size validation images of `ids`, in order, unaugmented."""
    dataset = SteelDataset(cfg.images_dir, ids, labels)
    return DataLoader(
        dataset, cfg.val_batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=pin_memory,
        persistent_workers=cfg.workers > 0,
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TrainData:
    """What a run reads: the labels of every source, its folds.csv, the training loader (with its sampler
    and batches per epoch), the validation loader (main process only) and run.json's record of the sources."""

    labels: Labels
    folds_csv: Path
    loader: DataLoader
    sampler: EpochSampler
    batches: int
    val_loader: DataLoader | None
    sources: list[dict[str, Any]]


def prepare(
    cfg: DataConfig, run: RunDir, *, seed: int, rank: int = 0, world: int = 1,
    device_type: str = "cpu", progress: bool = True,
) -> TrainData:  # fmt: skip
    """The data of one training process (rank `rank` of `world`; rank 0 is the main one, which writes a
    random folds.csv, validates, and shows the pre-flight's progress).

    The primary set and the extra sources (`sources`), the folds (`folds.resolve_folds`), the header
    pre-flight of every image, the fold's train and validation ids (extra images: the training side only) and
    both loaders. ValueError naming the file: a bad CSV, folds.csv or image (see `sources`).
    """
    main, pin = rank == 0, device_type == "cuda"
    sources = load_sources(cfg)
    folds, folds_csv = resolve_folds(cfg.folds_csv, cfg.folds, sources.primary.labels.image_ids, seed,
                                     run.folds, write=main)  # fmt: skip
    sources = usable_sources(sources, cfg.skip_bad_images, main and progress)
    folds = folds[folds.index.isin(sources.primary.labels.image_ids)]
    fold_train, val_ids = fold_ids(folds, cfg.fold, folds_csv)
    train_ids = fold_train + sources.extra_ids  # extra sources: the training side only
    loader, sampler, batches = train_loader(
        cfg, sources.labels, train_ids, seed=seed, rank=rank, world=world, pin_memory=pin,
        folders=sources.folders(), source_weights=sources.weights(train_ids),
        is_extra=np.arange(len(train_ids)) >= len(fold_train),
    )  # fmt: skip
    return TrainData(
        labels=sources.labels,
        folds_csv=folds_csv,
        loader=loader,
        sampler=sampler,
        batches=batches,
        val_loader=val_loader(cfg, sources.labels, val_ids, pin) if main else None,
        sources=sources.record(len(fold_train), len(val_ids)),
    )
