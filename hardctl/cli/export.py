"""``hardctl export``: a run's student weights as one safetensors file with metadata."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from hardctl.cli.root import app
from hardctl.cli.common import Force, Json


@app.command(epilog="Example:  hardctl export runs/kd --out student.safetensors")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished hardctl run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write.")],
    which: Annotated[str, typer.Option("--which", help="best (highest validation accuracy) or last.")] = "best",
    force: Force = False,
    json: Json = False,
) -> None:
    """Write the student's weights with metadata (architecture, classes, input size, mean/std, provenance)."""
    from hardctl.export import export_run

    result = export_run(run_dir, out, which=which, force=force)
    if json:
        print(jsonlib.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"wrote {result['out']} ({result.get('arch')}, {result.get('num_classes')} classes)")
