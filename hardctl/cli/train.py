"""``hardctl train``: supervised training of a teacher or of a stand-alone student baseline."""

from __future__ import annotations

from typing import Annotated

import typer

from hardctl.cli.root import app
from hardctl.cli.common import MODEL, D, LabelSmoothing, config_from_params, start_run, with_run_options

Model = Annotated[str, typer.Option("--model", "-m", rich_help_panel=MODEL, help=(
    "timm name, alias (mnist_cnn, mnist_mlp, mnist_vit, resnet18_cifar, vit_cifar, vit_s14, resnet18, ...), "
    ".safetensors file, NAME:FILE (timm architecture + weights file) or run dir."))]


@app.command(epilog="Examples:  hardctl train --model mnist_cnn --data digits --epochs 15 --out runs/teacher\n\n"
             "hardctl train --model mnist_mlp --data fashion-mnist --out runs/student-only")
@with_run_options
def train(
    ctx: typer.Context,
    model: Model = D.model,
    label_smoothing: LabelSmoothing = D.label_smoothing,
    **options,
) -> None:
    """Train a classifier with cross-entropy on the labels (a teacher, or a student baseline).

    Writes a run directory with config.toml, steps.jsonl, epochs.jsonl, model.safetensors (the reported
    model: by default the best validation accuracy, see --select), best.safetensors, last.safetensors,
    checkpoints/ and summary.json; prints centered and shifted test accuracy of the reported model.
    """
    start_run(ctx, config_from_params("train", ctx.params))
