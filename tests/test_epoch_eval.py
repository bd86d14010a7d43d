"""steel_seg.train.epoch_eval: the validation numbers, and the tuned metric `train.select: tuned` ranks by."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TINY_UNET, forward_probs

from steel_seg.formats.oof import quantise
from steel_seg.models import factory
from steel_seg.postprocess.tune import StatsCollector, search
from steel_seg.train.data import SteelDataset, to_device
from steel_seg.train.epoch_eval import SELECT_GRID, evaluate
from steel_seg.train.losses import LossConfig, ModelLoss


@pytest.fixture(scope="module")
def validated(synthetic_set, synthetic_labels):
    torch.manual_seed(0)
    model = factory.build_model(TINY_UNET).eval()
    factory.set_seg_prior(model, TINY_UNET, 0.5)
    ids = synthetic_labels.image_ids[:4]
    dataset = SteelDataset(synthetic_set.out_dir / "train_images", ids, synthetic_labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    result = evaluate(
        model, TINY_UNET, loader, synthetic_labels, ModelLoss(LossConfig()), tune_grid=SELECT_GRID
    )
    return model, loader, result


def test_the_tuned_metric_is_what_tune_finds_on_the_same_predictions_stored_as_oof(
    validated, synthetic_labels
):
    """The reference: each image's probabilities quantised as `steel-seg oof` stores them, collected and
    searched by `postprocess.tune` exactly as `steel-seg tune` does on an OOF dir."""
    model, loader, result = validated
    stats = StatsCollector(SELECT_GRID.pixel_thresholds)
    for batch in loader:
        x, _, _ = to_device(batch, TINY_UNET, torch.device("cpu"))
        with torch.no_grad():
            probs = forward_probs(model, TINY_UNET, x)[0].numpy()
        for k, i in enumerate(batch["index"].tolist()):
            image_id = loader.dataset.image_ids[i]
            stats.add(image_id, quantise(probs[k]), synthetic_labels.masks(image_id), None)
    expected = np.mean([r.after for r in search(stats.finish(), SELECT_GRID)])
    assert result["val_dice_tuned"] == pytest.approx(expected, abs=1e-12)


def test_tuning_never_scores_below_the_default_rules_it_includes(validated):
    """The untrained model (every pixel near 0.5) paints false positives everywhere: the default rules
    score them, the tuned ones clear what they cannot win."""
    _, _, result = validated
    assert 0.0 <= result["val_dice"] < result["val_dice_tuned"] <= 1.0
