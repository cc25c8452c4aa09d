"""The phase plot (``phases.png``): HARD's switching statistic over iterations, shaded by phase.

The statistic is the student's error on augmented data (``aug_error`` in ``steps.jsonl``), with ``l_min`` /
``l_max`` and the pool size. Matplotlib is imported only inside :func:`plot_phases` and draws on an Agg
canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hardctl.atomic import atomic_path
from hardctl.distill.rundir import read_jsonl
from hardctl.runfiles import EPOCHS_FILE, PHASES_FILE

__all__ = ["PHASES_FILE", "PHASE_COLOURS", "plot_phases", "read_steps", "switches_from_epochs"]

PHASE_COLOURS = {"student": "#4c72b0", "augmentor": "#dd8452", "joint": "#55a868"}
MAX_EPOCH_LINES = 12  # more epochs than this: a boundary line every k epochs


def read_steps(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``steps.jsonl`` that carry the switching statistic, one per iteration, in order.

    Read by :func:`hardctl.distill.rundir.read_jsonl` (a torn last line is dropped); a resumed run's
    repeated iterations keep their latest record.
    """
    by_iter: dict[int, dict[str, Any]] = {}
    for record in read_jsonl(path):
        if "iter" in record and record.get("aug_error") is not None:
            by_iter[int(record["iter"])] = record
    return [by_iter[i] for i in sorted(by_iter)]


def _phase_runs(records: Sequence[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Contiguous ``(phase, first, last)`` runs of iterations."""
    runs: list[tuple[str, int, int]] = []
    for r in records:
        phase, it = str(r.get("phase", "student")), int(r["iter"])
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], it)
        else:
            runs.append((phase, it, it))
    return runs


def switches_from_epochs(run_dir: str | Path) -> int | None:
    """The switch count of the last epoch record (exact, unlike counting phase changes in the steps)."""
    counts = [int(r["switches"]) for r in read_jsonl(Path(run_dir) / EPOCHS_FILE) if r.get("switches") is not None]
    return counts[-1] if counts else None


def plot_phases(records: Sequence[dict[str, Any]], path: str | Path, *, augmentor: str = "",
                l_min: float | None = None, l_max: float | None = None, switches: int | None = None,
                pool_size: int | None = None) -> Path:
    """Plot the switching statistic per iteration, shaded by phase, with thresholds and pool size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    runs = _phase_runs(records)
    phases = {p for p, _, _ in runs}
    joint = phases == {"joint"}
    if switches is None:
        switches = max(0, len(runs) - 1) if not joint else 0

    fig = Figure(figsize=(9, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if records:
        iters = [int(r["iter"]) for r in records]
        for phase, first, last in runs:
            colour = PHASE_COLOURS.get(phase, "#8c8c8c")
            ax.axvspan(first - 0.5, last + 0.5, color=colour, alpha=0.12, lw=0)
        # the statistic, one line per phase run so its colour follows the phase
        position = {it: k for k, it in enumerate(iters)}
        dots = len(records) <= 400  # few points: mark each one (a one-iteration phase has no line)
        for phase, first, last in runs:
            chunk = records[position[first]:position[last] + 1]
            ax.plot([int(r["iter"]) for r in chunk], [float(r["aug_error"]) for r in chunk],
                    color=PHASE_COLOURS.get(phase, "#8c8c8c"), lw=0.8,
                    marker="." if dots or len(chunk) == 1 else None, ms=3)
        epochs = [(int(r["iter"]), r.get("epoch")) for r in records]
        starts = [it for (_, before), (it, after) in itertools.pairwise(epochs) if after != before and after is not None]
        every = max(1, math.ceil(len(starts) / MAX_EPOCH_LINES))  # 100 epochs: a line every 10, not 100 lines
        for k, it in enumerate(starts[every - 1::every]):
            ax.axvline(it - 0.5, color="#999999", lw=0.5, ls=":",
                       label=None if k else ("epoch boundary" if every == 1 else f"every {every} epochs"))
        ax.set_xlim(iters[0] - 0.5, iters[-1] + 0.5)
    else:
        ax.text(0.5, 0.5, "no step records in steps.jsonl", ha="center", va="center", transform=ax.transAxes)
    unused = " (unused: joint training)" if joint else ""
    if l_min is not None:
        ax.axhline(l_min, color="#2a9d8f", ls="--", lw=1, label=f"l_min = {l_min:g}{unused}")
    if l_max is not None:
        ax.axhline(l_max, color="#c44e52", ls="--", lw=1, label=f"l_max = {l_max:g}{unused}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("iteration (student and augmentor steps)")
    ax.set_ylabel("student error on augmented data")

    handles = [Patch(color=PHASE_COLOURS.get(p, "#8c8c8c"), alpha=0.5, label=f"{p} phase")
               for p in ("student", "augmentor", "joint") if p in phases]
    if records and any("pool_size" in r for r in records):
        twin = ax.twinx()
        pooled = [(int(r["iter"]), int(r["pool_size"])) for r in records if "pool_size" in r]
        if pool_size is not None and pool_size != pooled[-1][1]:  # a snapshot saved after the last step
            pooled.append((pooled[-1][0], pool_size))  # (HARD-Mix keeps one at the end of every epoch)
        twin.step([it for it, _ in pooled], [size for _, size in pooled], where="post",
                  color="#333333", lw=1.2, label="pool size")
        twin.set_ylabel("pool size")
        twin.set_ylim(0, max(size for _, size in pooled) + 1)
        twin.yaxis.get_major_locator().set_params(integer=True)
        handles += twin.get_legend_handles_labels()[0]
    handles = ax.get_legend_handles_labels()[0] + handles
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(handles), fontsize=7,
                  frameon=False)

    mode = "joint training, no phases" if joint else f"{switches} switch{'es' if switches != 1 else ''}"
    pool = f", pool of {pool_size}" if pool_size is not None else ""
    ax.set_title(f"HARD {augmentor or '?'}: {mode}{pool}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
