"""One writer per folder: the lock a run holds on its directory (and ``recipes run`` on its ``--out``).

Two processes writing one run directory corrupt it (the config of one, the weights of the other, every
step twice). A :class:`DirLock` is an exclusive lock on ``FOLDER/.hardctl-lock``, taken without waiting:
the second process is refused with a usage error that names the first one's pid.

On Linux and macOS it is an ``flock``: the kernel releases it when its process dies, however it dies, so a
lock left by a killed run is never in the way. Where ``flock`` is unavailable (no ``fcntl``, or a network
file system that refuses it) the lock file's pid decides instead: a lock whose process no longer exists is
stale and taken over. On Windows ``msvcrt.locking`` plays ``flock``'s part. The lock file stays when the
lock is released (removing it would let a waiting process lock a file no longer in the folder).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hardctl.errors import UsageError
from hardctl.runfiles import LOCK_FILE

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere else
    msvcrt = None

__all__ = ["DirLock", "LOCK_FILE", "locked_folder"]

_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
_held: set[str] = set()  # lock files this process holds: a second DirLock in one process is refused too


class DirLock:
    """An exclusive lock on ``folder`` (which must exist), held from :meth:`acquire` to :meth:`release`.

    ``what`` names the folder in the refusal ("--out")."""

    def __init__(self, folder: str | os.PathLike[str], what: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self._key = ""
        self._pid_only = False  # flock unavailable here: the pid in the file is the lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        """Take the lock or raise :class:`~hardctl.errors.UsageError` (exit 2) naming the holder's pid."""
        if self._fd is not None:
            return self
        key = os.path.realpath(self.path)
        if key in _held:
            self._refuse()
        for _ in range(10):  # a holder may remove the file (abandoning a folder it made) between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked, pid_only = _lock(fd, self.path)
                if not locked:
                    self._refuse()
                if _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:
            raise UsageError(f"cannot lock {self.path}: it keeps being replaced", hint=f"pick another {self.what}")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._key, self._pid_only = fd, key, pid_only
        _held.add(key)
        return self

    def check(self) -> None:
        """Refuse now if another process holds the lock, creating nothing (called before a run's checks:
        "in use" explains a busy folder better than "not empty")."""
        if self._fd is not None or not self.path.is_file():
            return
        if os.path.realpath(self.path) in _held:
            self._refuse()
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return  # unreadable: acquire() says what is wrong
        try:
            if not _lock(fd, self.path)[0]:
                self._refuse()
        finally:
            os.close(fd)  # closing drops the probe's lock

    def release(self, *, remove: bool = False) -> None:
        """Let go; the file stays unless ``remove`` (the folder it locks is being removed)."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        elif self._pid_only:
            os.ftruncate(self._fd, 0)  # an empty lock file is a free one
        os.close(self._fd)  # closing the descriptor drops the flock / msvcrt lock
        _held.discard(self._key)
        self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self) -> None:
        pid = _read_pid(self.path)
        who = f" (pid {pid})" if pid else ""
        raise UsageError(f"{self.what} {self.folder} is in use by another hardctl process{who}",
                         hint=f"wait for it to finish, or pick another {self.what}")


def _lock(fd: int, path: Path) -> tuple[bool, bool]:
    """Lock ``fd`` without waiting: (locked, whether only the pid in the file stands for the lock)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True, False
        except OSError as exc:
            if exc.errno in _BUSY:
                return False, False
            # ENOLCK, EOPNOTSUPP: e.g. an NFS mount without a lock daemon; fall back to the pid
    elif msvcrt is not None:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True, False
        except OSError:
            return False, False
    pid = _read_pid(path)  # free if no pid is written, it is ours (_held covers our own locks), or it is dead
    return pid is None or pid == os.getpid() or not _alive(pid), True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send a Ctrl-C there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def locked_folder(folder: str | os.PathLike[str], what: str = "--out") -> Iterator[Path]:
    """``folder`` (created if missing) locked for the block; if the block fails and the folder was created
    for it and holds nothing but the lock file, it goes again (a refused request leaves nothing behind)."""
    folder = Path(folder)
    created = not folder.exists()
    lock = DirLock(folder, what)
    lock.check()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {what} {folder}: {exc.strerror or exc}",
                         hint="pick a writable folder") from None
    try:
        try:
            lock.acquire()
        except OSError as exc:
            raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}",
                             hint=f"pick a writable {what}") from None
        yield folder
    except BaseException:
        left = [p.name for p in folder.iterdir()]
        if created and (not left or lock.held and left == [LOCK_FILE]):
            lock.release(remove=True)
            folder.rmdir()
        raise
    finally:
        lock.release()
