"""Errors the user can act on.

Every error hardctl raises on bad input is a :class:`HardctlError` carrying a one-line message that
names the problem and the fix. The CLI turns it into a line on stderr and an exit code: 2 for usage
errors (bad option, unknown name, missing file), 1 for runtime failures (a run that diverges, a
corrupt checkpoint, a folder that cannot be written). Anything else is a bug and keeps its traceback
under ``--debug``.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class HardctlError(Exception):
    """A failure with a message meant for the user. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.oneline())

    def oneline(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(HardctlError):
    """The user asked for something that cannot exist: a wrong name, option, path or value."""

    exit_code = 2


class DataError(UsageError):
    """A data spec that names unknown formats or files that are missing or malformed."""


class ModelError(UsageError):
    """A model spec that names no known architecture, file or run directory."""


class CheckpointError(HardctlError):
    """A weights/checkpoint file that exists but cannot be read (truncated, corrupt, foreign)."""


class TrainingError(HardctlError):
    """A run that failed while training (e.g. a non-finite loss)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest matches, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def shorten(text: str, limit: int = 200) -> str:
    """The first line of a foreign exception's text, cut at a word boundary with "…" when longer than
    ``limit`` characters. For the text of a library's exception quoted in a HardctlError message; the
    message of a HardctlError itself is never cut (its fix is at the end)."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0] if " " in first[:limit] else first[:limit]
    return cut.rstrip(" ,;:") + "…"
