"""The run directory: its layout, safe creation, metric logs and resumable checkpoints.

Layout of ``RUN/``::

    config.toml            the resolved RunConfig (read back by --resume)
    steps.jsonl            one JSON object per optimisation step
    epochs.jsonl           one JSON object per epoch (losses, accuracies, lr, time)
    model.safetensors      the student's best-validation weights with metadata (what ``RUN`` loads as)
    last.safetensors       the student's weights after the last finished epoch
    checkpoints/last.pt    full training state after the last finished epoch (for --resume)
    checkpoints/best.pt    full training state at the best validation accuracy
    summary.json           final metrics
    log.txt                the run's log lines
    augmentors/            HARD's augmentor pool (hardctl.augment.pool.POOL_DIR)

The names are spelled once, in :mod:`hardctl.runfiles` (re-exported here). The JSON-lines logs are read
by :func:`read_jsonl` wherever they are read (``--resume``, ``visualize``). Every file is replaced atomically (temp file + rename), so an interrupted run leaves the previous
version intact. The teacher is never written: a checkpoint holds what the run trains, nothing else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardctl.atomic import atomic_path, atomic_write_bytes
from hardctl.errors import CheckpointError, UsageError
from hardctl.runfiles import (BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, EPOCHS_FILE, LAST_CHECKPOINT,
                              LAST_MODEL_FILE, LOG_FILE, MODEL_FILE, STEPS_FILE, SUMMARY_FILE)

__all__ = ["BEST_CHECKPOINT", "CHECKPOINT_DIR", "CONFIG_FILE", "EPOCHS_FILE", "LAST_CHECKPOINT", "LAST_MODEL_FILE",
           "LOG_FILE", "MODEL_FILE", "STEPS_FILE", "SUMMARY_FILE", "JsonlLog", "RunLog", "load_checkpoint",
           "prepare_run_dir", "read_jsonl", "rng_state", "save_checkpoint", "set_rng_state"]


def prepare_run_dir(out: Path, *, resume: bool = False, force: bool = False) -> Path:
    """Create ``out`` for a new run (or check it for a resumed one) before any work is done.

    A non-empty folder is refused unless resuming or ``force`` is given; ``force`` only ever deletes
    a folder that is itself a hardctl run, never arbitrary user files.
    """
    out = Path(out).expanduser()
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise UsageError(f"cannot resume: {out} is not a hardctl run directory (no {CONFIG_FILE})")
        if not (out / LAST_CHECKPOINT).is_file():
            raise UsageError(f"cannot resume: {out} has no {LAST_CHECKPOINT} yet", hint="start it again with --force")
        _check_writable(out)
        return out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder", hint="pick another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UsageError(
                f"--out {out} already exists and is not empty",
                hint="pass --resume to continue it, --force to replace it, or pick another --out",
            )
        if not (out / CONFIG_FILE).is_file():
            raise UsageError(f"--force refuses to delete {out}: it is not a hardctl run directory", hint="pick another --out")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {out}: {exc.strerror or exc}", hint="pick a writable folder") from None
    _check_writable(out)
    return out


def _check_writable(folder: Path) -> None:
    probe = folder / f".hardctl-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}", hint="pick a writable --out") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (``[]`` if there is no file), in order.

    A run killed while appending leaves its last line torn: that line is dropped, as nothing after it was
    written. Any other line that is not a JSON object means the file was damaged otherwise, a
    :class:`~hardctl.errors.CheckpointError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif index < len(lines) - 1:
            raise CheckpointError(f"cannot read {path}: line {number} is not a JSON object",
                                  hint="the file is damaged; start the run again with --force")
    return records


class JsonlLog:
    """Append-only JSON-lines log that can be cut back to a step when a run resumes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def truncate_after(self, key: str, value: int) -> None:
        """Drop records whose ``key`` exceeds ``value`` (written after the checkpoint we resume from).

        The file is rewritten whole, so a torn last line (see :func:`read_jsonl`) goes too and the
        resumed run appends after a complete line."""
        kept = [r for r in self.read() if r.get(key, 0) <= value]
        atomic_write_bytes(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_plain_to_numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _plain_to_numpy_state(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file, then rename: a crash mid-write keeps the old checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint without unpickling anything but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"no checkpoint at {path}") from None
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}", hint="it is damaged; start the run again with --force"
        ) from None


class RunLog:
    """The run's human-readable log: written to ``log.txt`` and echoed through ``echo``."""

    def __init__(self, path: Path | None, echo=None):
        self.path = Path(path) if path else None
        self.echo = echo

    def __call__(self, message: str) -> None:
        if self.echo is not None:
            self.echo(message)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
