"""The time budget: projections, drops in order, warm-up, what is never dropped; the hard deadline."""

from __future__ import annotations

from steel_seg.engine.budget import Budget, Deadline, apply_step

ROLES = {"a": "seg", "b": "seg", "c": "cls"}


class Clock:
    """A hand-moved clock, so projections are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run_batches(
    budget: Budget, clock: Clock, plan: dict, per_view: dict, n: int, batch: int = 2, overhead: float = 0.0
) -> dict:
    """Feed `n` batches whose model time is `per_view[name] x views x images`; review after each."""
    for _ in range(n):
        model_s = {name: per_view[name] * len(views) * batch for name, views in plan.items()}
        wall = sum(model_s.values()) + overhead * batch
        clock.now += wall
        budget.record(batch, wall, model_s, plan)
        plan = budget.review(plan)
    return plan


def test_apply_step():
    plan = {"a": ("none", "h"), "b": ("none",), "c": ("none", "h")}
    assert apply_step(plan, ROLES, "tta:h") == ({"a": ("none",), "b": ("none",), "c": ("none",)}, "dropped")
    assert apply_step(plan, ROLES, "model:b") == ({"a": ("none", "h"), "c": ("none", "h")}, "dropped")
    assert apply_step(plan, ROLES, "model:c")[0] == {"a": ("none", "h"), "b": ("none",)}
    assert apply_step(plan, ROLES, "tta:v") == (None, "skipped: no model runs this view besides its last one")
    assert apply_step({"b": ("h",)}, ROLES, "tta:h")[0] is None
    assert apply_step({"a": ("none",)}, ROLES, "model:a") == (
        None,
        "skipped: the last segmenter is never dropped",
    )
    assert apply_step(plan, ROLES, "model:zz")[0] is None


def test_no_drop_while_the_projection_fits():
    clock = Clock()
    plan = {"a": ("none", "h", "v")}
    budget = Budget(100.0, ["tta:v", "tta:h"], ROLES, total_images=20, start=0.0, clock=clock)
    assert _run_batches(budget, clock, plan, {"a": 1.0}, n=10) == plan
    assert budget.decisions == []


def test_drops_in_order_until_the_projection_fits():
    clock = Clock()
    plan = {"a": ("none", "h", "v"), "b": ("none", "h", "v")}
    budget = Budget(
        80.0,
        ["tta:v", "tta:h", "model:b"],
        ROLES,
        total_images=40,
        start=0.0,
        warmup_batches=1,
        min_batches=2,
        clock=clock,
    )
    # 1 s per view-image per model: 6 s per image; 3 batches of 2 -> 36 s spent, 34 images left.
    plan = _run_batches(budget, clock, plan, {"a": 1.0, "b": 1.0}, n=3)
    steps = [(d.step, d.action) for d in budget.decisions]
    assert steps == [("tta:v", "dropped"), ("tta:h", "dropped"), ("model:b", "dropped")]
    first, second, third = budget.decisions
    assert (first.images_done, first.elapsed_s) == (6, 36.0)
    assert first.projected_s == 36.0 + 34 * 6.0
    assert first.projected_after_s == second.projected_s == 36.0 + 34 * 4.0
    assert second.projected_after_s == third.projected_s == 36.0 + 34 * 2.0
    assert third.projected_after_s == 36.0 + 34 * 1.0 <= 80.0
    assert plan == {"a": ("none",)}


def test_stops_dropping_once_it_fits_and_remeasures_after_a_change():
    clock = Clock()
    plan = {"a": ("none", "h", "v"), "b": ("none", "h", "v")}
    budget = Budget(200.0, ["tta:v", "tta:h", "model:b"], ROLES, total_images=40, start=0.0, clock=clock)
    plan = _run_batches(budget, clock, plan, {"a": 1.0, "b": 1.0}, n=3)
    assert [d.step for d in budget.decisions] == ["tta:v"]  # 36 + 34 * 4 = 172 <= 200
    assert plan == {"a": ("none", "h"), "b": ("none", "h")}
    # After the change the next batch is warm-up again: one slow batch does not trigger another drop.
    plan = _run_batches(budget, clock, plan, {"a": 10.0, "b": 10.0}, n=1)
    assert len(budget.decisions) == 1


def test_warmup_batches_are_not_measured():
    clock = Clock()
    plan = {"a": ("none", "h")}
    budget = Budget(50.0, ["tta:h"], ROLES, total_images=20, start=0.0, warmup_batches=1, clock=clock)
    plan = _run_batches(budget, clock, plan, {"a": 5.0}, n=1)  # 20 s of warm-up
    plan = _run_batches(budget, clock, plan, {"a": 0.1}, n=3)  # 20 + 0.4 * 3 + 12 * 0.4 ~ 26 s: fits
    assert budget.decisions == []


def test_never_drops_the_last_segmenter_and_says_when_nothing_is_left():
    clock = Clock()
    plan = {"a": ("none", "h"), "c": ("none",)}
    budget = Budget(10.0, ["model:a", "model:c", "tta:h"], ROLES, total_images=100, start=0.0, clock=clock)
    plan = _run_batches(budget, clock, plan, {"a": 1.0, "c": 1.0}, n=3)
    actions = [(d.step, d.action) for d in budget.decisions]
    assert actions[0] == ("model:a", "skipped: the last segmenter is never dropped")
    assert actions[1:3] == [("model:c", "dropped"), ("tta:h", "dropped")]
    assert actions[3][1].startswith("nothing left to drop")
    assert plan == {"a": ("none",)}
    _run_batches(budget, clock, plan, {"a": 1.0}, n=5)
    assert len(budget.decisions) == 4  # said once, and the run goes on


def test_overhead_counts_in_the_projection():
    clock = Clock()
    plan = {"a": ("none",)}
    budget = Budget(50.0, [], ROLES, total_images=12, start=0.0, clock=clock)
    _run_batches(budget, clock, plan, {"a": 1.0}, n=3, overhead=2.0)
    assert budget.cost_per_image(plan) == 3.0
    assert budget.cost_per_image({"a": ("none", "h")}) == 4.0


def test_the_deadline_counts_from_the_budget_start():
    clock = Clock()
    clock.now = 100.0
    budget = Budget(60.0, [], ROLES, total_images=10, start=90.0, clock=clock)
    assert budget.deadline == Deadline(60.0, 90.0)
    assert (budget.deadline.elapsed(), budget.deadline.remaining()) == (10.0, 50.0)
    assert budget.deadline.allows(50.0) and not budget.deadline.allows(50.5)
    clock.now = 151.0
    assert budget.deadline.remaining() == -1.0 and not budget.deadline.allows(0.0)
