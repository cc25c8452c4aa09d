"""The pool of saved augmentors (paper section 4): a guard against the student forgetting old augmentations.

HARD saves the augmentor at every switch from augmentor to student training (the identity-initialised
one is entry 0) and, in each student iteration, augments with an entry drawn uniformly at random. An
entry is the augmentor's :meth:`~hardctl.augment.Augmentor.snapshot`: its trainable parameters only,
kept on the training device and written to ``<run>/augmentors/pool-NNN.safetensors`` so that
``hardctl visualize`` can replay early and late augmentations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hardctl.atomic import atomic_path
from hardctl.runfiles import POOL_DIR

__all__ = ["AugmentorPool", "POOL_DIR", "pool_files", "read_entry"]



def pool_files(run_dir: Path) -> list[Path]:
    """The pool snapshots of a run, oldest first."""
    return sorted((Path(run_dir) / POOL_DIR).glob("pool-*.safetensors"))


def read_entry(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One saved snapshot and its metadata (``index``, ``iteration``, ``step``, ``epoch``, ``reason``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    info = json.loads(meta.get("hardctl_pool", "{}"))
    return load_file(str(path), device=str(device)), info


class AugmentorPool:
    """Snapshots of one augmentor; ``directory`` (rank 0 only) receives a file per entry."""

    def __init__(self, augmentor, directory: Path | None = None):
        self.augmentor = augmentor
        self.directory = Path(directory) if directory is not None else None
        self.entries: list[dict[str, torch.Tensor]] = []
        self.info: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, **info: Any) -> int:
        """Save the augmentor's current state as a new entry; returns its index."""
        snapshot = {k: v.detach().clone() for k, v in self.augmentor.snapshot().items()}
        index = len(self.entries)
        record = {"index": index, **info}
        self.entries.append(snapshot)
        self.info.append(record)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"pool-{index:03d}.safetensors"
            with atomic_path(path) as tmp:
                cpu = {k: v.detach().cpu().contiguous() for k, v in snapshot.items()}
                save_file(cpu, str(tmp), metadata={"hardctl_pool": json.dumps(record)})
        return index

    def sample(self, how: str = "uniform", generator: torch.Generator | None = None) -> int:
        """A drawn entry (from ``generator``, else the global torch RNG, so runs and resumes are reproducible):
        ``uniform`` over all entries (the paper), or ``recent``: the newest entry half of the time, else uniform over
        all — the newest augmentor is the one the student has not learned yet, the older ones guard against
        forgetting."""
        if how == "recent" and len(self.entries) > 1 and bool(torch.rand((), generator=generator) < 0.5):
            return len(self.entries) - 1
        return int(torch.randint(len(self.entries), (1,), generator=generator).item())

    def augment(self, index: int, images: torch.Tensor) -> torch.Tensor:
        return self.augmentor.forward_with(self.entries[index], images)

    def load(self, count: int, device: torch.device, *, directory: Path | None = None) -> None:
        """Re-read the first ``count`` entries from ``directory`` (default: this pool's; resume). Later files are
        stale: a pool that writes files (it has a directory of its own) removes them; a pool that only reads
        another process's files (a torchrun rank above 0) leaves them to that process."""
        source = Path(directory) if directory is not None else self.directory
        files = sorted(source.glob("pool-*.safetensors")) if source is not None else []
        if len(files) < count:
            raise FileNotFoundError(f"the checkpoint names {count} pool entries but {source} has {len(files)}")
        self.entries, self.info = [], []
        for path in files[:count]:
            snapshot, info = read_entry(path, device)
            self.entries.append(snapshot)
            self.info.append(info)
        for stale in files[count:] if self.directory is not None else ():
            stale.unlink(missing_ok=True)
