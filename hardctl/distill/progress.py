"""How a run reports progress: silently (library use), as a Rich bar, or as plain log lines.

The trainer calls ``start_epoch``/``step``/``end_epoch``/``log``; it never prints by itself. A Rich
progress bar only makes sense on a terminal; when stderr is a file or a pipe (CI, ``nohup``), the
plain reporter writes one line every ``every`` steps instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Reporter:
    """Reports nothing. Subclass and override what you need."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, record: dict[str, Any]) -> None: ...

    def end_epoch(self, record: dict[str, Any]) -> None: ...

    def log(self, message: str) -> None: ...

    def close(self) -> None: ...


class PlainReporter(Reporter):
    """Periodic one-line progress on a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, every: int = 20):
        self.stream = stream or sys.stderr
        self.every = max(1, every)
        self._epoch = (0, 0, 0)
        self._seen = 0
        self._t0 = time.perf_counter()

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._seen, self._t0 = (epoch, epochs, steps), 0, time.perf_counter()

    def step(self, record: dict[str, Any]) -> None:
        self._seen += 1
        epoch, epochs, steps = self._epoch
        if self._seen % self.every == 0 or self._seen == steps:
            rate = self._seen / max(1e-9, time.perf_counter() - self._t0)
            self.log(f"epoch {epoch}/{epochs} step {self._seen}/{steps} loss {record['loss']:.4f} "
                     f"lr {record['lr']:.2e} ({rate:.1f} it/s)")

    def log(self, message: str) -> None:
        print(message, file=self.stream, flush=True)


class RichReporter(Reporter):
    """A Rich progress bar per epoch on a terminal, log lines above it."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.progress.start()
        if self._task is not None:
            self.progress.remove_task(self._task)
        self._task = self.progress.add_task("train", total=steps, epoch=f"{epoch}/{epochs}", loss="-")

    def step(self, record: dict[str, Any]) -> None:
        self.progress.update(self._task, advance=1, loss=f"{record['loss']:.4f}")

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def reporter_for(stream: TextIO | None = None, every: int = 20) -> Reporter:
    """Rich on an interactive terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichReporter()
    return PlainReporter(stream, every=every)
