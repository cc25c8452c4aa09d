"""The run directory: its layout, safe creation, metric logs and resumable checkpoints.

Layout of ``RUN/``::

    config.toml            the resolved RunConfig (read back by --resume)
    steps.jsonl            one JSON object per optimisation step
    epochs.jsonl           one JSON object per epoch (losses, accuracies, lr, time)
    model.safetensors      the student the run reports (--select: last or best), what ``RUN`` loads as
    best.safetensors       the student's best-validation weights
    last.safetensors       the student's weights after the last finished epoch
    checkpoints/last.pt    full training state after the last finished epoch (for --resume)
    checkpoints/best.pt    full training state at the best validation accuracy
    summary.json           final metrics
    log.txt                the run's log lines
    log.rankN.txt          under torchrun: the log lines of rank N > 0 (hardctl.distributed)
    augmentors/            HARD's augmentor pool (hardctl.augment.pool.POOL_DIR)
    .hardctl-run           the marker: hardctl made this folder, so --force may replace it
    .hardctl-lock          locked by the process writing the run (hardctl.dirlock)
    .hardctl-commit.json   only while an epoch's checkpoint is being committed (see one_checkpoint)

The names are spelled once, in :mod:`hardctl.runfiles` (re-exported here). The JSON-lines logs are read
by :func:`read_jsonl` wherever they are read (``--resume``, ``visualize``). Every file is replaced
atomically (temp file + rename), so an interrupted run leaves the previous version intact, and the files
of one epoch's checkpoint are replaced together (:func:`one_checkpoint`). ``--force`` deletes only what
hardctl wrote, in a folder hardctl made (:func:`prepare_run_dir`). The teacher is never written: a
checkpoint holds what the run trains, nothing else.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from hardctl.atomic import (atomic_path, atomic_write_bytes, finish_replacing, is_temp_name, os_reason,
                            replace_together)
from hardctl.dirlock import DirLock, locked_folder
from hardctl.errors import CheckpointError, UsageError
from hardctl.runfiles import (BEST_CHECKPOINT, BEST_MODEL_FILE, CHECKPOINT_DIR, COMMIT_JOURNAL, CONFIG_FILE,
                              EPOCHS_FILE, EVAL_FILE, FIGURE_FILES, LAST_CHECKPOINT, LAST_MODEL_FILE, LOCK_FILE,
                              LOG_FILE, MODEL_FILE, POOL_DIR, RUN_MARKER, STEPS_FILE, SUMMARY_FILE)

__all__ = ["BEST_CHECKPOINT", "BEST_MODEL_FILE", "CHECKPOINT_DIR", "CHECKPOINT_FILES", "CONFIG_FILE", "EPOCHS_FILE",
           "LAST_CHECKPOINT", "LAST_MODEL_FILE", "LOG_FILE", "MODEL_FILE", "RUN_MARKER", "STEPS_FILE", "SUMMARY_FILE",
           "JsonlLog", "RunLog", "checkpoint_together", "foreign_entries", "is_run_dir", "load_checkpoint",
           "one_checkpoint", "open_run_dir", "prepare_run_dir", "read_jsonl", "remove_stale_temps", "rng_state",
           "save_checkpoint", "set_rng_state"]


# What --force may delete: hardctl's own names (and temporary files of its atomic writes) and nothing else.
_OWN_FILES = frozenset({CONFIG_FILE, STEPS_FILE, EPOCHS_FILE, MODEL_FILE, LAST_MODEL_FILE, BEST_MODEL_FILE,
                        SUMMARY_FILE, LOG_FILE, EVAL_FILE, *FIGURE_FILES, RUN_MARKER, LOCK_FILE, COMMIT_JOURNAL})
_OWN_FOLDERS = {CHECKPOINT_DIR: re.compile(r"^(last|best)\.pt$"), POOL_DIR: re.compile(r"^pool-\d+\.safetensors$")}
_RANK_LOG = re.compile(r"^log\.rank\d+\.txt$")  # ranks > 0 of a torchrun job log there
_BOOKKEEPING = frozenset({RUN_MARKER, LOCK_FILE})  # a folder holding only these is as good as empty
_WRITE_PROBE = ".hardctl-write-test-"
# One epoch's checkpoint, in commit order: last.pt goes last, so it never names an epoch whose files are not on disk.
CHECKPOINT_FILES = (LAST_MODEL_FILE, BEST_MODEL_FILE, MODEL_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT)


@contextmanager
def open_run_dir(out: Path, *, resume: bool = False, force: bool = False) -> Iterator[Path]:
    """The run directory ``out``, checked (:func:`prepare_run_dir`) and locked for the block: the one process
    writing it. A second run on it (new, ``--force`` or ``--resume``) is refused with exit 2 naming this
    one's pid; the lock goes when the block ends or the process dies. A folder the block created is removed
    again if it fails before writing anything (a run that never started leaves nothing behind)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder", hint="pick another --out")
    DirLock(out).check()  # before the checks below: "in use" says more than "not empty"
    _check_request(out, resume=resume, force=force)  # refused before anything is created or deleted
    created = not out.exists()
    with locked_folder(out):
        try:
            prepare_run_dir(out, resume=resume, force=force)
            yield out
        except BaseException:
            if created and {p.name for p in out.iterdir()} <= _BOOKKEEPING:
                (out / RUN_MARKER).unlink(missing_ok=True)  # then locked_folder removes the folder it made
            raise


def prepare_run_dir(out: Path, *, resume: bool = False, force: bool = False) -> Path:
    """Make the existing folder ``out`` ready for a new run (or check it for a resumed one), under its lock.

    A non-empty folder is refused unless resuming or ``force`` is given. ``force`` replaces only a hardctl
    run directory (see :func:`is_run_dir`) and deletes only hardctl's own files in it: anything else in the
    folder is a usage error naming it. Resuming completes a checkpoint commit a kill interrupted and removes
    the temporary files of writes it cut short. Use :func:`open_run_dir`, which takes the lock first.
    """
    out = Path(out)
    _check_request(out, resume=resume, force=force)
    if resume:
        finish_replacing(out / COMMIT_JOURNAL)  # before last.pt is looked for: the commit may be what makes it
        remove_stale_temps(out)
        if not (out / LAST_CHECKPOINT).is_file():
            raise UsageError(f"cannot resume: {out} has no {LAST_CHECKPOINT} yet", hint="start it again with --force")
    else:
        for entry in sorted(out.iterdir()):
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    _check_writable(out)
    if not (out / RUN_MARKER).is_file():  # a run of an older version that is resumed gets one too
        (out / RUN_MARKER).write_text("made by hardctl: --force may replace this folder\n")
    return out


def _check_request(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse what cannot be done with ``out``; deletes and creates nothing."""
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise UsageError(f"cannot resume: {out} is not a hardctl run directory (no {CONFIG_FILE})")
        if not (out / LAST_CHECKPOINT).is_file() and not (out / COMMIT_JOURNAL).is_file():
            raise UsageError(f"cannot resume: {out} has no {LAST_CHECKPOINT} yet", hint="start it again with --force")
        return
    if not out.is_dir() or {p.name for p in out.iterdir()} <= _BOOKKEEPING:
        return
    if not force:
        raise UsageError(
            f"--out {out} already exists and is not empty",
            hint="pass --resume to continue it, --force to replace it, or pick another --out",
        )
    if not is_run_dir(out):
        raise UsageError(f"--force refuses to replace {out}: it is not a hardctl run directory",
                         hint="pick another --out, or empty the folder yourself")
    foreign = foreign_entries(out)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UsageError(f"--force refuses to replace {out}: it holds {foreign[0]}{more}, which hardctl did not write",
                         hint="move it elsewhere first, or pick another --out")


def is_run_dir(folder: Path) -> bool:
    """Whether ``folder`` is a run directory hardctl made: it holds the marker hardctl writes into every run
    directory it creates, or (runs of versions before the marker) a ``config.toml`` next to ``steps.jsonl`` or
    ``checkpoints/``. Whether all of it may be deleted is :func:`foreign_entries`."""
    folder = Path(folder)
    if (folder / RUN_MARKER).is_file():
        return True
    return (folder / CONFIG_FILE).is_file() and ((folder / STEPS_FILE).is_file() or (folder / CHECKPOINT_DIR).is_dir())


def foreign_entries(folder: Path) -> list[Path]:
    """What in the run directory ``folder`` hardctl did not write (sorted): what ``--force`` must not delete.

    hardctl's own: the files named in :mod:`hardctl.runfiles`, ``checkpoints/{last,best}.pt``, the augmentor
    pool's ``augmentors/pool-NNN.safetensors``, and the temporary files of interrupted writes. A symbolic
    link is never hardctl's (deleting through it could reach anywhere)."""
    foreign = []
    for entry in sorted(Path(folder).iterdir()):
        name = entry.name
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_dir():
            pattern = _OWN_FOLDERS.get(name)
            if pattern is None:
                foreign.append(entry)
                continue
            foreign += [inner for inner in sorted(entry.iterdir())
                        if inner.is_symlink() or not inner.is_file() or not (pattern.match(inner.name)
                                                                              or is_temp_name(inner.name))]
        elif not (name in _OWN_FILES or _RANK_LOG.match(name) or is_temp_name(name) or name.startswith(_WRITE_PROBE)):
            foreign.append(entry)
    return foreign


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete what writes cut short by a kill left in the run directory ``folder`` (temporary files of atomic
    writes, the write probe) and return it. Only safe under the folder's lock: nobody else is writing."""
    folder = Path(folder)
    removed = []
    for where in (folder, folder / CHECKPOINT_DIR, folder / POOL_DIR):
        if not where.is_dir():
            continue
        for entry in where.iterdir():
            if entry.is_file() and not entry.is_symlink() and (is_temp_name(entry.name)
                                                               or entry.name.startswith(_WRITE_PROBE)):
                entry.unlink()
                removed.append(entry)
    return sorted(removed)


def _check_writable(folder: Path) -> None:
    probe = folder / f"{_WRITE_PROBE}{os.getpid()}"
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
    """``torch.save`` to a temp file, then rename: a crash mid-write keeps the old checkpoint.

    A full disk (or a file-size limit) is a :class:`~hardctl.errors.CheckpointError` that says so. torch
    writes through a Python file object here so that the operating system's error survives: its own file
    writer reports only "enforce fail at inline_container.cc"."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as exc:
        reason = os_reason(exc)
        if reason is None and not isinstance(exc, OSError) and "inline_container" not in str(exc):
            raise  # not a failed write: a bug, keep its traceback
        raise _cannot_write(path, reason or str(exc), path.parent / Path(LAST_CHECKPOINT).name) from None


def _cannot_write(path: Path, reason: str, last: Path) -> CheckpointError:
    """The error of a checkpoint that could not be written; ``last``: the run's committed ``last.pt``."""
    if last.is_file():
        hint = "make room (disk space, file-size limit) and continue with --resume; the previous checkpoint is intact"
    else:
        hint = "make room (disk space, file-size limit) and start it again with --force"
    return CheckpointError(f"cannot write checkpoint {path}: {reason}", hint=hint)


@contextmanager
def checkpoint_together(run_dir: Path) -> Iterator[None]:
    """In the block, the files of one checkpoint (:data:`CHECKPOINT_FILES`) are written to temporary files and
    replace the old ones together once ``last.pt`` is written, ``last.pt`` last
    (:func:`hardctl.atomic.replace_together`): a failed write (disk full) keeps the whole previous
    checkpoint, and a kill while they are renamed is completed by ``--resume`` (:func:`prepare_run_dir`).
    So ``last.safetensors`` never shows a later epoch than ``checkpoints/last.pt``."""
    run_dir = Path(run_dir)
    body_done = False
    try:
        with replace_together(run_dir / COMMIT_JOURNAL, [run_dir / name for name in CHECKPOINT_FILES]):
            yield
            body_done = True
    except OSError as exc:
        if not body_done:
            raise
        last = run_dir / LAST_CHECKPOINT
        raise _cannot_write(last, os_reason(exc) or str(exc), last) from None


def one_checkpoint(method):
    """Decorate a trainer method that writes one epoch's checkpoint (it has ``self.run_dir``): what it writes
    of :data:`CHECKPOINT_FILES` appears together when it writes ``last.pt`` (:func:`checkpoint_together`).
    Until then those paths hold the previous epoch's files, which is what the method reads if it reads one
    back; an exception before then (Ctrl-C included) leaves all of them as they were."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with checkpoint_together(self.run_dir):
            return method(self, *args, **kwargs)

    return wrapper


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
