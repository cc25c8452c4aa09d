"""The library's entry point for one training run: ``run(cfg, out)`` behind ``hardctl train``/``distill``.

It owns the order of a run's side effects: the run directory is checked (or made) and locked first, then
everything that can fail on bad input is built, then the config is written and the trainer runs; at the
end the figures are drawn and ``summary.json`` is written last, so a summary on disk means a finished run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardctl.atomic import atomic_write_json
from hardctl.codeversion import code_version
from hardctl.config import RunConfig
from hardctl.distill import rundir
from hardctl.distill.build import build, resolve_config
from hardctl.distill.progress import Reporter
from hardctl.distill.trainer import Trainer

__all__ = ["run"]


def run(cfg: RunConfig, out: Path, *, resume: bool = False, force: bool = False,
        reporter: Reporter | None = None) -> dict[str, Any]:
    """Build, train and summarise one run in ``out``; returns the summary."""
    cfg = resolve_config(cfg)  # bad input (a device this machine lacks too) is refused before --out is touched
    # the directory is this process's until the run ends: a second run on it is refused (exit 2)
    with rundir.open_run_dir(out, resume=resume, force=force) as run_dir:
        trainer = Trainer(build(cfg), run_dir, reporter=reporter)
        if resume:
            trainer.resume()
        else:
            cfg.save(run_dir)
        summary = trainer.fit()
        if trainer.dist.is_main:
            if "hard" in summary:
                summary["hard"]["figures"] = draw_figures(trainer)
            summary["code"] = code_version()  # which hardctl made it (recipes do not reuse another version's runs)
            atomic_write_json(run_dir / rundir.SUMMARY_FILE, summary)
    return summary


def draw_figures(trainer: Trainer) -> dict[str, str]:
    """The augmentation grid, phase plot and learning curves of a HARD run; a figure never costs the user a
    finished run."""
    from hardctl.visualize import render  # matplotlib and PIL only when there is something to draw

    try:
        return {k: str(v) for k, v in render(trainer.run_dir, data=trainer.components.data).items()}
    except Exception as exc:
        trainer.log(f"could not draw the augmentation grid: {type(exc).__name__}: {exc}")
        return {}
