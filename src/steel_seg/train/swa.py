"""Weight averaging beyond EMA: the equal average of a run's weights at the ends of its last N epochs.

The 12th place averaged checkpoint weights (+0.003-0.005 private). `torch.optim.swa_utils.AveragedModel` keeps
the running mean of the parameters; its BatchNorm statistics belong to none of the averaged models, so
`finish` recomputes them (`swa_utils.update_bn`) on training batches before the average is validated and
saved as the run's `best/` (`train.select: average`), an ordinary model dir.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn


class WeightAverage:
    """The mean of the weights `update` is given at the ends of epochs `total - epochs + 1` .. `total`."""

    def __init__(self, model: nn.Module, epochs: int, total: int):
        self.first, self.total = total - epochs + 1, total
        self.averaged = AveragedModel(model)
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def count(self) -> int:
        """How many epochs' weights are in the average so far."""
        return int(self.averaged.n_averaged)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def update(self, model: nn.Module, epoch: int) -> bool:
        """Add `model`'s weights after epoch `epoch` (1-based) when it lies in the window; whether it did."""
        if not self.first <= epoch <= self.total:
            return False
        self.averaged.update_parameters(model)
        return True

    def finish(self, inputs: Iterable[Tensor]) -> nn.Module:
        """The averaged model with BatchNorm statistics recomputed on `inputs` (model-ready batches)."""
        update_bn(inputs, self.module)
        return self.module.eval()

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
