"""Multi-process runs under ``torchrun``: the process group, this rank's place, and the collectives hardctl uses.

hardctl never launches processes itself: ``torchrun`` (or ``srun`` setting the same variables) starts one
process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`setup` joins the group once per process (NCCL when the run is on CUDA, gloo on the CPU;
``LOCAL_RANK`` picks the GPU) and leaves it at exit. With one process every helper here is a no-op, so the
single-process code path does not change.

Decisions (the README documents them):

* ``--batch-size`` and ``--aug-batch-size`` are **global**: each of W ranks takes ``batch/W`` rows (rows
  ``r::W`` of the one-process batch, see :class:`hardctl.distill.sampling.EpochSampler`), so a W-rank run
  computes what a one-process run with the same batch does. Per-rank means are weighted by the rank's share
  of the global batch (:func:`global_means`), so the last, smaller batch of an epoch averages right too.
* A collective that fails because another rank died or hung (gloo's closed connection, a timeout after
  ``--dist-timeout`` seconds) becomes one :class:`~hardctl.errors.TrainingError` line
  (:func:`translate_errors`) instead of a traceback or a hang; ``--resume`` continues the run.
* Rank 0 alone writes the run's files; rank N > 0 logs to ``<run>/log.rankN.txt`` (:func:`rank_log_name`).
"""

from __future__ import annotations

import atexit
import os
import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from hardctl.distill.sampling import DistInfo
from hardctl.errors import HardctlError, TrainingError, UsageError

__all__ = ["DEFAULT_TIMEOUT", "TIMEOUT_ENV", "active", "all_gather_object", "average_gradients", "barrier",
           "broadcast_buffers", "broadcast_object", "current", "global_means", "rank_log_name", "same_on_all_ranks",
           "setup", "sum_tensor", "translate_errors"]

DEFAULT_TIMEOUT = 600  # seconds a collective waits for the other ranks (--dist-timeout)
TIMEOUT_ENV = "HARDCTL_DIST_TIMEOUT"  # how `hardctl eval` (which has no --dist-timeout) is told another timeout


def rank_log_name(rank: int) -> str:
    """The log file of a rank other than 0 (rank 0 writes ``log.txt``)."""
    return f"log.rank{rank}.txt"


def current() -> DistInfo:
    """This process's rank and world size: the initialised group's, else the environment's (1 process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo.from_env()


def active() -> bool:
    """Whether collectives run: more than one process, in an initialised group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the ``torchrun`` job this process belongs to (once; later calls return the same). ``device`` is the
    ``--device`` word: a CUDA run uses NCCL and the GPU ``LOCAL_RANK`` names, anything else gloo."""
    info = DistInfo.from_env()
    if info.world_size <= 1 or dist.is_initialized():
        return current()
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed", hint="run a single process")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE is {info.world_size} but {' and '.join(missing)} is not set",
                         hint="start multi-process runs with torchrun (or srun setting the torchrun variables)")
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(info.local_rank)  # "cuda" now means this rank's GPU everywhere
    # NCCL only aborts a stuck collective (instead of hanging past the timeout) with async error handling
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                                rank=info.rank, world_size=info.world_size,
                                device_id=torch.device("cuda", info.local_rank) if cuda else None)
    except Exception as exc:  # a rank that never came, a port in use, ...
        raise TrainingError(f"rank {info.rank}: could not join the {info.world_size}-process group: "
                            f"{_reason(exc)}", hint="check MASTER_ADDR/MASTER_PORT and that every rank started") from None
    atexit.register(_teardown)
    return current()


def _teardown() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # the group is gone with a dead peer; the process ends anyway
            pass


def _reason(exc: BaseException) -> str:
    """The first line of a backend's error, without its C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\s*\(?[\w/.-]+\.(cpp|cc|h):\d+\)?|\[\s*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:200]  # the first sentence: the backend's advice runs on


@contextmanager
def translate_errors() -> Iterator[None]:
    """Inside the block, a failed collective (another rank died, or did not answer within the timeout) becomes
    one TrainingError line naming this rank; errors of hardctl itself pass unchanged."""
    try:
        yield
    except HardctlError:
        raise
    except (RuntimeError, OSError) as exc:
        comm = isinstance(exc, getattr(dist, "DistError", ())) or re.search(
            r"gloo|nccl|connection|timed out|timeout|peer|socket|broken pipe|ProcessGroup", str(exc), re.I)
        if not active() or not comm:
            raise
        raise TrainingError(f"rank {dist.get_rank()}: lost the other ranks ({_reason(exc)}): another rank stopped "
                            "or did not answer within --dist-timeout",
                            hint="see the ranks' logs (log.txt, log.rankN.txt); continue with --resume") from None


def barrier() -> None:
    if active():
        dist.barrier()


def _device() -> torch.device:
    """Where collectives' tensors live: NCCL needs CUDA tensors, gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_tensor(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks (float64), in the order given."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def global_means(record: dict[str, Any], share: float) -> dict[str, Any]:
    """``record`` with its float values replaced by the global batch's means: each rank's mean weighted by
    ``share``, its fraction of the global batch (``1/W`` for equal shards). Other values (indices, labels)
    stay; they are the same on every rank."""
    if not active():
        return record
    keys = [k for k, v in record.items() if isinstance(v, float)]
    sums = sum_tensor([record[k] * share for k in keys])
    return {**record, **dict(zip(keys, sums, strict=True))}


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over the ranks, in one flat all-reduce (the augmentor's: it is not
    DDP-wrapped because its steps run between the student's and its forward differs per phase)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    moved = flat.to(_device())
    dist.all_reduce(moved)
    moved.div_(dist.get_world_size())
    flat = moved.to(flat.device)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, as DDP does before each training forward:
    evaluation and the augmentor's frozen student then see the same model everywhere."""
    if not active():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
            moved = buffer.detach().to(_device())
            dist.broadcast(moved, 0)
            buffer.data.copy_(moved.to(buffer.device))


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def same_on_all_ranks(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are bit-identical on every rank (a check that HARD's ranks are in lockstep)."""
    if not active():
        return True
    flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors]).to(_device())
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
