"""Export a run's student as one self-describing safetensors file.

The file holds only the student's weights; its metadata names the architecture, classes, input
shape and normalisation (so ``--model FILE`` rebuilds it anywhere) plus where it came from: the run's
command, data, teacher and test accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

from hardctl.config import RunConfig
from hardctl.distill.rundir import LAST_MODEL_FILE, MODEL_FILE
from hardctl.errors import UsageError
from hardctl.models import load_model, save_model


def export_run(run_dir: Path, out: Path, *, which: str = "best", force: bool = False) -> dict[str, str]:
    """Write the run's ``best`` (highest validation accuracy) or ``last`` student weights to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if which not in ("best", "last"):
        raise UsageError(f"--which must be best or last, not {which!r}")
    source = run_dir / (MODEL_FILE if which == "best" else LAST_MODEL_FILE)
    if not run_dir.is_dir():
        raise UsageError(f"no such run directory: {run_dir}")
    if not source.is_file():
        raise UsageError(f"{run_dir} has no {source.name}", hint="export a finished hardctl run directory")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out} must end in .safetensors")
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="pass --force to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist", hint="create it first")
    model, info = load_model(str(source))
    cfg = RunConfig.load(run_dir)
    extra = {"run_command": cfg.command, "data": cfg.data, "weights": which, "student": cfg.model}
    if cfg.teacher:
        extra["teacher"] = cfg.teacher
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        extra["test_acc"] = f"{summary['student']['test_acc']:.4f}"
        extra["shifted_acc"] = f"{summary['student']['shifted_acc']:.4f}"
    save_model(model, info, out, extra=extra)  # atomic; a failed write raises CheckpointError, old file kept
    return {"source": str(source), "out": str(out), **info.to_metadata(), **extra}
