"""Options shared by several commands, declared once, and the code that starts a run.

Defaults come from :class:`~hardctl.config.RunConfig` so that the CLI, the library and the resolved
``config.toml`` cannot disagree.

Nothing here may import torch at module level (nor may any ``hardctl.cli`` module): ``--help`` of every
command is built from these declarations, and importing torch would cost it seconds
(``tests/test_cli_startup.py`` checks). Library code that needs torch is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from hardctl.config import RunConfig
from hardctl.errors import UsageError
from hardctl.runfiles import LAST_CHECKPOINT

D = RunConfig()  # the defaults
# The loss hardctl.distill.losses computes, as --temperature's help states it (kept here, not there:
# importing the losses module would import torch just to print help).
KD_FORMULA = "T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean; total = kd_weight·KD + ce_weight·CE(s, y)"
DATA, TRAIN, MODEL, KD, RUN, OUTPUT = "Data", "Optimisation", "Models", "Distillation loss", "Run", "Output"
HARD = "HARD (learned augmentations)"
BASELINE_AUG = "Baseline augmentation"

Data = Annotated[str, typer.Option("--data", "-d", rich_help_panel=DATA, help=(
    "Data spec: digits (16 px) | digits28 (28 px) | fashion-mnist[:DIR] | mnist:DIR | cifar10:DIR | "
    "imagefolder:DIR | imagenet:DIR | a plugin's (`hardctl plugins` lists them)."))]
ShiftPx = Annotated[Optional[int], typer.Option("--shift-px", rich_help_panel=DATA, help=(
    "Shift of the shifted test set in pixels along x and y \\[default: MNIST-C's 3 px per 28 px of image side: "
    "3 on MNIST, 2 on digits]."))]
ShiftSeed = Annotated[int, typer.Option("--shift-seed", rich_help_panel=DATA, help="Seed of the shift directions.")]
Augment = Annotated[str, typer.Option("--augment", rich_help_panel=BASELINE_AUG, help=(
    "Per-image augmentation of the training images: none | random-affine | shift | standard | trivialaugment | "
    "augmix | randaugment, or several joined with + and applied in order (e.g. standard+trivialaugment). "
    "Then --random-erasing, then --mixup/--cutmix, then a HARD augmentor (distill)."))]
RandomErasing = Annotated[float, typer.Option("--random-erasing", rich_help_panel=BASELINE_AUG, metavar="P", help=(
    "Probability of erasing a random rectangle (2-33 % of the image) to 0, per image, after --augment "
    "(timm's --reprob)."))]
Mixup = Annotated[float, typer.Option("--mixup", rich_help_panel=BASELINE_AUG, metavar="ALPHA", help=(
    "MixUp per batch with λ ~ Beta(ALPHA, ALPHA); labels become soft targets (0: off; the paper: 1 for KD, "
    "0.2 for students)."))]
Cutmix = Annotated[float, typer.Option("--cutmix", rich_help_panel=BASELINE_AUG, metavar="ALPHA", help=(
    "CutMix per batch with λ ~ Beta(ALPHA, ALPHA); soft targets by pasted area (0: off; the paper: 1)."))]
MixSwitchProb = Annotated[float, typer.Option("--mix-switch-prob", rich_help_panel=BASELINE_AUG, metavar="P", help=(
    "With --mixup and --cutmix both on: probability that a batch gets CutMix rather than MixUp."))]
Pretrained = Annotated[bool, typer.Option("--pretrained/--no-pretrained", rich_help_panel=MODEL, help=(
    "Start timm-named models from pretrained weights (local Hugging Face cache or network)."))]
Epochs = Annotated[int, typer.Option("--epochs", "-e", min=1, rich_help_panel=TRAIN, help="Epochs to train.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, rich_help_panel=TRAIN, help="Batch size.")]
Optimizer = Annotated[str, typer.Option("--optimizer", rich_help_panel=TRAIN, help=(
    "adam (--weight-decay is an L2 term) | adamw | lion (timm's Lion, the paper's ImageNet optimiser; decoupled "
    "weight decay, use a smaller --lr) | sgd (momentum 0.9, Nesterov)."))]
Lr = Annotated[float, typer.Option("--lr", rich_help_panel=TRAIN, help="Peak learning rate.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", rich_help_panel=TRAIN, help="Weight decay.")]
Warmup = Annotated[float, typer.Option("--warmup-epochs", rich_help_panel=TRAIN,
                                       help="Linear warm-up length in epochs, then the --schedule.")]
MinLr = Annotated[float, typer.Option("--min-lr", rich_help_panel=TRAIN, help="Learning rate at the end of the cosine.")]
Schedule = Annotated[str, typer.Option("--schedule", rich_help_panel=TRAIN, help=(
    "Learning rate after the warm-up: cosine (anneal to --min-lr) | plateau (constant; after --plateau-patience "
    "epochs without a better val acc, multiply by --plateau-factor and restore the best weights; stop at "
    "--plateau-decays decays; the paper's CIFAR-10 schedule)."))]
PlateauPatience = Annotated[int, typer.Option("--plateau-patience", rich_help_panel=TRAIN, help=(
    "plateau: epochs without a better validation accuracy before the lr decays."))]
PlateauFactor = Annotated[float, typer.Option("--plateau-factor", rich_help_panel=TRAIN, help=(
    "plateau: lr multiplier of each decay, in (0, 1)."))]
PlateauDecays = Annotated[int, typer.Option("--plateau-decays", rich_help_panel=TRAIN, help=(
    "plateau: the run stops early at this many decays."))]
Temperature = Annotated[float, typer.Option("--temperature", "-T", rich_help_panel=KD, help=f"KD temperature T in {KD_FORMULA}.")]
KdWeight = Annotated[float, typer.Option("--kd-weight", rich_help_panel=KD, help="Weight of the KD term.")]
CeWeight = Annotated[float, typer.Option("--ce-weight", rich_help_panel=KD,
                                         help="Weight of cross-entropy with the labels (0: pure KD, as in the paper).")]
LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", rich_help_panel=TRAIN, help=(
    "Label smoothing of the cross-entropy (train; in distill it smooths only the --ce-weight term)."))]
Amp = Annotated[str, typer.Option("--amp", rich_help_panel=RUN, help=(
    "Mixed precision: auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with a loss scaler) | off."))]
Device = Annotated[str, typer.Option("--device", rich_help_panel=RUN, help="auto | cpu | cuda | cuda:N.")]
Seed = Annotated[int, typer.Option("--seed", rich_help_panel=RUN, help="Seed of initialisation and data order.")]
Workers = Annotated[int, typer.Option("--workers", rich_help_panel=RUN, help="DataLoader worker processes.")]
Compile = Annotated[bool, typer.Option("--compile", rich_help_panel=RUN, help=(
    "torch.compile the student and the teacher (the augmentor stays eager); the first steps take longer "
    "while it compiles. Weights files and checkpoints keep the plain model's names."))]
ChannelsLast = Annotated[bool, typer.Option("--channels-last", rich_help_panel=RUN, help=(
    "Student, teacher and input batches in channels_last memory format (faster convolutions on recent GPUs)."))]
Decode = Annotated[str, typer.Option("--decode", rich_help_panel=RUN, metavar="cpu|gpu|auto", help=(
    "Who decodes the training JPEGs of imagefolder/imagenet data: cpu (PIL in the --workers) | gpu (nvJPEG on "
    "the CUDA device; pixels differ from PIL's by rounding) | auto (cpu: GPU decoding is not measured faster yet)."))]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", rich_help_panel=OUTPUT,
                                             help="Run directory (default: runs/<command>-<model>-<time>).")]
Resume = Annotated[Optional[Path], typer.Option("--resume", rich_help_panel=OUTPUT, help=(
    "Continue the run in this directory from its last checkpoint, with its saved configuration."))]
Force = Annotated[bool, typer.Option("--force", rich_help_panel=OUTPUT, help="Replace an existing run directory.")]
Json = Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, help="Print the result as JSON on stdout.")]
Select = Annotated[str, typer.Option("--select", rich_help_panel=OUTPUT, metavar="last|best", help=(
    "Which model the run reports and model.safetensors holds: the final one (last) or the one with the best "
    "centered validation accuracy (best); the other is kept as last.safetensors / best.safetensors. "
    "\\[default: last for distill (the paper trains to a fixed budget; centered validation cannot see the "
    "invariance HARD transfers), best for train]"))]
SyncBn = Annotated[bool, typer.Option("--sync-bn", rich_help_panel=RUN, help=(
    "Under torchrun: synchronise the student's batch-norm statistics across processes (SyncBatchNorm); "
    "otherwise each process normalises by its own share of the global --batch-size."))]
DistTimeout = Annotated[float, typer.Option("--dist-timeout", min=1, rich_help_panel=RUN, metavar="SECONDS", help=(
    "Under torchrun: how long a process waits for the others before the run stops with an error "
    "(a dead or stuck process)."))]
LogEvery = Annotated[int, typer.Option("--log-every", min=1, rich_help_panel=OUTPUT,
                                       help="Steps between progress lines when stderr is not a terminal.")]

# The options every training run shares, declared once: name -> (annotated type, default), in help order.
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "data": (Data, D.data), "augment": (Augment, D.augment), "random_erasing": (RandomErasing, D.random_erasing),
    "mixup": (Mixup, D.mixup), "cutmix": (Cutmix, D.cutmix), "mix_switch_prob": (MixSwitchProb, D.mix_switch_prob),
    "shift_px": (ShiftPx, D.shift_px), "shift_seed": (ShiftSeed, D.shift_seed),
    "pretrained": (Pretrained, D.pretrained), "epochs": (Epochs, D.epochs), "batch_size": (BatchSize, D.batch_size),
    "optimizer": (Optimizer, D.optimizer), "lr": (Lr, D.lr), "weight_decay": (WeightDecay, D.weight_decay),
    "warmup_epochs": (Warmup, D.warmup_epochs), "min_lr": (MinLr, D.min_lr), "schedule": (Schedule, D.schedule),
    "plateau_patience": (PlateauPatience, D.plateau_patience), "plateau_factor": (PlateauFactor, D.plateau_factor),
    "plateau_decays": (PlateauDecays, D.plateau_decays), "amp": (Amp, D.amp),
    "device": (Device, D.device), "seed": (Seed, D.seed), "workers": (Workers, D.workers),
    "compile": (Compile, D.compile), "channels_last": (ChannelsLast, D.channels_last), "decode": (Decode, D.decode),
    "out": (Out, None),
    "resume": (Resume, None), "force": (Force, False), "json": (Json, False), "log_every": (LogEvery, D.log_every),
    "select": (Select, D.select), "sync_bn": (SyncBn, False), "dist_timeout": (DistTimeout, 600.0),
}


def with_run_options(command):
    """Add :data:`RUN_OPTIONS` to ``command``'s signature (Typer builds its options from the signature).

    The command takes them as ``**options``; :func:`start_run` reads them back from ``ctx.params``.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, (annotation, default) in RUN_OPTIONS.items()]
    command.__signature__ = signature.replace(parameters=own + shared)
    return command


# Options that describe how a run is watched, not what it computes: allowed next to --resume.
_RUN_CONTROL = {"resume", "json", "out", "force", "log_every", "workers", "device", "dist_timeout"}


def config_from_params(command: str, params: dict[str, Any], **renamed: str) -> RunConfig:
    """A RunConfig from a command's parameters; ``renamed`` maps option names to config fields."""
    fields = set(RunConfig.__dataclass_fields__)
    values = {renamed.get(name, name): value for name, value in params.items()}
    return RunConfig(command=command, **{k: v for k, v in values.items() if k in fields and k != "command"})


def explicit_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user typed (not defaults)."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def default_out(command: str, model: str) -> Path:
    short = Path(model).name.replace(".safetensors", "") or "model"
    return Path("runs") / f"{command}-{short}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(ctx: typer.Context, cfg: RunConfig, *, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve ``--resume``/``--out``, run the trainer and print its summary (next to ``baseline``'s student,
    a plain-KD run's summary, when given)."""
    from hardctl.distill.progress import reporter_for
    from hardctl.distill.run import run

    out, resume, force = ctx.params["out"], ctx.params["resume"], ctx.params["force"]
    if resume is not None:
        changed = sorted(explicit_options(ctx) - _RUN_CONTROL)
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise UsageError(f"--resume continues the saved configuration; drop {flags}",
                             hint="start a new run with --out to change it")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise UsageError("--resume and --out name different folders", hint="drop --out")
        saved = RunConfig.load(resume)
        if saved.command != cfg.command:
            raise UsageError(f"{resume} is a {saved.command!r} run", hint=f"resume it with hardctl {saved.command}")
        # what only watches the run may change on resume: the device, DataLoader workers, log frequency
        watched = {name: getattr(cfg, name) for name in ("device", "workers", "log_every")
                   if name in explicit_options(ctx)}
        cfg, out = dataclasses.replace(saved, **watched), resume
    out = out or default_out(cfg.command, cfg.model)
    try:
        summary = run(cfg, out, resume=resume is not None, force=force, reporter=reporter_for(every=cfg.log_every),
                      sync_bn=ctx.params.get("sync_bn", False), dist_timeout=ctx.params.get("dist_timeout"))
    except KeyboardInterrupt as exc:  # main() prints how to continue: it needs the command and the folder
        global LAST_INTERRUPT
        LAST_INTERRUPT = RunInterrupted(cfg.command, Path(out))  # Typer swallows the exception: main() reads this
        raise LAST_INTERRUPT from exc
    if int(os.environ.get("RANK", 0)):  # under torchrun rank 0 alone prints the result
        return summary
    if baseline is not None:
        summary = {**summary, "kd_baseline": {"run_dir": baseline["run_dir"], **baseline["student"]}}
    print_summary(summary, ctx.params["json"])
    return summary


LAST_INTERRUPT: "RunInterrupted | None" = None  # the Ctrl-C of this process's run, if any


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run of ``command`` in ``run_dir``; a KeyboardInterrupt still, so that it ends the
    process like one."""

    def __init__(self, command: str, run_dir: Path):
        super().__init__(command, run_dir)
        self.command, self.run_dir = command, run_dir


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """What Ctrl-C prints: how to continue the run when it has a checkpoint to continue from."""
    if isinstance(exc, RunInterrupted):
        if (exc.run_dir / LAST_CHECKPOINT).is_file():
            return f"interrupted; continue with: hardctl {exc.command} --resume {exc.run_dir}"
        if exc.run_dir.is_dir():
            return (f"interrupted before the first checkpoint; start again with: hardctl {exc.command} ... "
                    f"--out {exc.run_dir} --force")
    return "interrupted"


def results_console() -> Console:
    """A console for results on stdout: the terminal's width on a terminal; piped or redirected, wide enough
    that no table cell or line is cut or wrapped (a file or a pipe has no width to fit)."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 10_000, soft_wrap=not sys.stdout.isatty())


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    """The result of a run on stdout: JSON, or a small table."""
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    table = Table(title=f"{summary['command']} on {summary['data']} ({summary['epochs']} epochs)")
    table.add_column("model")
    table.add_column("spec")
    table.add_column("centered acc %", justify="right")
    table.add_column(f"shifted (±{summary.get('shift_px', '?')} px) acc %", justify="right")
    kd = summary.get("kd_baseline")
    for role in ("teacher", "kd_baseline", "student"):
        if role in summary:
            row = summary[role]
            label = {"kd_baseline": "plain KD student", "student": "HARD student" if kd else "student"}.get(role, role)
            label = label if summary["command"] == "distill" else "model"
            spec = row.get("spec", "") if role != "kd_baseline" else row["run_dir"]
            table.add_row(label, str(spec), f"{row['test_acc']:.2f}", f"{row['shifted_acc']:.2f}")
    if kd:
        student = summary["student"]
        table.add_row("HARD − KD", "", f"{student['test_acc'] - kd['test_acc']:+.2f}",
                      f"{student['shifted_acc'] - kd['shifted_acc']:+.2f}")
    console = results_console()
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}  (best val acc {summary['best_val_acc']:.2f}%)")
    other = {"last": "best", "best": "last"}.get(summary.get("select", ""))
    candidate = summary.get("candidates", {}).get(other)
    if candidate:
        console.print(f"reported: the {summary['select']} {'student' if summary['command'] == 'distill' else 'model'}"
                      f" (--select); {candidate['file']} (epoch {candidate['epoch']}) scores "
                      f"{candidate['test_acc']:.2f} centered / {candidate['shifted_acc']:.2f} shifted")
    if summary.get("stopped_early"):
        console.print(f"stopped early after epoch {summary['stopped_early']}: the plateau schedule used its last decay")
    hard = summary.get("hard")
    if hard:
        console.print(f"HARD {hard['augmentor']} ({hard['mode']}): {hard['switches']} switches, pool of "
                      f"{hard['pool_size']}, {100 * hard['aug_fraction']:.1f}% of iterations in augmentor phases")
        if hard.get("warning"):
            console.print(f"warning: {hard['warning']}")
        for name, path in hard.get("figures", {}).items():
            console.print(f"{name}: {path}")
