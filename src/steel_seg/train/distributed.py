"""Processes and devices of a training run: one process, or one per device under `torchrun` (DDP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


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


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch_dist.barrier()


def gather(dist: Dist, obj: Any) -> list[Any]:
    """Every process's `obj`, index = rank (a one-item list in a single process)."""
    if dist.world == 1:
        return [obj]
    every: list[Any] = [None] * dist.world
    torch_dist.all_gather_object(every, obj)
    return every
