"""Multi-process training on CPU: the process group, and each rank's share of a batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch: Tensor) -> Tensor:
        """This rank's contiguous part of a global batch (possibly empty)."""
        return batch.tensor_split(self.world_size)[self.rank]


def init_from_environment() -> Ranks:
    """Join the gloo group that ``torchrun`` describes; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks(0, 1)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
