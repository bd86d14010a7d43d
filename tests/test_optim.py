"""steel_seg.train.optim: optimisers by name, the encoder's own lr / weight decay, the schedule."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_UNET

from steel_seg.models.factory import build_model
from steel_seg.train.config import OptimConfig, ScheduleConfig
from steel_seg.train.optim import lr_factor, make_optimizer, make_scheduler, param_groups


@pytest.fixture(scope="module")
def model():
    return build_model(TINY_UNET)


def test_one_group_unless_the_encoder_has_its_own_settings(model):
    [group] = param_groups(OptimConfig(), model)
    assert len(group["params"]) == len(list(model.parameters()))
    rest, encoder = param_groups(OptimConfig(lr=3e-3, encoder_lr=7e-5, encoder_weight_decay=3e-5), model)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in rest["params"]} | {id(p) for p in encoder["params"]} == {
        id(p) for p in model.parameters()
    }
    assert not {id(p) for p in rest["params"]} & {id(p) for p in encoder["params"]}
    assert (encoder["lr"], encoder["weight_decay"]) == (7e-5, 3e-5) and "lr" not in rest


@pytest.mark.parametrize("name, kind", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                        ("radam", torch.optim.RAdam)])  # fmt: skip
def test_each_optimiser_steps_with_its_groups_on_the_schedule(model, name, kind):
    cfg = OptimConfig(name=name, lr=3e-3, encoder_lr=7e-5, weight_decay=3e-4)
    optimizer = make_optimizer(cfg, model)
    assert isinstance(optimizer, kind)
    assert [g["lr"] for g in optimizer.param_groups] == [3e-3, 7e-5]
    if name == "radam":
        assert all(g["decoupled_weight_decay"] for g in optimizer.param_groups)
    scheduler = make_scheduler(ScheduleConfig(epochs=1, warmup_steps=2), optimizer, total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 1, 64, 64)).mean().backward()
    optimizer.step()
    scheduler.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    factor = lr_factor(1, 10, 2, 0.01)
    assert scheduler.get_last_lr() == pytest.approx([3e-3 * factor, 7e-5 * factor])
    optimizer.zero_grad()
