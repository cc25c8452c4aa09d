"""How fast a run goes, never what it computes: ``--compile``, ``--channels-last`` and the training loader.

* ``--compile``: the student and the teacher go through :func:`torch.compile` as *separate* callables
  (:func:`compile_module`); the trainer keeps the plain modules for everything that has names (weights files,
  checkpoints, ``--resume``, evaluation), so no ``_orig_mod.`` prefix ever reaches a file. Under DDP the
  wrapper of the plain student is compiled (``torch.compile(DDP(student))``, PyTorch's recommended order:
  Dynamo's DDP optimiser then splits the graph at the gradient buckets so communication overlaps the
  backward). The augmentor stays eager: HARD-Affine is one small matmul and one ``grid_sample``, its pool
  replays other parameter sets every step, and a plugin's augmentor may be anything.
* ``--channels-last``: student and teacher weights and every input batch in ``torch.channels_last``
  (:func:`to_channels_last`); convolutions on tensor cores want NHWC. Weights files are written contiguous
  (safetensors' ``save_model``), so they load into a plain model.
* The loader (:func:`loader_options`): with ``--workers N > 0`` the workers are persistent (started once per
  run, not per epoch) and draw their seeds from a generator of their own (:func:`worker_generator`), so the
  global random stream — checkpointed for ``--resume`` — does not depend on when workers start; batches are
  pinned on CUDA. Persistent workers keep their copy of the data set, so the epoch reaches per-image
  augmentation seeds through the sampled indices instead (:class:`EpochIndices`, :class:`EpochAware`).

* The student as the task calls it (:class:`StudentWrappers`): the plain module, its DDP wrapper under
  ``torchrun`` and the compiled versions, and the switch to the bare student for the augmentor's steps.

``HARDCTL_COMPILE_BACKEND`` (or :data:`COMPILE_BACKEND`) names another ``torch.compile`` backend; the tests use
``eager`` to check the plumbing without a C++ compiler's minutes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from hardctl.data.gpudecode import collate_encoded, encoded_view

__all__ = ["COMPILE_BACKEND", "PREFETCH_FACTOR", "EpochAware", "EpochIndices", "StudentWrappers", "compile_module",
           "epoch_target", "loader_options", "to_channels_last", "channels_last_modules", "training_loader",
           "worker_generator"]

COMPILE_BACKEND: str | None = None  # None: HARDCTL_COMPILE_BACKEND, else torch.compile's default (inductor)
PREFETCH_FACTOR = 2  # batches each worker keeps ready (torch's default; float 224 px batches are large in /dev/shm)


def compile_module(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``: a wrapper sharing ``module``'s parameters (train it, save ``module``)."""
    backend = COMPILE_BACKEND or os.environ.get("HARDCTL_COMPILE_BACKEND") or "inductor"
    return torch.compile(module, backend=backend)


def channels_last_modules(*modules: nn.Module | None) -> None:
    """Convert the 4-D weights of ``modules`` to channels_last in place (parameter identity is kept, so an
    optimiser made before or after sees the same tensors)."""
    for module in modules:
        if module is not None:
            module.to(memory_format=torch.channels_last)


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in channels_last (other tensors unchanged)."""
    return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images


def worker_generator(seed: int, rank: int) -> torch.Generator:
    """The generator DataLoader draws its workers' base seed from: per run and rank, not the global stream."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + 17) % (2**63))


def loader_options(workers: int, device: torch.device, *, seed: int = 0, rank: int = 0) -> dict[str, Any]:
    """DataLoader keywords for ``--workers`` on ``device``: persistent, prefetching workers of their own seed,
    pinned batches on CUDA (so the copy to the GPU can be asynchronous)."""
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=PREFETCH_FACTOR,
                       generator=worker_generator(seed, rank))
    return options


def epoch_target(dataset: Any) -> Any:
    """The object whose ``set_epoch`` restarts a data set's per-image seeds: the data set itself, or the one a
    :class:`~torch.utils.data.Subset` (or another wrapper with ``.dataset``) reads; None if there is none."""
    for _ in range(8):  # wrappers nest a few levels at most
        if dataset is None or hasattr(dataset, "set_epoch"):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


class EpochIndices(Sampler):
    """``sampler``'s indices as ``(epoch, index)`` pairs (the epoch: ``sampler.epoch``), for :class:`EpochAware`."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class EpochAware(Dataset):
    """``dataset`` read by ``(epoch, index)``: a persistent worker restarts the per-image seeds of each new epoch
    itself (``set_epoch`` on its own copy), as the trainer does in the main process without workers."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if epoch != self.epoch:
            target = epoch_target(self.dataset)
            if target is not None:
                target.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


def training_loader(train_set: Dataset, cfg, sampler, *, device: torch.device, rank: int = 0,
                    world_size: int = 1) -> tuple[DataLoader, Any]:
    """The run's training loader over ``sampler``'s indices (this rank's ``batch_size // world_size`` rows of each
    global batch), and the GPU decoder that ``--decode gpu`` batches need (None otherwise: the loader decodes)."""
    decoder, collate = None, None
    if cfg.decode == "gpu":  # batches arrive as file bytes, decoded on the device by the trainer's prepare_batch
        train_set, decoder = encoded_view(train_set, cfg.data)
        collate = collate_encoded
    if cfg.workers > 0:  # persistent workers learn each epoch from the indices (per-image seeds)
        train_set, sampler = EpochAware(train_set), EpochIndices(sampler)
    loader = DataLoader(train_set, batch_size=cfg.batch_size // world_size, sampler=sampler, collate_fn=collate,
                        **loader_options(cfg.workers, device, seed=cfg.seed, rank=rank))
    return loader, decoder


class StudentWrappers:
    """The student as a run's task calls it: ``--channels-last``, then under ``torchrun`` a DDP wrapper (after
    ``--sync-bn``'s conversion) for the student's own steps, then ``--compile``. :attr:`student` is the plain
    module, for weights files, checkpoints and evaluation (no ``module.`` or ``_orig_mod.`` prefix)."""

    def __init__(self, task, cfg, *, device: torch.device, world_size: int = 1, sync_bn: bool = False):
        self.task, self.world_size = task, world_size
        # the module itself (a task another trainer compiled holds a wrapper)
        self.student = task.student = getattr(task.student, "_orig_mod", task.student)
        if cfg.channels_last:  # before DDP: its buckets take the parameters' final layout
            channels_last_modules(self.student, getattr(task, "teacher", None))
        if world_size > 1:
            if sync_bn:
                self.student = task.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            ids = [device.index or torch.cuda.current_device()] if device.type == "cuda" else None
            self.ddp = task.student = DistributedDataParallel(self.student, device_ids=ids)
        self.plain = self.student  # what the augmentor's steps call (no gradient sync)
        if cfg.compile:
            self.compile()

    def compile(self) -> None:
        """``--compile``: the task calls compiled wrappers of the student (DDP's, under DDP) and the teacher."""
        self.plain = compile_module(self.student)
        if self.world_size > 1:
            self.ddp = self.task.student = compile_module(self.ddp)
        else:
            self.task.student = self.plain
        teacher = getattr(self.task, "teacher", None)
        if teacher is not None:  # a distillation task
            self.task.teacher = compile_module(getattr(teacher, "_orig_mod", teacher))

    @contextmanager
    def plain_student(self):
        """The task calls the bare student: the augmentor's steps must not start a DDP gradient sync."""
        if self.world_size == 1:
            yield
            return
        self.task.student = self.plain
        try:
            yield
        finally:
            self.task.student = self.ddp
