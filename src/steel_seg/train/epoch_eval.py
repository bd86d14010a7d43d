"""The end-of-epoch evaluation of a training run: validation loss and the competition metric.

Segmenters are scored like a submission at default post-processing (`postprocess.Rules()`: pixel threshold
0.5, nothing else) through the engine's own device thresholding and RLE path; classifiers by accuracy. With
a tuning grid (`train.select: tuned`) the validation fold is also scored after per-class tuning of the rules
on itself (`postprocess.tune`: the same statistics and search `steel-seg tune` runs on OOF predictions).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from steel_seg.competition import CLASSES, IMAGE_ID, TIDY_COLUMNS
from steel_seg.formats import metric
from steel_seg.formats.labels import Labels
from steel_seg.models.factory import ModelSpec, forward_logits
from steel_seg.models.precision import autocast
from steel_seg.postprocess.on_device import encode_image, threshold_on_device
from steel_seg.postprocess.rules import Rules
from steel_seg.postprocess.tune import Grid, StatsCollector, search
from steel_seg.train.data import raise_image_errors, to_device
from steel_seg.train.losses import ModelLoss, as_float

DEFAULT_RULES = Rules()
# The selection's search: tune's default grid of component / area / gate values at 3 pixel thresholds
# (one connected-component pass per image, class and threshold: ~1/3 of `steel-seg tune`'s collection).
SELECT_GRID = Grid(pixel_thresholds=(0.4, 0.5, 0.6))


def evaluate(
    model: nn.Module,
    spec: ModelSpec,
    loader: DataLoader,
    labels: Labels,
    loss_fn: ModelLoss,
    amp: torch.dtype | None = None,
    tune_grid: Grid | None = None,
) -> dict[str, Any]:
    """Validation loss and the competition metric at default rules (segmenters) / cls accuracy, under
    autocast to `amp` (`precision.device_dtype`; None = float32); with `tune_grid`, also the metric after
    tuning each class's rules on this fold (`val_dice_tuned`).

    Returns flat numbers (`val_loss`, `val_dice`, `dice_<class>`, `dice_empty`, `dice_nonempty`,
    `cls_accuracy`; None where not applicable) plus the metric's full breakdown under `score`.
    """
    device = next(model.parameters()).device
    model.eval()
    ids, rows, loss_sum, correct, n_cls = loader.dataset.image_ids, [], 0.0, 0, 0
    stats = None if tune_grid is None else StatsCollector(tune_grid.pixel_thresholds)
    with torch.no_grad():
        for batch in loader:
            raise_image_errors(batch)
            x, mask, presence = to_device(batch, spec, device)
            with autocast(device, amp):
                seg, cls = forward_logits(model, spec, x)
            seg, cls = as_float(seg), as_float(cls)
            loss_sum += loss_fn(seg, cls, mask, presence).item() * len(x)
            batch_ids = [ids[i] for i in batch["index"].tolist()]
            probs = None if seg is None else seg.sigmoid()
            if probs is not None:
                rows += _rows(batch_ids, probs)
            if stats is not None:
                _collect(stats, batch_ids, probs, mask, None if cls is None else cls.sigmoid())
            if cls is not None:
                correct += int(((cls.sigmoid() > 0.5) == (presence > 0.5)).sum())
                n_cls += presence.numel()
    accuracy = correct / n_cls if n_cls else None
    out: dict[str, Any] = {"val_loss": loss_sum / len(ids), "cls_accuracy": accuracy}
    if stats is not None:
        out["val_dice_tuned"] = _tuned_dice(stats, tune_grid)
    return out | (_dice(labels, ids, rows) if spec.has_seg else {"val_dice": None})


def _collect(stats: StatsCollector, image_ids: list[str], probs: Tensor, mask: Tensor, cls: Tensor | None):
    """Add a batch to the tuning statistics: `probs (N, 4, H, W)` stored as `steel-seg oof` stores them
    (uint8, `oof.quantise`), the truth `mask (N, 4, H, W)` 0/1, the gate source `cls (N, 4)` or None."""
    values = torch.round(probs.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    truth = mask.to(torch.uint8).cpu().numpy()
    gates = None if cls is None else cls.cpu().numpy()
    for k, image_id in enumerate(image_ids):
        stats.add(image_id, values[k], truth[k], None if gates is None else gates[k])


def _tuned_dice(stats: StatsCollector, grid: Grid) -> float:
    """The mean Dice over the 4 classes of each class's best rule on these statistics."""
    return float(sum(r.after for r in search(stats.finish(), grid)) / len(CLASSES))


def _rows(image_ids: list[str], probs: Tensor) -> list[tuple[str, int, str]]:
    """Tidy prediction rows (ImageId, ClassId, RLE) of `probs (N, 4, H, W)` under the default rules."""
    masks, gates = (t.cpu().numpy() for t in threshold_on_device(probs, None, DEFAULT_RULES))
    return [
        (image_id, c, encoded)
        for image_id, m, g in zip(image_ids, masks, gates, strict=True)
        for c, encoded in zip(CLASSES, encode_image(m, DEFAULT_RULES, g), strict=True)
        if encoded
    ]


def _dice(labels: Labels, ids: list[str], rows: list[tuple[str, int, str]]) -> dict[str, Any]:
    pred = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    truth = labels.table[labels.table[IMAGE_ID].isin(set(ids))]
    score = metric.score(truth, pred, ids)
    per_class = {f"dice_{c}": float(score.per_class[c]) for c in CLASSES}
    split_dice = {"dice_empty": score.empty_truth.mean_dice, "dice_nonempty": score.nonempty_truth.mean_dice}
    return {"val_dice": float(score.mean_dice), **per_class, **split_dice, "score": score.to_dict()}
