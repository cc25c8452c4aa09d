"""Deterministic, rank-aware data order.

The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees exactly the batches an
uninterrupted one would, and under ``torchrun`` each rank takes every ``world_size``-th index of the
same permutation (what ``DistributedSampler`` does, without needing a process group to exist).

With a *global* batch size ``B`` (``--batch-size``; each of W ranks loads ``B/W``), rank ``r``'s ``k``-th
batch is rows ``r::W`` of the one-process run's ``k``-th batch: together the ranks see exactly the images the
one-process run sees at every step. The epoch's last batch may be smaller; it is dropped only when it would
leave a rank with no image, or (one process) be a single image, which crashes batch-norm in train mode.
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

    def rows(self, count: int) -> int:
        """How many of a global batch's ``count`` rows are this rank's (rows ``rank::world_size``)."""
        return len(range(self.rank, count, self.world_size))


class EpochSampler(Sampler[int]):
    """Shuffled indices seeded by ``(seed, epoch)``, split across ranks.

    ``batch_size`` (global) lets the sampler drop an epoch's last batch when it is too small to split:
    fewer images than ranks (a rank would have no batch and the others would wait for it), or one image."""

    def __init__(self, length: int, *, seed: int, dist: DistInfo = DistInfo(), shuffle: bool = True,
                 batch_size: int | None = None):
        self.length, self.seed, self.dist, self.shuffle = length, seed, dist, shuffle
        self.epoch = 0
        last = length % batch_size if batch_size else 0
        self.total = length - last if length > (batch_size or 0) and 0 < last < max(2, dist.world_size) else length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batch(self, index: int, batch_size: int) -> int:
        """The size of the epoch's ``index``-th global batch (all ranks' rows together)."""
        return min(batch_size, self.total - index * batch_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        return iter(order[: self.total][self.dist.rank :: self.dist.world_size])

    def __len__(self) -> int:
        return self.dist.rows(self.total)
