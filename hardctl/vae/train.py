"""``hardctl vae train``: a VDVAE or RQ-VAE trained from scratch on the training split of a hardctl data set.

Layout of ``OUT/``::

    vae-train.json        the resolved settings (read back by --resume)
    log.txt               the log lines
    epochs.jsonl          one JSON object per epoch (train loss parts, validation MSE/ELBO, skipped steps, time)
    checkpoints/last.pt   model + optimiser + epoch + RNG after the last good epoch (for --resume)
    vae.safetensors       the VAE of the last good epoch (hardctl.vae.files; what augmentors take)
    reconstructions.png   test images and their reconstructions, written at the end

The VAE trains on the data set's training split minus the validation images every hardctl run holds out
(so a later selection on validation never sees images the VAE was fitted to). VDVAE follows upstream: AdamW
(β = 0.9, 0.9; weight decay 0.01), linear warm-up over 100 steps, gradient-norm clipping, and a step is
skipped when the gradient norm reaches the skip threshold or is not finite. Upstream's learning rate 2e-4 is
kept for the official sizes; the small configurations default to 1e-3 (on the digits, validation ELBO 0.78
nats/dim after 3 epochs at 1e-3 against 1.72 after one at 2e-4, no skipped steps either way). Upstream's 200 / 400 are for the
39 M-parameter CIFAR model; the small configuration's gradient norms on the digits are far smaller (median
0.2, largest 1.8 over its first 3 epochs), so below the official sizes the defaults are 10 / 50: clipping
and skipping touch only spikes, as upstream's do. RQ-VAE: Adam,
MSE + 0.25·commitment, EMA codebook updates after every step. A step whose loss is not finite changes
nothing; :data:`DIVERGED_AFTER` of them in a row stop the run (exit 1) with the last good epoch's checkpoint
and ``vae.safetensors`` intact. Each epoch's ``vae.safetensors`` and ``last.pt`` replace the old ones
together (:func:`hardctl.atomic.replace_together`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from hardctl.atomic import atomic_write_json, finish_replacing, is_temp_name, replace_together
from hardctl.dirlock import locked_folder
from hardctl.distill.progress import Reporter
from hardctl.distill.rundir import JsonlLog, RunLog, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hardctl.errors import TrainingError, UsageError
from hardctl.runfiles import COMMIT_JOURNAL, LOCK_FILE, RUN_MARKER
from hardctl.vae.archs import arch_of, resolve_config
from hardctl.vae.files import save_vae

__all__ = ["DIVERGED_AFTER", "VaeTrainSettings", "resume_settings", "train_vae"]

SETTINGS_FILE, LOG_FILE, EPOCHS_FILE = "vae-train.json", "log.txt", "epochs.jsonl"
VAE_FILE, GRID_FILE, CHECKPOINT = "vae.safetensors", "reconstructions.png", "checkpoints/last.pt"
_OWN = {SETTINGS_FILE, LOG_FILE, EPOCHS_FILE, VAE_FILE, GRID_FILE, RUN_MARKER, LOCK_FILE, COMMIT_JOURNAL}
DIVERGED_AFTER = 5  # consecutive non-finite losses that end a run
VAL_IMAGES = 256  # validation images scored after every epoch
GRID_IMAGES = 8

# Per-arch defaults (see the module docstring). ``big`` applies to the official-size configurations.
DEFAULTS = {
    "vdvae": {"lr": 1e-3, "batch_size": 32, "epochs": 30, "weight_decay": 0.01, "betas": (0.9, 0.9),
              "warmup_steps": 100, "grad_clip": 10.0, "skip_threshold": 50.0,
              "big": {"lr": 2e-4, "grad_clip": 200.0, "skip_threshold": 400.0}},
    "rqvae": {"lr": 1e-3, "batch_size": 32, "epochs": 20, "weight_decay": 0.0, "betas": (0.9, 0.999),
              "warmup_steps": 0, "grad_clip": 0.0, "skip_threshold": 0.0, "big": {"lr": 4e-5, "betas": (0.5, 0.9)}},
}
_BIG = {"cifar10", "in256"}


@dataclass(frozen=True)
class VaeTrainSettings:
    arch: str
    config: str  # the name asked for (``small`` resolves by the data)
    data: str
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    limit: int | None = None  # train on the first N training images only (tests, quick looks)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0: no clipping
    skip_threshold: float = 0.0  # 0: never skip on the gradient norm
    device: str = "auto"
    log_every: int = 20

    @classmethod
    def make(cls, arch: str, config: str, data: str, **given: Any) -> "VaeTrainSettings":
        """Settings with the arch's defaults (and the official sizes' own) under what is ``given``."""
        base = dict(DEFAULTS[arch_of(arch).name])
        big = base.pop("big")
        if config in _BIG:
            base.update(big)
        base.update({k: v for k, v in given.items() if v is not None})
        settings = cls(arch=arch, config=config, data=data, **base)
        for name in ("epochs", "batch_size"):
            if getattr(settings, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(settings, name)}")
        if not (settings.lr > 0 and math.isfinite(settings.lr)):
            raise UsageError(f"--lr must be a positive number, not {settings.lr}")
        if settings.limit is not None and settings.limit < 1:
            raise UsageError(f"--limit must be at least 1, not {settings.limit}")
        return settings

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VaeTrainSettings":
        return cls(**{**data, "betas": tuple(data["betas"])})


def _open_out(out: Path, *, resume: bool, force: bool, check_only: bool = False) -> None:
    """Refuse what cannot be done with ``out``; unless ``check_only`` (called again under the folder's
    lock), prepare it: complete an interrupted commit, or with ``force`` delete only our own files."""
    entries = [p for p in out.iterdir() if p.name not in (LOCK_FILE, RUN_MARKER)] if out.is_dir() else []
    if resume:
        if not check_only:
            finish_replacing(out / COMMIT_JOURNAL)  # a kill while an epoch's files were renamed: complete it
        if not (out / SETTINGS_FILE).is_file():
            raise UsageError(f"cannot resume: {out} is not a `hardctl vae train` folder (no {SETTINGS_FILE})")
        if not (out / CHECKPOINT).is_file() and not (out / COMMIT_JOURNAL).is_file():
            raise UsageError(f"cannot resume: {out} has no {CHECKPOINT} yet", hint="start it again with --force")
        return
    if entries and not force:
        raise UsageError(f"--out {out} already exists and is not empty",
                         hint="pass --resume to continue it, --force to replace it, or pick another --out")
    if entries:
        foreign = sorted(p.name for p in entries if not (p.name in _OWN or is_temp_name(p.name) or p.name == "checkpoints"))
        if not (out / SETTINGS_FILE).is_file() or foreign:
            what = foreign[0] if foreign else f"no {SETTINGS_FILE}"
            raise UsageError(f"--force refuses to replace {out}: it is not a `hardctl vae train` folder ({what})",
                             hint="pick another --out")
    if check_only:
        return
    for p in entries:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (out / RUN_MARKER).write_text("made by hardctl: --force may replace this folder\n")


def _data(settings: VaeTrainSettings):
    from hardctl.data import load_data

    bundle = load_data(settings.data)
    channels, (height, width) = bundle.in_chans, bundle.img_size
    if height != width:
        raise UsageError(f"the VAEs take square images; {settings.data!r} has {height}×{width}")
    cfg = resolve_config(settings.arch, settings.config, height, channels)
    train = bundle.train if settings.limit is None else Subset(bundle.train, range(min(settings.limit, len(bundle.train))))
    return bundle, train, cfg


def _loss(model, arch: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training loss and its parts (scalars); RQ-VAE's also carry what the EMA update needs."""
    if arch == "vdvae":
        return model.elbo(x)  # per-dimension nats: distortion + rate
    return model.loss(x)


def _loss_value(parts: dict[str, torch.Tensor], arch: str) -> torch.Tensor:
    return parts["elbo"] if arch == "vdvae" else parts["loss"]


@torch.no_grad()
def reconstruct(model, arch: str, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reconstructions in [0, 1]: VDVAE's posterior mean (ε = 0) unless a generator asks for a draw."""
    if arch == "vdvae":
        return model.reconstruct(x, eps_scale=0.0 if generator is None else 1.0, generator=generator)
    return model.reconstruct(x)


@torch.no_grad()
def _validate(model, arch: str, images: torch.Tensor, device: torch.device) -> dict[str, float]:
    model.eval()
    out: dict[str, float] = {}
    x = images.to(device)
    out["val_mse"] = float((reconstruct(model, arch, x) - x).pow(2).mean())
    if arch == "vdvae":
        parts = model.elbo(x, generator=torch.Generator(device=device).manual_seed(0))
        out["val_elbo"] = float(parts["elbo"])
    model.train()
    return out


def write_grid(model, arch: str, images: torch.Tensor, path: Path) -> Path:
    """``reconstructions.png``: originals in the first column, reconstructions beside them (VDVAE: the
    posterior mean and one posterior draw)."""
    from hardctl.visualize.grid import assemble_grid

    model.eval()
    columns, titles = [images, reconstruct(model, arch, images)], ["original", "reconstruction"]
    if arch == "vdvae":
        columns.append(reconstruct(model, arch, images, torch.Generator(device=images.device).manual_seed(0)))
        titles = ["original", "posterior mean", "posterior draw"]
    return assemble_grid([c.cpu() for c in columns], titles, group_after=1).save(path)


def resume_settings(out: str | Path, *, epochs: int | None = None, device: str | None = None,
                    log_every: int | None = None) -> VaeTrainSettings:
    """The saved settings of the run in ``out``; ``epochs`` may raise the total (train on from where it
    stopped), ``device`` and ``log_every`` only change how it runs."""
    out = Path(out).expanduser()
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"cannot resume: {out} is not a `hardctl vae train` folder (no {SETTINGS_FILE})")
    try:
        saved = VaeTrainSettings.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        raise UsageError(f"cannot resume: {path} is damaged", hint="start the run again with --force") from None
    if epochs is not None and epochs < saved.epochs:
        raise UsageError(f"--epochs {epochs} is fewer than the run's {saved.epochs}",
                         hint="drop --epochs to finish the run as planned, or pass more to train on")
    changes = {k: v for k, v in (("epochs", epochs), ("device", device), ("log_every", log_every)) if v is not None}
    return dataclasses.replace(saved, **changes)


def train_vae(settings: VaeTrainSettings, out: str | Path, *, resume: bool = False, force: bool = False,
              reporter: Reporter | None = None) -> dict[str, Any]:
    """Train (or continue) a VAE run in ``out``; returns the summary. See the module docstring."""
    from hardctl.device import select_device

    out = Path(out).expanduser()
    reporter = reporter or Reporter()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder", hint="pick another --out")
    bundle, train_set, cfg = _data(settings)  # bad data or a config that does not fit: before anything is written
    device = select_device(settings.device)
    if out.exists():
        _open_out(out, resume=resume, force=force, check_only=True)  # a refusal leaves the folder untouched
    with locked_folder(out):
        _open_out(out, resume=resume, force=force)
        atomic_write_json(out / SETTINGS_FILE, settings.to_json())
        return _train(settings, out, bundle, train_set, cfg, device, reporter, resume)


def _train(settings, out: Path, bundle, train_set, cfg, device, reporter: Reporter, resume: bool) -> dict[str, Any]:
    arch = settings.arch
    log = RunLog(out / LOG_FILE, echo=reporter.log)
    epochs_log = JsonlLog(out / EPOCHS_FILE)
    torch.manual_seed(settings.seed)
    model = arch_of(arch).model_cls(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]  # RQ-VAE's codebook moves by EMA only
    opt_cls = torch.optim.AdamW if arch == "vdvae" else torch.optim.Adam
    opt = opt_cls(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    start, step = 0, 0
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, step = int(ckpt["epoch"]), int(ckpt["step"])
        set_rng_state(ckpt["rng"])
        epochs_log.truncate_after("epoch", start)
        log(f"resumed after epoch {start} (step {step})")
    n_params = sum(p.numel() for p in model.parameters())
    side, channels = arch_of(arch).size(cfg)
    log(f"vae train: {arch} {settings.config} ({channels}×{side}×{side}, {n_params:,} parameters) on "
        f"{settings.data}: {len(train_set)} training images, batch {settings.batch_size}, lr {settings.lr:g}, "
        f"device {device}")
    val_images = torch.stack([bundle.val[i][0] for i in range(min(VAL_IMAGES, len(bundle.val)))])
    config_dict = cfg.to_dict()
    bad_in_a_row = 0
    for epoch in range(start + 1, settings.epochs + 1):
        # each epoch's order from its own seed: a resumed run draws the same batches
        order = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=True, generator=order)
        reporter.start_epoch(epoch, settings.epochs, len(loader))
        t0, sums, counted, skipped = time.perf_counter(), {}, 0, 0
        for x, _ in loader:
            x = x.to(device)
            step += 1
            lr = settings.lr * min(1.0, step / settings.warmup_steps) if settings.warmup_steps else settings.lr
            for group in opt.param_groups:
                group["lr"] = lr
            parts = _loss(model, arch, x)
            loss = _loss_value(parts, arch)
            if not torch.isfinite(loss):
                bad_in_a_row += 1
                skipped += 1
                if bad_in_a_row >= DIVERGED_AFTER:
                    raise TrainingError(
                        f"the VAE's loss was not finite {bad_in_a_row} steps in a row (epoch {epoch}, step {step}); "
                        f"{out / CHECKPOINT} and {out / VAE_FILE} hold the last good epoch ({epoch - 1})",
                        hint="lower --lr and start again with --force, or --resume")
                continue
            bad_in_a_row = 0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip if settings.grad_clip else math.inf))
            if not math.isfinite(norm) or (settings.skip_threshold and norm >= settings.skip_threshold):
                skipped += 1  # upstream's skip rule: a spike would undo what the model has learned
            else:
                opt.step()
                if arch == "rqvae":
                    model.ema_update(parts["z_e"], parts["codes"])
            for k, v in parts.items():
                if v.dim() == 0 and k not in ("z_e", "codes"):
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
            counted += len(x)
            reporter.step({"loss": float(loss.detach()), "lr": lr, "grad_norm": norm})
        record = {"epoch": epoch, "step": step, "lr": lr, "skipped": skipped,
                  "time_s": round(time.perf_counter() - t0, 2)}
        record.update({f"train_{k}": v / max(1, counted) for k, v in sums.items()})
        record.update(_validate(model, arch, val_images, device))
        with replace_together(out / COMMIT_JOURNAL, [out / VAE_FILE, out / CHECKPOINT]):
            save_vae(model, out / VAE_FILE, arch=arch, config=config_dict,
                     source=f"hardctl vae train on {settings.data} ({epoch} epochs)",
                     extra={"config_name": settings.config, "epochs": epoch, "data": settings.data})
            save_checkpoint(out / CHECKPOINT, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                               "epoch": epoch, "step": step, "rng": rng_state()})
        epochs_log.append(record)
        reporter.end_epoch(record)
        main = "train_elbo" if arch == "vdvae" else "train_loss"
        log(f"epoch {epoch}/{settings.epochs}: {main.removeprefix('train_')} {record.get(main, float('nan')):.4f}, "
            f"val MSE {record['val_mse']:.5f}" + (f", val ELBO {record['val_elbo']:.4f} nats/dim" if "val_elbo" in record
                                                  else "") + f", {skipped} skipped steps, {record['time_s']:.1f} s")
    grid = write_grid(model, arch, val_images[:GRID_IMAGES].to(device), out / GRID_FILE)
    log(f"wrote {out / VAE_FILE} and {grid}")
    reporter.close()
    records = epochs_log.read()
    return {"out": str(out), "arch": arch, "config": settings.config, "data": settings.data,
            "epochs": settings.epochs, "parameters": n_params, "image_size": side, "channels": channels,
            "vae": str(out / VAE_FILE), "grid": str(grid), "last_epoch": records[-1] if records else None,
            "first_epoch": records[0] if records else None}
