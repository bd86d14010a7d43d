"""The end-of-epoch evaluation of a training run: validation loss and the competition metric.

Segmenters are scored like a submission at default post-processing (`postprocess.Rules()`: pixel threshold
0.5, nothing else) through the engine's own device thresholding and RLE path; classifiers by accuracy.
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
from steel_seg.train.data import raise_image_errors, to_device
from steel_seg.train.losses import ModelLoss, as_float

DEFAULT_RULES = Rules()


def evaluate(
    model: nn.Module,
    spec: ModelSpec,
    loader: DataLoader,
    labels: Labels,
    loss_fn: ModelLoss,
    amp: torch.dtype | None = None,
) -> dict[str, Any]:
    """Validation loss and the competition metric at default rules (segmenters) / cls accuracy, under
    autocast to `amp` (`precision.device_dtype`; None = float32).

    Returns flat numbers (`val_loss`, `val_dice`, `dice_<class>`, `dice_empty`, `dice_nonempty`,
    `cls_accuracy`; None where not applicable) plus the metric's full breakdown under `score`.
    """
    device = next(model.parameters()).device
    model.eval()
    ids, rows, loss_sum, correct, n_cls = loader.dataset.image_ids, [], 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            raise_image_errors(batch)
            x, mask, presence = to_device(batch, spec, device)
            with autocast(device, amp):
                seg, cls = forward_logits(model, spec, x)
            seg, cls = as_float(seg), as_float(cls)
            loss_sum += loss_fn(seg, cls, mask, presence).item() * len(x)
            if seg is not None:
                rows += _rows([ids[i] for i in batch["index"].tolist()], seg.sigmoid())
            if cls is not None:
                correct += int(((cls.sigmoid() > 0.5) == (presence > 0.5)).sum())
                n_cls += presence.numel()
    accuracy = correct / n_cls if n_cls else None
    out: dict[str, Any] = {"val_loss": loss_sum / len(ids), "cls_accuracy": accuracy}
    return out | (_dice(labels, ids, rows) if spec.has_seg else {"val_dice": None})


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
