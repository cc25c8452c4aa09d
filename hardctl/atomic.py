"""Atomic file replacement: a path holds either its old content or the complete new one, never half.

Everything hardctl writes into a run directory or an export goes through :func:`atomic_path`: the
writer fills a temporary file beside the target (``os.replace`` is atomic only within one file
system), which replaces the target only once writing succeeded and is removed if it failed.

Some files only make sense together (one epoch's checkpoint: its weights files and ``last.pt``).
Inside :func:`replace_together`, :func:`atomic_path` keeps the temporary files of the paths it names
instead of renaming them; when the block ends they are renamed as one: a journal listing every rename is
written first, so a process killed halfway is completed by :func:`finish_replacing` (the journal makes
the renames happen), while a failure or a kill before the journal leaves every old file as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "finish_replacing", "is_temp_name",
           "os_reason", "replace_together"]

# ``.NAME.PID.tmp``: what atomic_path writes; a leftover one is what a killed writer left behind
_TEMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_path` (a leftover of a killed writer if no
    process is writing)."""
    return bool(_TEMP_NAME.match(name))


class _Batch:
    """The temporary files of the paths a :func:`replace_together` block stages, in commit order."""

    def __init__(self, journal: Path, order: Iterable[Path]):
        self.journal = journal
        self.order = [Path(os.path.abspath(p)) for p in order]
        self.staged: dict[Path, Path] = {}  # final path -> its complete temporary file

    def stages(self, path: Path) -> bool:
        return Path(os.path.abspath(path)) in self.order

    def discard(self) -> None:
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()

    def commit(self) -> None:
        if not self.staged:
            return
        base = self.journal.parent
        renames = [(self.staged[p], p) for p in self.order if p in self.staged]
        try:
            for tmp, _ in renames:  # the content is on disk before the journal says to use it
                _fsync(tmp)
            atomic_write_json(self.journal, {"replace": [[os.path.relpath(tmp, base), os.path.relpath(final, base)]
                                                         for tmp, final in renames]})
            _fsync(self.journal)
        except BaseException:
            self.discard()
            self.journal.unlink(missing_ok=True)
            raise
        self.staged.clear()
        finish_replacing(self.journal)


_batch: ContextVar[_Batch | None] = ContextVar("hardctl_atomic_batch", default=None)


@contextmanager
def replace_together(journal: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """Within the block, writes to ``paths`` through :func:`atomic_path` become visible together.

    ``paths`` is also the order of the renames. The last one completes the set: once it is written, every
    staged file replaces its target (it is renamed last); what is staged without it is replaced when the
    block ends. ``journal`` names the file that lists the renames while they happen (beside or above the
    paths). An exception in the block removes every staged temporary file and replaces nothing more.
    """
    batch = _Batch(Path(journal), [Path(p) for p in paths])
    token = _batch.set(batch)
    try:
        yield
    except BaseException:
        batch.discard()
        raise
    finally:
        _batch.reset(token)
    batch.commit()


def finish_replacing(journal: str | os.PathLike[str]) -> list[Path]:
    """Complete the renames a :func:`replace_together` journal lists (after a kill halfway); returns the
    paths replaced now. Renaming is idempotent, so a kill during this call is completed by the next one.
    No journal: nothing to do. An unreadable one was never complete (it is written atomically): removed."""
    journal = Path(journal)
    try:
        renames = json.loads(journal.read_text())["replace"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        journal.unlink()
        return []
    done = []
    for tmp, final in renames:
        tmp, final = journal.parent / tmp, journal.parent / final
        if tmp.exists():
            os.replace(tmp, final)
            done.append(final)
    for folder in {final.parent for final in done}:
        _fsync_dir(folder)
    journal.unlink()
    return done


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is deleted.

    The process id in the temporary name keeps two processes writing one target apart. Inside a
    :func:`replace_together` block that names ``path``, success keeps the temporary file for the block's end.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    batch = _batch.get()
    try:
        yield tmp
        _give_plain_mode(tmp)
        if batch is not None and batch.stages(path):
            final = Path(os.path.abspath(path))
            batch.staged[final] = tmp
            tmp = None
            if final == batch.order[-1]:  # the file that completes the set: all of them are replaced now
                batch.commit()
        else:
            os.replace(tmp, path)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere the only way to read it is to set it
    and put it back (briefly 0 for other threads, so only as the fallback)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_plain_mode(tmp: Path) -> None:
    """Give a written temporary file the mode a plain ``open(path, "w")`` would: ``0666 & ~umask``.

    Some writers create files 0600 whatever the umask (safetensors does), and renaming keeps the mode,
    so without this a shared run directory or an exported model would be unreadable to the group.
    Best effort: a file system without Unix modes (some network or FUSE mounts) refuses chmod.
    """
    if os.name == "nt" or not tmp.is_file():
        return
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON, written like :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def os_reason(exc: BaseException) -> str | None:
    """The operating system's reason a write failed ("no space left on device", "file too large"), or None.

    Writers report it in different shapes: an ``OSError``; torch's zip writer a RuntimeError ("enforce fail
    at inline_container.cc") whose context is the OSError of the file object it wrote to; safetensors an
    error whose text ends in "(os error 28)". Found in ``exc`` or what caused it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code is None:
            match = re.search(r"\(os error (\d+)\)", str(exc))
            code = int(match.group(1)) if match else None
        if code in errno.errorcode:
            reason = os.strerror(code)
            return reason[:1].lower() + reason[1:]
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync(path: Path) -> None:
    if os.name == "nt":  # no fsync through a read-only handle there; NTFS journals its renames itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (not possible on every platform: best effort)."""
    try:
        _fsync(folder)
    except OSError:
        pass
