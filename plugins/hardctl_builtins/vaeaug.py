"""HARD-VAE (paper section 4.1): augmentors that fine-tune a pretrained VAE, registered as ``vdvae`` and ``rqvae``.

Both take a hardctl VAE file (``--aug-opt weights=PATH``, written by ``hardctl vae train`` or ``hardctl vae
convert``), map images in ``[0, 1]`` to the VAE's differentiable reconstruction in ``[0, 1]`` (each VAE's own
normalisation stays inside the model), and start as that reconstruction: pool entry 0 is the pretrained VAE,
identity up to its reconstruction error. Only part of the VAE is trained, and a pool entry holds only that
part (the base class's snapshot of the parameters with ``requires_grad``); ``forward_with`` swaps an
entry's tensors in over the shared frozen rest.

* ``vdvae`` fine-tunes the posterior heads ``decoder.dec_blocks[i].enc`` for ``i >= start`` (default 10: on
  CIFAR-10's 43 layers the first 16×16 layer, so the coarse layers 0–9 keep the pretrained layout and class
  evidence while the augmentor edits mid and fine structure). The latents are ``z = qm + σ·ε·eps_scale`` with
  ε drawn in float32 from a per-batch seed (the draw, so ``forward_with`` replays it); the image is the most
  likely DMoL component's mean (:meth:`hardctl.vae.vdvae.VDVAE.reconstruct`), in float32 under autocast.
* ``rqvae`` fine-tunes the whole RQ-VAE except the codebook (encoder, decoder, quant convs) plus a learned
  per-channel noise vector on the latent, ``z_e + s ⊙ (μ + e^{log σ} ⊙ n)``, n ~ N(0, 1) per image and
  position. ``s`` is the codebook's per-channel RMS, a data-free measure of the latent's scale, so
  ``noise_init`` is relative and one default fits every RQ-VAE.

The VAE stays in eval mode whatever the trainer calls (:meth:`_VAEAugmentor.train`): no dropout (a pool
entry must replay exactly), no gradient checkpointing, and the RQ-VAE quantiser never EMA-updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardctl.augment import Augmentor, HardDefaults, Option
from hardctl.errors import UsageError

__all__ = ["VAE_HARD_DEFAULTS", "VDVAEAugmentor", "RQVAEAugmentor"]

# The paper's HARD-VAE settings (appendix A): switch to the augmentor below 10 % student error, back above 60 %,
# after k = 5 iterations; augmentor Adam lr 1e-4 (the VAE is pretrained, larger steps wreck it); batch 160.
VAE_HARD_DEFAULTS = HardDefaults(l_min=0.10, l_max=0.60, patience=5, lambda_s=1.0, lambda_t=1.0, lr=1e-4,
                                 batch_size=160)
SEED_RANGE = 2 ** 62  # the per-batch ε seed is drawn below this (an int64 the generator accepts)


@dataclass(frozen=True)
class PathOption(Option):
    """A file option recorded as an absolute path: the run's ``config.toml`` keeps what the option resolved
    to, and ``hardctl visualize`` or ``--resume`` rebuild the augmentor from it, maybe from another folder."""

    def parse(self, raw: Any, owner: str) -> Any:
        value = super().parse(raw, owner)
        return str(Path(value).expanduser().absolute()) if value else value


def _make_hint(arch: str) -> str:
    return (f"make one with `hardctl vae train --arch {arch} --config NAME --data SPEC --out DIR` or "
            f"`hardctl vae convert FILE --arch {arch} --out vae.safetensors`")


class _VAEAugmentor(Augmentor):
    """What both VAE augmentors share: loading the file, the geometry check, the frozen eval-mode VAE."""

    arch = ""  # "vdvae" | "rqvae": the architecture the weights file must hold
    teacher_term = True
    hard_defaults = VAE_HARD_DEFAULTS

    def _load(self, weights: str) -> nn.Module:
        """The VAE in ``weights`` (a hardctl VAE file of this augmentor's architecture), frozen, on the CPU."""
        who = f"--augmentor {self.arch}"
        if not weights:
            raise UsageError(f"{who} needs a VAE: --aug-opt weights=PATH (a hardctl VAE file)",
                             hint=_make_hint(self.arch))
        path = Path(weights).expanduser()
        if not (path.is_file() or (path / "vae.safetensors").is_file()):  # a file, or a vae train run folder
            raise UsageError(f"{who}: no VAE file at {path}", hint=_make_hint(self.arch))
        from hardctl.vae.files import load_vae

        model, meta = load_vae(path)
        found = meta.get("arch")
        if found != self.arch:
            raise UsageError(f"{who}: {path} holds a {found} VAE, not a {self.arch}",
                             hint=f"use --augmentor {found}, or a {self.arch} file" if found in ("vdvae", "rqvae")
                             else _make_hint(self.arch))
        return model.requires_grad_(False).eval()

    def _misfit(self, takes: str) -> UsageError:
        have = f"{self.in_chans}×{self.img_size[0]}×{self.img_size[1]}"
        return UsageError(f"--augmentor {self.arch}: this VAE takes {takes}; the data has {have} (train a VAE for "
                          f"this data with `hardctl vae train --arch {self.arch} --config NAME --data SPEC`)")

    def train(self, mode: bool = True) -> "_VAEAugmentor":
        """The augmentor's own flag follows ``mode``; the VAE stays in eval mode (the trainer's ``.train()``
        must not switch dropout, gradient checkpointing or the quantiser's mode)."""
        super().train(mode)
        self.vae.eval()
        return self


class VDVAEAugmentor(_VAEAugmentor):
    """HARD-VAE on a VDVAE: its posterior heads from decoder layer ``start`` on are trained, the rest frozen."""

    arch = "vdvae"
    options = (
        PathOption("weights", str, "", "hardctl VAE file of a VDVAE (hardctl vae train / vae convert); required"),
        Option("start", int, 10, "first decoder layer (0-based) whose posterior head is fine-tuned; earlier "
               "layers keep the pretrained coarse structure (the paper: 10, CIFAR-10's first 16×16 layer)", min=0),
        Option("eps_scale", float, 1.0, "scale of the posterior noise ε in z = qm + σ·ε (1: a posterior sample, "
               "0: the posterior mean, no randomness)", min=0.0, max=10.0),
    )

    def __init__(self, *, in_chans: int, img_size, weights: str = "", start: int = 10, eps_scale: float = 1.0):
        super().__init__(in_chans=in_chans, img_size=img_size)
        vae = self._load(weights)
        cfg = vae.cfg
        if (in_chans, *self.img_size) != (cfg.image_channels, cfg.image_size, cfg.image_size):
            raise self._misfit(f"{cfg.image_channels}×{cfg.image_size}×{cfg.image_size} images")
        layers = len(vae.decoder.dec_blocks)
        if not 0 <= start < layers:
            raise UsageError(f"--augmentor vdvae option start={start} is out of range: this VAE has {layers} latent "
                             f"layers, so start must be in 0..{layers - 1}")
        self.vae = vae
        vae.set_trainable_posterior(start)  # only decoder.dec_blocks[start:].enc keep requires_grad
        self.start, self.eps_scale = int(start), float(eps_scale)
        self.train(False)

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # One seed per batch (on the CPU, from the global RNG) fixes every layer's ε: the VAE draws them in
        # float32 layer by layer from a generator seeded with it, so a draw is replayable without storing ε.
        return {"seed": torch.randint(SEED_RANGE, (1,), dtype=torch.int64)}

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(params["seed"]))
        return self.vae.reconstruct(x, self.eps_scale, generator)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, start={self.start}, eps_scale={self.eps_scale}"


def _codebook_rms(vae: nn.Module) -> torch.Tensor:
    """Per latent channel, the RMS of the first codebook's codes (padding row excluded): the scale of z_e that
    quantisation expects, known without data. A codebook entry spans ``rh·rw`` latent positions when the code
    grid is coarser than the latent grid; they share the channel's scale."""
    cfg = vae.config
    weight = vae.quantizer.codebooks[0].weight.detach()[:-1].float()
    per_channel = weight.reshape(weight.shape[0], -1, cfg.embed_dim).pow(2).mean(dim=(0, 1)).sqrt()
    return per_channel.clamp(min=1e-6)  # a dead channel still gets a (tiny) noise scale


class RQVAEAugmentor(_VAEAugmentor):
    """HARD-VAE on an RQ-VAE: the whole model but the codebook is trained, plus a learned latent noise vector."""

    arch = "rqvae"
    options = (
        PathOption("weights", str, "", "hardctl VAE file of an RQ-VAE (hardctl vae train / vae convert); required"),
        Option("noise_site", str, "pre_quant", "where the learned noise joins the latent: pre_quant (before the "
               "quantiser: the decoder sees only codebook sums, so outputs stay realistic) or post_quant (always "
               "effective, but off the codebook)",
               choices=("pre_quant", "post_quant")),
        Option("noise_init", float, 0.01, "initial σ of the per-channel noise, relative to the latent's scale "
               "(the codebook's per-channel RMS); small, so entry 0 is the plain reconstruction",
               min=0.0, min_inclusive=False, max=10.0),
    )

    def __init__(self, *, in_chans: int, img_size, weights: str = "", noise_site: str = "pre_quant",
                 noise_init: float = 0.01):
        super().__init__(in_chans=in_chans, img_size=img_size)
        if noise_site not in ("pre_quant", "post_quant"):
            raise UsageError(f"--augmentor rqvae option noise_site={noise_site!r} is not one of pre_quant, post_quant")
        vae = self._load(weights)
        cfg = vae.config
        step = cfg.downsampling * max(cfg.code_divisor)
        height, width = self.img_size
        if in_chans != cfg.in_channels or height % step or width % step:
            raise self._misfit(f"{cfg.in_channels}-channel images with sides a multiple of {step} "
                               f"(trained at {cfg.in_channels}×{cfg.resolution}×{cfg.resolution})")
        self.vae = vae
        for p in vae.trainable_for_augmentor():  # everything but the codebook (frozen by the model itself)
            p.requires_grad_(True)
        self.noise_site, self.noise_init = noise_site, float(noise_init)
        self.latent_hw = (height // cfg.downsampling, width // cfg.downsampling)
        self.register_buffer("latent_scale", _codebook_rms(vae))
        self.noise_mean = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.noise_log_std = nn.Parameter(torch.full((cfg.embed_dim,), math.log(noise_init)))
        self.train(False)

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shape = (x.shape[0], *self.latent_hw, self.vae.config.embed_dim)  # channels last, like z_e
        return {"n": torch.randn(shape, device=x.device, dtype=torch.float32)}

    def noise(self, n: torch.Tensor) -> torch.Tensor:
        """The latent perturbation for a standard-normal draw ``n`` (float32)."""
        return self.latent_scale * (self.noise_mean.float() + self.noise_log_std.float().exp() * n.float())

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.vae.reconstruct(x, noise=self.noise(params["n"]), noise_site=self.noise_site)
        return out.float()  # bf16 under autocast: the student and the pool expect float pixels like the others'

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise_site={self.noise_site}, noise_init={self.noise_init}"
