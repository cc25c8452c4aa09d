"""Which code made a result: the hardctl version and the commit of its git checkout or `git archive` export.

A table in the README or ``docs/`` must say what produced it, and ``recipes run`` must not silently reuse a
run that an older hardctl made: both read :func:`code_version`.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import hardctl

__all__ = ["archive_commit", "code_version", "describe"]

ARCHIVE_COMMIT = Path(hardctl.__file__).resolve().parent / "ARCHIVE_COMMIT"


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"hardctl": version, "commit": sha or None, "dirty": bool or None}``; the commit is that of the git
    checkout holding this package (an installed wheel has none), ``dirty`` whether tracked files differ from it."""
    root = Path(hardctl.__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        commit = archive_commit()
    return {"hardctl": hardctl.__version__, "commit": commit, "dirty": dirty}


def archive_commit(path: Path = ARCHIVE_COMMIT) -> str | None:
    """The commit ``git archive`` wrote into ``ARCHIVE_COMMIT`` (``export-subst`` in ``.gitattributes``): a tree
    exported with ``git archive`` (or a forge's source tarball) has no ``.git`` but still knows its commit. A
    checkout's copy holds the unexpanded placeholder, which is None."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{40}", text) else None


def describe(code: dict[str, Any] | None) -> str:
    """``hardctl 0.1.0 at 1a2b3c4`` (``+ local changes`` when dirty) for logs and tables."""
    if not code:
        return "an unknown hardctl version"
    text = f"hardctl {code.get('hardctl')}"
    if code.get("commit"):
        text += f" at {code['commit'][:7]}" + (" + local changes" if code.get("dirty") else "")
    return text
