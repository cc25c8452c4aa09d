"""Deterministic, rank-aware data order.

The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees exactly the batches an
uninterrupted one would, and under ``torchrun`` each rank takes every ``world_size``-th index of the
same permutation (what ``DistributedSampler`` does, without needing a process group to exist).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )


class EpochSampler(Sampler[int]):
    """Shuffled indices seeded by ``(seed, epoch)``, split across ranks."""

    def __init__(self, length: int, *, seed: int, dist: DistInfo = DistInfo(), shuffle: bool = True):
        self.length, self.seed, self.dist, self.shuffle = length, seed, dist, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        return iter(order[self.dist.rank :: self.dist.world_size])

    def __len__(self) -> int:
        return len(range(self.dist.rank, self.length, self.dist.world_size))
