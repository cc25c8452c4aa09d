"""``hardctl vae``: convert official VAE checkpoints, train small VAEs here, and score them.

Thin: parsing and printing only; the work is in :mod:`hardctl.vae.files`, :mod:`hardctl.vae.train` and
:mod:`hardctl.vae.evaluate`. No torch at module level (``--help`` stays fast).
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hardctl.cli.root import app
from hardctl.cli.common import Data, Device, Json, LogEvery, explicit_options, results_console
from hardctl.errors import UsageError

vae_app = typer.Typer(
    name="vae",
    help="VAEs for the vdvae / rqvae augmentors: convert official checkpoints, train small ones, evaluate.",
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    no_args_is_help=True,
)
app.add_typer(vae_app, name="vae")

Arch = Annotated[str, typer.Option("--arch", "-a", help="vdvae | rqvae.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing --out.")]


@vae_app.command(epilog="Examples:  hardctl vae convert cifar10-seed0-iter-900000-model-ema.th --arch vdvae "
                 "--out vdvae-cifar10.safetensors\n\n"
                 "hardctl vae convert imagenet_1.4B_rqvae_50e/stage1/model.pt --arch rqvae --out rqvae-in256.safetensors")
def convert(
    file: Annotated[Path, typer.Argument(help=(
        "Official checkpoint: VDVAE *-model-ema.th (a plain state dict) or RQ-VAE stage1/model.pt (only its "
        "state_dict is read, never code)."))],
    arch: Arch,
    out: Annotated[Path, typer.Option("--out", "-o", help="The hardctl VAE file to write (.safetensors).")],
    config: Annotated[Optional[Path], typer.Option("--config", help=(
        "RQ-VAE: upstream's config.yaml \\[default: config.yaml beside FILE, else in256]. VDVAE: a YAML/JSON "
        "mapping of VDVAE settings."))] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help=(
        "A named configuration instead of --config (VDVAE default: cifar10; see `hardctl vae presets`)."))] = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Convert an official checkpoint into a hardctl VAE file (safetensors with the architecture, configuration,
    normalisation and source in its metadata), which the vdvae/rqvae augmentors take (--aug-opt weights=FILE).
    The keys and shapes are checked against the configuration first; nothing is written on error."""
    from hardctl.vae.files import convert_official

    result = convert_official(file, out, arch=arch, config_file=config, preset=preset, force=force)
    if json:
        print(jsonlib.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"wrote {result['out']}: {arch}, {result['channels']}×{result['image_size']}×{result['image_size']} "
              f"images, {result['parameters']:,} parameters ({result['configuration']})")


@vae_app.command()
def presets(arch: Annotated[Optional[str], typer.Argument(help="vdvae | rqvae (default: both).")] = None) -> None:
    """List the named VAE configurations and the image size each takes."""
    from hardctl.vae.archs import ARCHS, arch_of

    table = Table(title="VAE configurations (--config NAME)")
    for column in ("arch", "name", "images"):
        table.add_column(column)
    for a in ([arch_of(arch)] if arch else ARCHS.values()):
        table.add_row(a.name, "small", "1 or 3 × 16×16 or 28×28: picks small-16 / small-28 and the data's channels")
        for name, cfg in a.presets.items():
            if name == "small":  # the family above; its 16/28 px members follow
                continue
            side, channels = a.size(cfg)
            table.add_row(a.name, name, f"{channels}×{side}×{side}")
    results_console().print(table)


@vae_app.command(epilog="Examples:  hardctl vae train --arch vdvae --config small --data digits --out runs/vae-digits\n\n"
                 "hardctl vae train --arch rqvae --config small --data fashion-mnist --epochs 10 --out runs/rqvae-fm")
def train(
    ctx: typer.Context,
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="vdvae | rqvae.")] = None,
    config: Annotated[str, typer.Option("--config", "-c", help=(
        "Configuration name: small (picks small-16 or small-28 by the data's image size, and the data's 1 or 3 "
        "channels) | tiny (tests; 16 px, the data's channels) | cifar10 (VDVAE) | in256 (RQ-VAE); `hardctl vae presets` lists them."))] = "small",
    data: Data = "digits",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", help=(
        "Epochs \\[default: vdvae 30, rqvae 20]. With --resume: a larger number trains on."))] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Batch size \\[default: 32].")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=(
        "Learning rate \\[default: 1e-3 (vdvae: AdamW with upstream's 100 warm-up steps; rqvae: Adam); the official "
        "sizes cifar10 / in256: upstream's 2e-4 / 4e-5]."))] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, data order and the VAE's noise.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Train on the first N training images only.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help=(
        "Continue the run in this folder from its last epoch, with its saved settings."))] = None,
    force: Force = False,
    device: Device = "auto",
    log_every: LogEvery = 20,
    json: Json = False,
) -> None:
    """Train a VAE on the training split of --data (minus the validation images every hardctl run holds out).
    Writes vae-train.json, log.txt, epochs.jsonl, checkpoints/last.pt and vae.safetensors after every epoch
    (together, atomically) and reconstructions.png at the end. A loss that stays non-finite stops the run
    (exit 1) with the last good epoch's files intact."""
    from hardctl.distill.progress import reporter_for
    from hardctl.vae.train import VaeTrainSettings, resume_settings, train_vae

    if resume is not None:
        given = sorted("--" + name.replace("_", "-") for name in explicit_options(ctx)
                       - {"resume", "epochs", "device", "log_every", "json", "out", "force"})
        if given:
            raise UsageError(f"--resume continues the saved settings; drop {', '.join(given)}")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise UsageError("--resume and --out name different folders", hint="drop --out")
        settings, folder = resume_settings(resume, epochs=epochs, device=device, log_every=log_every), resume
    else:
        if arch is None:
            raise UsageError("--arch is required: vdvae or rqvae")
        if out is None:
            raise UsageError("--out is required: the folder to write the VAE into")
        settings = VaeTrainSettings.make(arch, config, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                         limit=limit, device=device, log_every=log_every)
        folder = out
    summary = train_vae(settings, folder, resume=resume is not None, force=force,
                        reporter=reporter_for(every=settings.log_every))
    if json:
        print(jsonlib.dumps(summary, indent=2, sort_keys=True))
        return
    last = summary["last_epoch"] or {}
    main = "train_elbo" if summary["arch"] == "vdvae" else "train_loss"
    print(f"wrote {summary['vae']} ({summary['arch']} {summary['config']}, {summary['parameters']:,} parameters, "
          f"{summary['epochs']} epochs): {main.removeprefix('train_')} {last.get(main, float('nan')):.4f}, "
          f"validation MSE {last.get('val_mse', float('nan')):.5f}; grid {summary['grid']}")


@vae_app.command(name="eval", epilog="Examples:  hardctl vae eval runs/vae-digits --data digits --teacher runs/teacher")
def eval_(
    vae: Annotated[Path, typer.Argument(help="A `hardctl vae train` folder or a hardctl VAE file.")],
    data: Data = "digits",
    teacher: Annotated[Optional[str], typer.Option("--teacher", "-t", help=(
        "Also report this classifier's accuracy on the reconstructions against on the originals (run dir, "
        ".safetensors file)."))] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Score the first N test images only.")] = None,
    eps_scale: Annotated[float, typer.Option("--eps-scale", help=(
        "VDVAE: scale of the posterior noise in the reconstructions (1: one draw, what an augmentor starts "
        "from; 0: the posterior mean)."))] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")] = 64,
    device: Device = "auto",
    json: Json = False,
) -> None:
    """Score a VAE on the test split of --data: reconstruction MSE and PSNR (images in \\[0, 1]), bits per
    dimension (VDVAE: negative ELBO ÷ ln 2), and with --teacher the teacher's top-1 accuracy on the
    reconstructions against on the originals."""
    from hardctl.vae.evaluate import evaluate_vae

    result = evaluate_vae(vae, data, teacher=teacher, limit=limit, batch_size=batch_size, eps_scale=eps_scale,
                          device=device)
    if json:
        print(jsonlib.dumps(result, indent=2, sort_keys=True))
        return
    table = Table(title=f"{result['arch']} VAE {result['vae']} on {data} ({result['images']} test images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("reconstruction MSE", f"{result['mse']:.5f}")
    table.add_row("PSNR (dB)", f"{result['psnr_db']:.2f}")
    if "bits_per_dim" in result:
        table.add_row("bits per dimension", f"{result['bits_per_dim']:.4f}")
    if "teacher_acc_original" in result:
        table.add_row("teacher acc % on originals", f"{result['teacher_acc_original']:.2f}")
        table.add_row("teacher acc % on reconstructions", f"{result['teacher_acc_reconstruction']:.2f}")
        table.add_row("same prediction %", f"{result['teacher_agreement']:.2f}")
    results_console().print(table)
