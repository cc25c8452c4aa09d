"""``hardctl distill``: knowledge distillation from a frozen teacher into a student."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from hardctl.cli import app
from hardctl.cli.common import (MODEL, D, Amp, BatchSize, CeWeight, Data, Device, Epochs, Force, Json, KdWeight,
                                LogEvery, Lr, MinLr, Optimizer, Out, Pretrained, Resume, Seed, ShiftPx, ShiftSeed,
                                Temperature, Warmup, WeightDecay, Workers, config_from_params, start_run)

Teacher = Annotated[Optional[str], typer.Option("--teacher", "-t", rich_help_panel=MODEL, help=(
    "The frozen teacher: a run directory, a .safetensors file, or a timm name with --pretrained."))]
Student = Annotated[str, typer.Option("--student", "-s", rich_help_panel=MODEL, help=(
    "The student: timm name or alias (mnist_mlp, mnist_vit, vit_small, resnet18, ...) or a weights file to start from."))]


@app.command(epilog="Examples:  hardctl distill --teacher runs/teacher --student mnist_mlp --data digits --out runs/kd\n\n"
             "hardctl distill --teacher resnet50 --pretrained --student vit_small --data imagefolder:/data/pets\n\n"
             "hardctl distill --resume runs/kd")
def distill(
    ctx: typer.Context,
    teacher: Teacher = None,
    student: Student = "hard_mnist_mlp",
    data: Data = D.data,
    temperature: Temperature = D.temperature,
    kd_weight: KdWeight = D.kd_weight,
    ce_weight: CeWeight = D.ce_weight,
    epochs: Epochs = D.epochs,
    batch_size: BatchSize = D.batch_size,
    optimizer: Optimizer = D.optimizer,
    lr: Lr = D.lr,
    weight_decay: WeightDecay = D.weight_decay,
    warmup_epochs: Warmup = D.warmup_epochs,
    min_lr: MinLr = D.min_lr,
    pretrained: Pretrained = D.pretrained,
    amp: Amp = D.amp,
    device: Device = D.device,
    seed: Seed = D.seed,
    workers: Workers = D.workers,
    shift_px: ShiftPx = D.shift_px,
    shift_seed: ShiftSeed = D.shift_seed,
    out: Out = None,
    resume: Resume = None,
    force: Force = False,
    json: Json = False,
    log_every: LogEvery = D.log_every,
) -> None:
    """Distil a frozen teacher into a student on the training images.

    Loss: KD = T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch (t, s the teacher's and
    student's logits); total = kd_weight·KD + ce_weight·CE(s, labels). Each model normalises the
    pixels with its own mean/std, so a teacher trained with other statistics gets re-normalised input
    (the run log says so). The teacher is never written to the run directory.
    """
    cfg = config_from_params("distill", ctx.params, student="model")
    start_run(ctx, cfg, out=out, resume=resume, force=force, as_json=json)

