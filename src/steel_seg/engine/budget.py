"""The inference time budget: drop TTA views, then models, to finish in time; and the hard deadline.

A plan maps each active model's name to its TTA views. The budget measures the wall time per image and each
model's time per image-view since the last change (the first batches after a change are warm-up and not
counted), projects `elapsed + remaining images x cost per image`, and when that exceeds the limit applies the
manifest's `drop_order` steps one by one, re-projecting with the cost model after each, until it fits.
It never drops the last segmenter nor a model's last view: when nothing is left to drop it says so.
The `Deadline` is the last line of defence: at the limit the engine stops predicting and writes every image
it has not reached empty (Kaggle kills a run at one hour, and a killed run leaves no submission).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Plan = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class BudgetDecision:
    """One step the budget took (or could not take), with the projections that led to it."""

    step: str
    action: str
    images_done: int
    elapsed_s: float
    projected_s: float
    projected_after_s: float
    budget_s: float

    def text(self) -> str:
        return (
            f"budget: {self.step} {self.action} after {self.images_done} images, {self.elapsed_s:.1f}s: "
            f"projected {self.projected_s:.1f}s -> {self.projected_after_s:.1f}s (limit {self.budget_s:g}s)"
        )


@dataclass(frozen=True)
class Deadline:
    """The hard wall-clock limit: `limit_s` seconds after `start` (a `clock()` value)."""

    limit_s: float
    start: float
    clock: Callable[[], float] = field(default=time.perf_counter, compare=False)

    def remaining(self) -> float:
        """Seconds left before the limit (negative past it)."""
        return self.start + self.limit_s - self.clock()

    def allows(self, seconds: float) -> bool:
        """Whether work expected to take `seconds` from now ends by the limit."""
        return seconds <= self.remaining()

    def elapsed(self) -> float:
        return self.clock() - self.start


def apply_step(plan: Plan, roles: Mapping[str, str], step: str) -> tuple[Plan | None, str]:
    """The plan after one `drop_order` step, or (None, why not) when the step cannot apply."""
    kind, _, what = step.partition(":")
    if kind == "model":
        if what not in plan:
            return None, "skipped: model not active"
        if roles[what] == "seg" and sum(roles[n] == "seg" for n in plan) == 1:
            return None, "skipped: the last segmenter is never dropped"
        return {n: v for n, v in plan.items() if n != what}, "dropped"
    new = {n: tuple(x for x in v if x != what) or v for n, v in plan.items()}
    if new == plan:
        return None, "skipped: no model runs this view besides its last one"
    return new, "dropped"


class Budget:
    """Projects the total run time of `total_images` images and decides drops (see the module docstring).

    Args:
        budget_s: the limit, counted from `start` (a `clock()` value; the kernel passes its own start).
        drop_order: manifest steps, `tta:<view>` or `model:<name>`, tried in this order.
        roles: model name -> "seg" | "cls".
        warmup_batches: batches after each change that are not measured (cudnn autotuning, allocations).
        min_batches: measured batches needed before a projection.
    """

    def __init__(
        self,
        budget_s: float,
        drop_order: Sequence[str],
        roles: Mapping[str, str],
        total_images: int,
        start: float | None = None,
        *,
        warmup_batches: int = 1,
        min_batches: int = 2,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.budget_s = budget_s
        self.roles = dict(roles)
        self.total_images = total_images
        self.clock = clock
        self.start = clock() if start is None else start
        self.deadline = Deadline(budget_s, self.start, clock)
        self.warmup_batches = warmup_batches
        self.min_batches = min_batches
        self.decisions: list[BudgetDecision] = []
        self._pending = list(drop_order)
        self._exhausted = False
        self.images_done = 0
        self._reset()

    def _reset(self) -> None:
        self._seen = 0
        self._images = 0
        self._wall = 0.0
        self._model: dict[str, float] = {}
        self._view_images: dict[str, int] = {}

    def record(self, n_images: int, wall_s: float, model_s: Mapping[str, float], plan: Plan) -> None:
        """Account one finished batch: its images, wall seconds, and seconds per model under `plan`."""
        self.images_done += n_images
        self._seen += 1
        if self._seen <= self.warmup_batches:
            return
        self._images += n_images
        self._wall += wall_s
        for name, seconds in model_s.items():
            self._model[name] = self._model.get(name, 0.0) + seconds
            self._view_images[name] = self._view_images.get(name, 0) + n_images * len(plan[name])

    def rate(self) -> float | None:
        """Images per second since the last change, warm-up batches left out; None before any is measured."""
        return self._images / self._wall if self._images and self._wall > 0 else None

    def cost_per_image(self, plan: Plan) -> float:
        """Projected seconds per image under `plan`: overhead + each model's per-view cost x views."""
        overhead = max(0.0, self._wall - sum(self._model.values())) / self._images
        per_view = {n: self._model[n] / self._view_images[n] for n in self._model if self._view_images[n]}
        return overhead + sum(per_view.get(n, 0.0) * len(views) for n, views in plan.items())

    def review(self, plan: Plan) -> Plan:
        """The plan to run next; drops steps (and logs decisions) when the projection exceeds the limit."""
        if self._seen - self.warmup_batches < self.min_batches or self._exhausted:
            return plan
        elapsed = self.clock() - self.start
        remaining = self.total_images - self.images_done
        projected = elapsed + remaining * self.cost_per_image(plan)
        if projected <= self.budget_s:
            return plan
        new = self._drop_until_fits(plan, elapsed, remaining, projected)
        if new != plan:
            self._reset()
        return new

    def _drop_until_fits(self, plan: Plan, elapsed: float, remaining: int, projected: float) -> Plan:
        while projected > self.budget_s and self._pending:
            step = self._pending.pop(0)
            new, action = apply_step(plan, self.roles, step)
            after = projected if new is None else elapsed + remaining * self.cost_per_image(new)
            self._decide(step, action, elapsed, projected, after)
            plan, projected = (plan, projected) if new is None else (new, after)
        if projected > self.budget_s:
            self._exhausted = True
            self._decide(
                "-",
                "nothing left to drop; the deadline will cut the images it cannot reach",
                elapsed,
                projected,
                projected,
            )
        return plan

    def _decide(self, step: str, action: str, elapsed: float, projected: float, after: float) -> None:
        self.decisions.append(
            BudgetDecision(step, action, self.images_done, elapsed, projected, after, self.budget_s)
        )


def projection(images_per_s: float, images: int, startup_s: float, budget_s: float) -> str:
    """What a measured rate says about a run over `images` that starts predicting after `startup_s`: the
    projected seconds against the budget, in one line (the kernel's push run prints it for the re-run)."""
    total = startup_s + images / images_per_s
    if total <= budget_s:
        verdict = f"fits ({total / budget_s:.0%} of it)"
    else:
        verdict = (
            f"{total / budget_s:.1f}x the budget: the re-run will drop views and models in the manifest's "
            "drop_order to fit, and the deadline writes any image it cannot reach empty"
        )
    return (
        f"projected full run: {startup_s:.0f}s start-up + {images} images / {images_per_s:.2f} images/s = "
        f"{total:.0f}s against the {budget_s:g}s budget: {verdict}"
    )
