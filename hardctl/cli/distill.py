"""``hardctl distill``: knowledge distillation from a frozen teacher into a student."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from hardctl.cli import app
from hardctl.cli.common import (MODEL, D, CeWeight, KdWeight, Temperature, config_from_params, start_run,
                                with_run_options)

Teacher = Annotated[Optional[str], typer.Option("--teacher", "-t", rich_help_panel=MODEL, help=(
    "The frozen teacher: a run directory, a .safetensors file, or a timm name with --pretrained."))]
Student = Annotated[str, typer.Option("--student", "-s", rich_help_panel=MODEL, help=(
    "The student: timm name or alias (mnist_mlp, mnist_vit, vit_small, resnet18, ...) or a weights file to start from."))]


@app.command(epilog="Examples:  hardctl distill --teacher runs/teacher --student mnist_mlp --data digits --out runs/kd\n\n"
             "hardctl distill --teacher resnet50 --pretrained --student vit_small --data imagefolder:/data/pets\n\n"
             "hardctl distill --resume runs/kd")
@with_run_options
def distill(
    ctx: typer.Context,
    teacher: Teacher = None,
    student: Student = "hard_mnist_mlp",
    temperature: Temperature = D.temperature,
    kd_weight: KdWeight = D.kd_weight,
    ce_weight: CeWeight = D.ce_weight,
    **options,
) -> None:
    """Distil a frozen teacher into a student on the training images.

    Loss: KD = T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch (t, s the teacher's and
    student's logits); total = kd_weight·KD + ce_weight·CE(s, labels). Each model normalises the
    pixels with its own mean/std, so a teacher trained with other statistics gets re-normalised input
    (the run log says so). The teacher is never written to the run directory.
    """
    start_run(ctx, config_from_params("distill", ctx.params, student="model"))

