"""The evaluation loop: one streaming pass over a data set feeds one or more models.

It is hardctl's only evaluation loop: ``hardctl eval`` and recipes score through :func:`score`, a
training run's validation and test accuracy through :func:`accuracy` (one model, top-1 and loss).

* Data arrive through a :class:`~torch.utils.data.DataLoader` (workers, pinned memory on CUDA,
  never shuffled), so memory holds a few batches whatever the size of the set.
* uint8 batches become ``[0, 1]`` floats on the device; each model then applies its own mean/std,
  so models that share a preprocessing share one decoding pass (a teacher and its student, say).
* On CUDA: autocast (``amp``) and ``channels_last`` inputs.
* A CUDA out-of-memory error halves the batch size and the pass resumes at the first image whose
  batch had not been scored by every model (scorers are updated only once all models have their
  logits); the smaller batch size is kept for the rest of the run. At batch size 1 it gives up.
* Under ``torchrun`` (:mod:`hardctl.distributed`) each rank scores a contiguous W-th of the images and the
  scorers' counts are summed over the ranks, so every rank ends with the one-process numbers: the counts
  (top-1, top-5, ReaL hits, images) exactly, the summed loss up to float rounding. A scorer hardctl does
  not know how to sum (a plugin's) is run on all the images on every rank instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from hardctl import distributed
from hardctl.device import autocast_for
from hardctl.errors import HardctlError
from hardctl.eval.metrics import RealTopK, TopK

__all__ = ["Feed", "OutOfMemory", "PassStats", "accuracy", "batches", "make_loader", "score"]

OutOfMemory = torch.cuda.OutOfMemoryError  # torch.OutOfMemoryError in recent torch: the same class


@dataclass
class Feed:
    """A model as the loop drives it: the network and its input normalisation, both on the device."""

    model: nn.Module
    normalize: nn.Module | None = None


@dataclass
class PassStats:
    images: int = 0
    seconds: float = 0.0
    batch_size: int = 0  # the batch size the pass ended with
    retries: int = 0  # out-of-memory halvings during this pass


def make_loader(dataset: Dataset, batch_size: int, *, workers: int = 0, device: torch.device | str = "cpu") -> DataLoader:
    """The evaluation DataLoader: in order, pinned memory on CUDA, a few batches prefetched per worker.

    It has its own generator: a DataLoader draws its workers' base seed from the global torch RNG otherwise,
    so every evaluation inside a training run (validation, shifted validation) would move the training's
    random stream, and adding a logged metric would change the trained model."""
    device = torch.device(device)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=False, generator=torch.Generator().manual_seed(0),
                      prefetch_factor=4 if workers > 0 else None, persistent_workers=False)


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _clean_worker_error(exc: HardctlError) -> HardctlError:
    """A HardctlError raised in a loader worker comes back with the worker's traceback in its message;
    keep the original one-line message (the last line) so the CLI still prints one line."""
    lines = [line for line in exc.message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return exc
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return type(exc)(last.removeprefix(prefix))


def batches(dataset: Dataset, batch_size: int, *, workers: int = 0, device: torch.device | str = "cpu",
            channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images on the device as float [0, 1], targets on the device)``: the loop without a model."""
    device = torch.device(device)
    try:
        for images, targets in make_loader(dataset, batch_size, workers=workers, device=device):
            yield _to_device(images, device, channels_last), targets.to(device, non_blocking=True)
    except HardctlError as exc:
        raise _clean_worker_error(exc) from None


@torch.no_grad()
def score(
    feeds: Sequence[Feed],
    dataset: Dataset,
    make_scorer: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    amp: str = "off",
    workers: int = 0,
    channels_last: bool | None = None,
    on_retry: Callable[[int, int], None] | None = None,
) -> tuple[list, PassStats]:
    """Score every feed on ``dataset`` in one pass; returns one scorer per feed (``update``d with each
    batch's float32 logits and targets) and the pass's :class:`PassStats`.

    ``on_retry(old, new)`` is told each out-of-memory halving of the batch size.
    """
    device = torch.device(device)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    scorers = [make_scorer() for _ in feeds]
    sharded = distributed.active() and all(type(s) in (TopK, RealTopK) for s in scorers)
    if sharded:
        dataset = _shard(dataset)
    modes = [f.model.training for f in feeds]
    for feed in feeds:
        feed.model.eval()
    n, done, stats = len(dataset), 0, PassStats(batch_size=batch_size)
    start = time.perf_counter()
    try:
        while done < n:
            part = dataset if done == 0 else Subset(dataset, range(done, n))
            try:
                for images, targets in batches(part, stats.batch_size, workers=workers, device=device,
                                               channels_last=channels_last):
                    outputs = []
                    for feed in feeds:  # every model first: a failure leaves no scorer half-updated
                        x = feed.normalize(images) if feed.normalize is not None else images
                        with autocast_for(device, amp):
                            outputs.append(feed.model(x).float())
                    for scorer, logits in zip(scorers, outputs, strict=True):
                        scorer.update(logits, targets)
                    done += len(targets)
            except OutOfMemory:
                if stats.batch_size == 1:
                    raise HardctlError("out of GPU memory even at batch size 1",
                                       hint="free the GPU, use a smaller model or --device cpu") from None
                old, stats.batch_size = stats.batch_size, max(1, stats.batch_size // 2)
                stats.retries += 1
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if on_retry is not None:
                    on_retry(old, stats.batch_size)
    finally:
        for feed, mode in zip(feeds, modes, strict=True):
            feed.model.train(mode)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if sharded:
        for scorer in scorers:
            _sum_over_ranks(scorer)
        done = int(distributed.sum_tensor([done])[0])
    stats.images, stats.seconds = done, time.perf_counter() - start
    return scorers, stats


def _shard(dataset: Dataset) -> Dataset:
    """This rank's contiguous share of ``dataset`` (sizes differ by at most one image)."""
    info = distributed.current()
    n = len(dataset)
    return Subset(dataset, range(info.rank * n // info.world_size, (info.rank + 1) * n // info.world_size))


def _sum_over_ranks(scorer: TopK | RealTopK) -> None:
    """Replace a scorer's counts by their sums over the ranks (integers stay exact in float64 below 2^53)."""
    if isinstance(scorer, TopK):
        local = [float(scorer._hits1 or 0), float(scorer._hitsk or 0), float(scorer._loss or 0), scorer.n]
        hits1, hitsk, loss, n = distributed.sum_tensor(local)
        scorer._hits1, scorer._hitsk = torch.tensor(int(hits1)), torch.tensor(int(hitsk))
        scorer._loss, scorer.n = torch.tensor(loss, dtype=torch.float64), int(n)
    else:
        summed = distributed.sum_tensor([scorer.hits1, scorer.hitsk, scorer.n, scorer.excluded])
        scorer.hits1, scorer.hitsk, scorer.n, scorer.excluded = (int(v) for v in summed)


def accuracy(
    model: nn.Module,
    dataset: Dataset,
    *,
    normalize: nn.Module | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    amp: str = "off",
    workers: int = 0,
) -> dict[str, float]:
    """Top-1 accuracy (in %), mean cross-entropy and image count of one model: ``{"acc", "loss", "n"}``.

    One :func:`score` pass with a top-1 :class:`~hardctl.eval.metrics.TopK`; inputs keep their memory
    format (a model being trained is not converted to ``channels_last``). An empty set gives NaNs.
    """
    (scorer,), _ = score([Feed(model, normalize)], dataset, partial(TopK, k=1), device=device,
                         batch_size=batch_size, amp=amp, workers=workers, channels_last=False)
    result = scorer.result()
    if not result["images"]:
        return {"acc": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc": result["acc"], "loss": result["loss"], "n": result["images"]}
