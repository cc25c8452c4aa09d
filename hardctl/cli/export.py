"""``hardctl export``: a run's student as a safetensors, ONNX or TorchScript file, checked after writing."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hardctl.cli.root import app
from hardctl.cli.common import Json

# not common.Force: that one speaks of run directories, and export replaces a file
Force = Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")]


@app.command(epilog="Examples:  hardctl export runs/kd --out student.safetensors\n\n"
             "hardctl export runs/kd --format onnx --dynamic-batch --out student.onnx")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished hardctl run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "The file to write: .safetensors, .onnx, or .pt/.ts for TorchScript."))],
    fmt: Annotated[str, typer.Option("--format", "-f", help=(
        "safetensors (hardctl's weights file; --model FILE loads it) | onnx (needs pip install 'hardctl\\[onnx]') "
        "| torchscript. onnx and torchscript take pixels in [0, 1]: the normalisation is built in."))
    ] = "safetensors",
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset, 18 or newer \\[default: 18].")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help=(
        "ONNX: any batch size (default: a fixed batch of 1)."))] = False,
    atol: Annotated[float, typer.Option("--atol", help=(
        "Largest absolute logit difference from the PyTorch model allowed when the written file is checked "
        "on the run's test images."))] = 1e-4,
    which: Annotated[str, typer.Option("--which", help=(
        "selected (the student the run reports, its --select), best (highest validation accuracy) or last."))] = "selected",
    force: Force = False,
    json: Json = False,
) -> None:
    """Write the student with metadata (architecture, class names, input size, mean/std, provenance), then run
    the file on the run's test images and compare its logits with the PyTorch model's."""
    from hardctl.export import export_run

    result = export_run(run_dir, out, which=which, fmt=fmt, opset=opset, dynamic_batch=dynamic_batch, atol=atol,
                        force=force)
    for note in result["notes"]:
        print(f"hardctl: warning: {note}", file=sys.stderr)
    if json:
        print(jsonlib.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"wrote {result['out']} ({fmt}, {result['arch']}, {result['num_classes']} classes); "
              f"max |logit difference| {result['max_abs_diff']:.2g} on {result['checked_on']} (tolerance {atol:g})")
