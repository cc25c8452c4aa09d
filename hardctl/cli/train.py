"""``hardctl train``: supervised training of a teacher or of a stand-alone student baseline."""

from __future__ import annotations

from typing import Annotated

import typer

from hardctl.cli import app
from hardctl.cli.common import (MODEL, D, Amp, BatchSize, Data, Device, Epochs, Force, Json, LabelSmoothing,
                                LogEvery, Lr, MinLr, Optimizer, Out, Pretrained, Resume, Seed, ShiftPx, ShiftSeed,
                                Warmup, WeightDecay, Workers, config_from_params, start_run)

Model = Annotated[str, typer.Option("--model", "-m", rich_help_panel=MODEL, help=(
    "timm name, alias (mnist_cnn, mnist_mlp, mnist_vit, vit_small, resnet18, ...), .safetensors file or run dir."))]


@app.command(epilog="Examples:  hardctl train --model mnist_cnn --data digits --epochs 15 --out runs/teacher\n\n"
             "hardctl train --model mnist_mlp --data fashion-mnist --out runs/student-only")
def train(
    ctx: typer.Context,
    model: Model = D.model,
    data: Data = D.data,
    epochs: Epochs = D.epochs,
    batch_size: BatchSize = D.batch_size,
    optimizer: Optimizer = D.optimizer,
    lr: Lr = D.lr,
    weight_decay: WeightDecay = D.weight_decay,
    warmup_epochs: Warmup = D.warmup_epochs,
    min_lr: MinLr = D.min_lr,
    label_smoothing: LabelSmoothing = D.label_smoothing,
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
    """Train a classifier with cross-entropy on the labels (a teacher, or a student baseline).

    Writes a run directory with config.toml, steps.jsonl, epochs.jsonl, model.safetensors (best
    validation accuracy), last.safetensors, checkpoints/ and summary.json; prints centered and
    shifted test accuracy of the best weights.
    """
    cfg = config_from_params("train", ctx.params)
    start_run(ctx, cfg, out=out, resume=resume, force=force, as_json=json)
