"""``hardctl distill``: knowledge distillation from a frozen teacher into a student."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from hardctl.cli.root import app
from hardctl.cli.common import (HARD, MODEL, D, CeWeight, KdWeight, LabelSmoothing, Temperature,
                                config_from_params, explicit_options, start_run, with_run_options)
from hardctl.values import key_value_pairs


def _from_augmentor(affine: str, mix: str) -> str:
    """The default of a HARD option: it comes from the augmentor (``HardDefaults`` of each built-in,
    written out here because reading them would import torch for ``--help``; tests/test_cli_errors.py
    checks they match)."""
    return (f"\\[default: the augmentor's: affine and noise {affine}, mix {mix}; "
            "`hardctl plugins --augmentors` lists every augmentor's]")

Augmentor = Annotated[str, typer.Option("--augmentor", "-a", rich_help_panel=HARD, help=(
    "Learned augmentor: affine | noise | mix (HARD-Mix) | a plugin's | several joined with +, "
    "e.g. noise+affine | none (plain KD). `hardctl plugins --augmentors` lists the installed ones."))]
AugOpt = Annotated[Optional[list[str]], typer.Option("--aug-opt", rich_help_panel=HARD, metavar="KEY=VALUE", help=(
    "Augmentor option (repeatable), e.g. sigma_init=0.05; PART.KEY in a composition, where PART.lr=X sets one "
    "part's learning rate (e.g. affine.lr=0.02). "
    "`hardctl plugins --augmentors` lists each augmentor's options."))]
LMin = Annotated[Optional[float], typer.Option("--l-min", rich_help_panel=HARD, help=(
    f"Switch student -> augmentor when the student's error on augmented data stays below this. {_from_augmentor('0.05', 'unused')}"))]
LMax = Annotated[Optional[float], typer.Option("--l-max", rich_help_panel=HARD, help=(
    f"Switch augmentor -> student when the student's error on augmented data stays above this. {_from_augmentor('0.40', 'unused')}"))]
Patience = Annotated[Optional[int], typer.Option("--switch-patience", rich_help_panel=HARD, help=(
    f"Consecutive iterations past a threshold before switching (k). {_from_augmentor('5', 'unused')}"))]
LambdaS = Annotated[Optional[float], typer.Option("--lambda-s", rich_help_panel=HARD, help=(
    f"Weight of the student–teacher loss the augmentor maximises. {_from_augmentor('1.0', '1.0')}"))]
LambdaT = Annotated[Optional[float], typer.Option("--lambda-t", rich_help_panel=HARD, help=(
    f"Weight of the teacher–teacher (invariance) loss the augmentor minimises. {_from_augmentor('1.0', '0.0')}"))]
AugLr = Annotated[Optional[float], typer.Option("--aug-lr", rich_help_panel=HARD, help=f"Augmentor learning rate (Adam); in a composition, of every part without its own PART.lr (each part "
    f"defaults to its own). {_from_augmentor('0.05', '0.01')}")]
AugBatch = Annotated[Optional[int], typer.Option("--aug-batch-size", rich_help_panel=HARD, help=(
    f"Images per augmentor step. {_from_augmentor('128', 'unused')}"))]
SwitchOn = Annotated[str, typer.Option("--switch-on", rich_help_panel=HARD, help=(
    "What the switching error is measured against: teacher (its prediction on the augmented image) or labels."))]
AugTemperature = Annotated[Optional[float], typer.Option("--aug-temperature", rich_help_panel=HARD, help=(
    "Temperature of the augmentor's objective (its KL terms), so the student can distil at --temperature while "
    "the augmentor uses its own; HARD-Mix learns real mixes at 1. \\[default: --temperature]"))]
MaxAugSteps = Annotated[int, typer.Option("--max-aug-steps", min=1, rich_help_panel=HARD, help=(
    "An augmentor phase that has not reached l_max after this many steps ends anyway (logged)."))]
PoolSampling = Annotated[str, typer.Option("--pool-sampling", rich_help_panel=HARD, help=(
    "Which pool entry a student step augments with: uniform over all (the paper) or recent (the newest entry half "
    "of the time, else uniform)."))]
CleanFraction = Annotated[float, typer.Option("--clean-fraction", rich_help_panel=HARD, help=(
    "Share of each HARD student batch left unaugmented (0: the paper, every image from the pool entry)."))]

Teacher = Annotated[Optional[str], typer.Option("--teacher", "-t", rich_help_panel=MODEL, help=(
    "The frozen teacher: a run directory, a .safetensors file, a timm name with --pretrained, or NAME:FILE "
    "(a timm architecture with weights from a .pth/.pth.tar/.pt/.safetensors file, "
    "e.g. resnet50:~/weights/deepaugment_and_augmix.pth.tar)."))]
Student = Annotated[str, typer.Option("--student", "-s", rich_help_panel=MODEL, help=(
    "The student: timm name or alias (mnist_mlp, mnist_vit, resnet18_cifar, vit_cifar, vit_s14, resnet18, ...) "
    "or a weights file to start from."))]


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
    label_smoothing: LabelSmoothing = D.label_smoothing,
    augmentor: Augmentor = D.augmentor,
    aug_opt: AugOpt = None,
    l_min: LMin = None,
    l_max: LMax = None,
    switch_patience: Patience = None,
    lambda_s: LambdaS = None,
    lambda_t: LambdaT = None,
    aug_lr: AugLr = None,
    aug_temperature: AugTemperature = None,
    aug_batch_size: AugBatch = None,
    switch_on: SwitchOn = D.switch_on,
    max_aug_steps: MaxAugSteps = D.max_aug_steps,
    pool_sampling: PoolSampling = D.pool_sampling,
    clean_fraction: CleanFraction = D.clean_fraction,
    **options,
) -> None:
    """Distil a frozen teacher into a student, on augmentations HARD learns to make hard.

    KD loss: D[s, t] = T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean (t, s the teacher's and student's
    logits); total = kd_weight·D + ce_weight·CE(s, labels).

    HARD (--augmentor, default affine): the augmentor g makes x̃ = g(x) and maximises
    λ_s·D[s(x̃), t(x̃)] − λ_t·D[t(x̃), t(x)] (the teacher still sees the same image, the student does not);
    the student minimises D[s(x̃), t(x̃)]. They train in alternating phases: augmentor -> student when the
    student's error on x̃ stays above --l-max for --switch-patience iterations, back when it stays below
    --l-min. The augmentor is saved into a pool at every switch and each student step augments with a
    pool entry drawn at random. --augmentor none is plain KD.

    Baseline augmentations (--augment, --random-erasing, --mixup, --cutmix) come first, HARD's augmentor
    on top: teacher and student see the same mixed batch, and the CE term uses its soft targets.

    Without --teacher this runs the default recipe: digits, a CNN teacher (trained once and cached),
    an MLP student and HARD-Affine. The teacher is never written to the run directory.
    """
    cfg = config_from_params("distill", ctx.params, student="model")
    cfg.aug_options = parse_key_values(aug_opt or [], "--aug-opt")
    baseline = None
    if teacher is None and ctx.params["resume"] is None:
        from hardctl.quickstart import apply_default_recipe, plain_kd

        cfg = apply_default_recipe(cfg, explicit=explicit_options(ctx))
        if cfg.augmentor.strip().lower() != "none":  # the main job: HARD against plain KD, like the paper's table 1
            baseline = plain_kd(cfg)
    start_run(ctx, cfg, baseline=baseline)


def parse_key_values(items: list[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (values are typed later, against the option's type)."""
    return dict(key_value_pairs(items, flag=flag, example=f"{flag} sigma_init=0.05"))
