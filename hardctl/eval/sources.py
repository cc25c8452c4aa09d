"""Where a suite's data sets live: ``--data-root DIR``, ``--set NAME=DIR``, and what was looked for.

A suite names each data set it reads by a *source*: a key (what ``--set KEY=DIR`` overrides), the
folders under ``--data-root`` where the official archive extracts to, and the sub-folders a user may
have kept when pointing ``--set`` at the archive's parent. :class:`Locator` resolves a source to a
folder, or says which paths it tried, so a missing set is reported as skipped with those paths and
the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hardctl.values import key_value_pairs
from hardctl.errors import UsageError, did_you_mean

__all__ = ["Found", "Locator", "Source", "parse_set_options", "skip_reason"]


@dataclass(frozen=True)
class Source:
    """One data set a suite reads.

    ``paths`` are tried in order under ``--data-root``; under a ``--set KEY=DIR`` folder the ``nested``
    sub-folders are tried before DIR itself (``cifar-10-batches-py`` inside ``--set cifar10=DIR``, for
    a DIR the archive was extracted into); ``marker`` names a file that
    must exist in the folder for it to count (alternatives allowed: ``("x", "x.gz")``); ``default`` is
    a system folder tried last (Debian's Fashion-MNIST).
    """

    key: str
    paths: tuple[str, ...]
    help: str = ""
    nested: tuple[str, ...] = ()
    marker: tuple[str, ...] = ()
    default: str | None = None


@dataclass
class Found:
    """A resolved source: the folder, or ``None`` and every path that was tried."""

    source: Source
    path: Path | None
    looked: list[Path] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return skip_reason(self.looked)


def skip_reason(looked: Iterable[Path | str]) -> str:
    paths = [str(p) for p in looked]
    return "not found: looked for " + (", ".join(paths) if paths else "nothing (no --data-root or --set given)")


class Locator:
    """Resolves sources against ``--data-root`` and explicit ``--set`` folders."""

    def __init__(self, data_root: str | os.PathLike[str] | None = None,
                 sets: Mapping[str, str | os.PathLike[str]] | None = None):
        self.data_root = Path(data_root).expanduser() if data_root is not None else None
        self.sets = {k: Path(v).expanduser() for k, v in (sets or {}).items()}

    def _ok(self, folder: Path, source: Source) -> bool:
        if not folder.is_dir():
            return False
        return not source.marker or any((folder / m).exists() for m in source.marker)

    def find(self, source: Source, fallback: str | None = None) -> Found:
        """The folder of ``source``; ``fallback`` is another source key whose ``--set`` folder counts too
        (ReaL reads the validation folder)."""
        explicit = self.sets.get(source.key) or (self.sets.get(fallback) if fallback else None)
        if explicit is not None:  # the folder itself, or the archive's own folder inside it
            candidates = [*(explicit / n for n in source.nested), explicit]
        else:
            candidates = [self.data_root / p for p in source.paths] if self.data_root is not None else []
            if source.default:
                candidates.append(Path(source.default))
        looked: list[Path] = []
        for folder in dict.fromkeys(candidates):
            looked.append(folder)
            if self._ok(folder, source):
                return Found(source, folder, looked)
        if source.marker:
            looked = [p / source.marker[0] for p in looked]
        return Found(source, None, looked)


def parse_set_options(values: Iterable[str], known: Mapping[str, str]) -> dict[str, Path]:
    """``["imagenet-a=/data/a", ...]`` -> ``{"imagenet-a": Path("/data/a")}``, checked against ``known``
    (key -> help); a malformed entry, an unknown key or a missing folder is a usage error."""
    out: dict[str, Path] = {}
    for key, folder in key_value_pairs(values, flag="--set", form="NAME=DIR", need_value=True,
                                       example="--set imagenet-a=/data/imagenet-a"):
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise UsageError(f"--set: the chosen suites read no set {key!r}{did_you_mean(key, known)}",
                             hint=f"they read: {names}")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UsageError(f"--set {key}: no such folder {path}", hint="pass the folder the archive extracted to")
        if key in out:
            raise UsageError(f"--set {key} given twice", hint="keep one")
        out[key] = path
    return out
