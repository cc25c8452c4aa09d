"""Learning curves (``curves.png``): centered and shifted validation accuracy per epoch.

The shifted copy of the validation split shows when a student picks up the invariance that HARD transfers —
centered validation accuracy cannot see it (which is why ``distill`` reports its final student, not the
best-validation one). Neither curve comes from the test split. Matplotlib is imported inside
:func:`plot_curves` and draws on an Agg canvas, as in :mod:`.phases`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hardctl.atomic import atomic_path
from hardctl.runfiles import CURVES_FILE

__all__ = ["CURVES_FILE", "plot_curves"]



def plot_curves(epochs: Sequence[dict[str, Any]], path: str | Path, *, title: str = "",
                select: str | None = None) -> Path:
    """Plot ``val_acc`` and ``val_shifted_acc`` (when logged) of ``epochs.jsonl``'s records over epochs, marking
    the best-validation epoch; ``select`` names the checkpoint the run reports."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(7, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [int(r["epoch"]) for r in epochs]
    ax.plot(xs, [float(r["val_acc"]) for r in epochs], color="#4c72b0", lw=1.2, label="validation, centered")
    shifted = [(int(r["epoch"]), float(r["val_shifted_acc"])) for r in epochs if r.get("val_shifted_acc") is not None]
    if shifted:
        ax.plot([e for e, _ in shifted], [a for _, a in shifted], color="#dd8452", lw=1.2,
                label="validation, shifted like the test set")
    if epochs:
        best = max(epochs, key=lambda r: float(r["val_acc"]))  # the first epoch of the best, as the trainer keeps it
        ax.axvline(int(best["epoch"]), color="#999999", lw=0.8, ls=":",
                   label=f"best centered validation (epoch {best['epoch']})")
    else:
        ax.text(0.5, 0.5, "no epoch records in epochs.jsonl", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    reported = f" — reports the {select} student" if select else ""
    ax.set_title(f"{title}{reported}", fontsize=10)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
