"""``hardctl visualize``: a HARD run's augmentation grid and phase plot as PNGs."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from hardctl.cli.root import app
from hardctl.cli.common import Json


@app.command(epilog="Examples:  hardctl visualize runs/hard\n\n"
             "hardctl visualize runs/hard --out figures --rows 4 --snapshots 8 --json")
def visualize(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of hardctl distill --augmentor NAME.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the PNGs (default: RUN_DIR).")] = None,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Validation images, one per row.")] = 8,
    snapshots: Annotated[int, typer.Option("--snapshots", min=1, help=(
        "Pool snapshots shown, evenly from the first (identity) to the last."))] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random draw every column replays.")] = 0,
    json: Json = False,
) -> None:
    """Draw augmentations.png (images x pool snapshots, early to late), phases.png (switching statistic) and
    curves.png (centered and shifted validation accuracy per epoch)."""
    from hardctl.visualize import render

    paths = render(run_dir, out, rows=rows, snapshots=snapshots, seed=seed)
    if json:
        print(jsonlib.dumps({k: str(v) for k, v in paths.items()}, indent=2, sort_keys=True))
    else:
        for path in paths.values():
            print(f"wrote {path}")
