"""VDVAE (Child 2021, openai/vdvae) re-implemented so that its state dict is upstream's, key for key.

The hierarchy: a bottleneck-ResNet encoder keeps its last activation at every resolution; a top-down
decoder runs one latent layer per block string token, each with a posterior head ``enc`` (q(z | x, z<)),
a prior head ``prior`` that also emits a residual for the state, ``z_proj`` and a residual ``resnet``.
The output is a discretized mixture of logistics (:mod:`hardctl.vae.dmol`). Submodule names are
upstream's so an official checkpoint loads strictly (``encoder.enc_blocks.N.cK``,
``decoder.dec_blocks.N.{enc,prior,resnet}.cK``, ``decoder.bias_xs.N``, ``decoder.out_net.out_conv``).
Unlike upstream, the encoder takes NCHW. Latents and the DMoL are computed in float32 even under autocast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hardctl.errors import UsageError, did_you_mean, shorten
from hardctl.vae.dmol import dmol_channels, dmol_mode_image, dmol_nll
from hardctl.vae.statecheck import check_state_dict

OFFICIAL_URL = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/"
DEFAULT_POSTERIOR_START = 10  # HARD fine-tunes the posterior heads from decoder layer 10 on (CIFAR: res ≥ 16)


def parse_blocks(text: str, field: str) -> list[tuple[int, int | None]]:
    """Upstream's block grammar: ``RxN`` (N blocks at R), ``RdK`` (block at R then K×K pooling; encoder),
    ``RmS`` (block at R mixing in the state of resolution S; decoder), ``R`` (one block)."""
    out: list[tuple[int, int | None]] = []
    for token in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:([xdm])(\d+))?\s*", token)
        if not m:
            raise UsageError(f"{field} token {token!r} is not RxN, RdK, RmS or R (e.g. '16x2,16d2,8x1')")
        res, kind, num = int(m.group(1)), m.group(2), int(m.group(3) or 0)
        if res < 1 or (kind and num < 1):
            raise UsageError(f"{field} token {token!r} needs positive numbers")
        if kind == "x":
            out += [(res, None)] * num
        else:
            out.append((res, num if kind else None))
    return out


@dataclasses.dataclass(frozen=True)
class VDVAEConfig:
    """A VDVAE's architecture and its data normalisation: the encoder sees ``(pixel_0..255 + shift)·scale``."""

    image_size: int
    image_channels: int
    width: int
    zdim: int
    bottleneck_multiple: float
    num_mixtures: int
    enc_blocks: str
    dec_blocks: str
    no_bias_above: int = 64
    custom_width_str: str = ""
    shift: float = -120.63838
    scale: float = 1.0 / 64.16736

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "zdim", "num_mixtures", "no_bias_above"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"VDVAE {name} must be at least 1, not {getattr(self, name)}")
        if self.image_channels not in (1, 3):
            raise UsageError(f"VDVAE image_channels must be 1 or 3, not {self.image_channels}")
        if self.custom_width_str:
            raise UsageError(f"VDVAE custom_width_str must be empty (one width everywhere), "
                             f"not {self.custom_width_str!r}")
        if self.middle_width < 1:
            raise UsageError(f"VDVAE width·bottleneck_multiple = {self.width}·{self.bottleneck_multiple} "
                             f"rounds to {self.middle_width}; it must be at least 1")
        if not (math.isfinite(self.scale) and self.scale != 0 and math.isfinite(self.shift)):
            raise UsageError(f"VDVAE normalisation needs a finite shift and a non-zero scale, "
                             f"not {self.shift}, {self.scale}")
        enc_res = self._check_encoder()
        self._check_decoder(enc_res)

    @property
    def middle_width(self) -> int:
        return int(self.width * self.bottleneck_multiple)

    def _check_encoder(self) -> set[int]:
        res, seen = self.image_size, {self.image_size}
        for r, down in parse_blocks(self.enc_blocks, "enc_blocks"):
            if r != res:
                raise UsageError(f"enc_blocks has a block at {r} where the resolution is {res} "
                                 f"(image {self.image_size}, pooled by each RdK)")
            if down is not None:
                if res % down:
                    raise UsageError(f"enc_blocks pools {res} by {down}, which does not divide it")
                res //= down
            seen.add(res)
        return seen

    def _check_decoder(self, enc_res: set[int]) -> None:
        layers = parse_blocks(self.dec_blocks, "dec_blocks")
        done: set[int] = set()
        for r, mixin in layers:
            if mixin is not None:  # upsampling is nearest by an integer factor from an earlier state
                if mixin not in done or mixin >= r:
                    raise UsageError(f"dec_blocks token {r}m{mixin} mixes in {mixin}, which needs an earlier, "
                                     f"lower-resolution decoder layer")
                if r % mixin:
                    raise UsageError(f"dec_blocks token {r}m{mixin}: {r}/{mixin} is not an integer")
            if r not in enc_res:
                raise UsageError(f"dec_blocks uses resolution {r} but the encoder produces only "
                                 f"{sorted(enc_res)}")
            done.add(r)
        if max(done) != self.image_size:
            raise UsageError(f"dec_blocks tops out at {max(done)}, not the image size {self.image_size}")

    @property
    def enc_layers(self) -> list[tuple[int, int | None]]:
        return parse_blocks(self.enc_blocks, "enc_blocks")

    @property
    def dec_layers(self) -> list[tuple[int, int | None]]:
        return parse_blocks(self.dec_blocks, "dec_blocks")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VDVAEConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise UsageError(f"unknown VDVAE setting {unknown[0]!r}{did_you_mean(unknown[0], names)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise UsageError(f"incomplete VDVAE configuration: {shorten(exc)}") from None


VDVAE_PRESETS: dict[str, VDVAEConfig] = {
    # The reference-vector configuration (tests/fixtures/vae/vdvae-tiny.safetensors): 9 latent layers.
    "tiny": VDVAEConfig(image_size=16, image_channels=3, width=32, zdim=4, bottleneck_multiple=0.25,
                        num_mixtures=3, enc_blocks="16x2,16d2,8x2,8d2,4x1,4d4,1x1",
                        dec_blocks="1x1,4m1,4x1,8m4,8x2,16m8,16x2"),
    # 16×16 grayscale (digits; Fashion-MNIST resized): 16 latent layers arranged like CIFAR's so that the
    # default posterior start 10 is the first full-resolution layer (80 % of the latent dimensions, as
    # layers 10.. hold 98 % on CIFAR). Width 64 / zdim 8 / 5 mixtures is 439,343 parameters, ~0.23 s per
    # batch-32 step on one CPU core (600 steps on the digits: ELBO 1.84 → 0.70 nats/dim, recon MSE 0.23 →
    # 0.016); the [-1, 1] normalisation needs no per-data-set statistics. RGB: dataclasses.replace(..., 3).
    "small": VDVAEConfig(image_size=16, image_channels=1, width=64, zdim=8, bottleneck_multiple=0.25,
                         num_mixtures=5, enc_blocks="16x3,16d2,8x3,8d2,4x3,4d4,1x2",
                         dec_blocks="1x1,4m1,4x3,8m4,8x4,16m8,16x5", shift=-127.5, scale=1.0 / 127.5),
    # The official CIFAR-10 model (hps.py · cifar10): 39,145,700 parameters, 43 latent layers.
    "cifar10": VDVAEConfig(image_size=32, image_channels=3, width=384, zdim=16, bottleneck_multiple=0.25,
                           num_mixtures=10, enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
                           dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"),
}


def vdvae_preset(name: str) -> VDVAEConfig:
    if name not in VDVAE_PRESETS:
        raise UsageError(f"no VDVAE configuration {name!r}{did_you_mean(name, VDVAE_PRESETS)}",
                         hint="choose one of " + ", ".join(VDVAE_PRESETS))
    return VDVAE_PRESETS[name]


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    nn.init.zeros_(conv.bias)  # upstream zero-initialises every conv bias
    return conv


class Block(nn.Module):
    """GELU→1×1→GELU→3×3→GELU→3×3→GELU→1×1 bottleneck (1×1 throughout at res ≤ 2), optional residual
    and average pooling. No normalisation layers."""

    def __init__(self, cin: int, mid: int, cout: int, res: int, residual: bool, down: int | None = None):
        super().__init__()
        k = 3 if res > 2 else 1
        self.c1, self.c2, self.c3, self.c4 = _conv(cin, mid, 1), _conv(mid, mid, k), _conv(mid, mid, k), _conv(mid, cout, 1)
        self.residual, self.down = residual, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c4(F.gelu(self.c3(F.gelu(self.c2(F.gelu(self.c1(F.gelu(x))))))))
        out = x + h if self.residual else h
        return F.avg_pool2d(out, self.down) if self.down else out


class Encoder(nn.Module):
    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.in_conv = _conv(cfg.image_channels, cfg.width, 3)
        layers = cfg.enc_layers
        self.enc_blocks = nn.ModuleList(Block(cfg.width, cfg.middle_width, cfg.width, r, True, d) for r, d in layers)
        with torch.no_grad():  # keeps the residual stream's variance bounded at init, as upstream
            for b in self.enc_blocks:
                b.c4.weight.mul_(math.sqrt(1.0 / len(layers)))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.in_conv(x)
        acts = {x.shape[2]: x}
        for block in self.enc_blocks:
            x = block(x)
            acts[x.shape[2]] = x  # the last activation at each resolution feeds the decoder
        return acts


def _gaussian_kl(qm, qlogs, pm, plogs):
    """Elementwise KL(N(qm, e^qlogs) ‖ N(pm, e^plogs))."""
    return -0.5 + plogs - qlogs + 0.5 * (qlogs.exp() ** 2 + (qm - pm) ** 2) / (plogs.exp() ** 2)


def _draw(mean, logsigma, eps_scale, generator):
    """``mean + e^logsigma · ε · eps_scale`` in float32 (ε ~ N(0, I)); exactly ``mean`` when eps_scale is 0."""
    if eps_scale == 0:
        return mean
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    return mean + torch.exp(logsigma) * eps * eps_scale


class DecBlock(nn.Module):
    def __init__(self, cfg: VDVAEConfig, res: int, mixin: int | None, n_blocks: int):
        super().__init__()
        w, mid, self.zdim, self.base, self.mixin = cfg.width, cfg.middle_width, cfg.zdim, res, mixin
        self.enc = Block(2 * w, mid, 2 * cfg.zdim, res, residual=False)
        self.prior = Block(w, mid, 2 * cfg.zdim + w, res, residual=False)
        self.z_proj = _conv(cfg.zdim, w, 1)
        self.resnet = Block(w, mid, w, res, residual=True)
        with torch.no_grad():  # the prior adds no residual and the latents little at init, as upstream
            self.prior.c4.weight.zero_()
            self.z_proj.weight.mul_(math.sqrt(1.0 / n_blocks))
            self.resnet.c4.weight.mul_(math.sqrt(1.0 / n_blocks))

    def forward(self, xs: dict[int, torch.Tensor], acts: torch.Tensor | None, n: int, eps_scale: float,
                latent: torch.Tensor | None, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Advance ``xs[self.base]`` by one latent layer. With ``acts`` z comes from the posterior, without
        from the prior; ``latent`` overrides the draw. Returns the layer's stats."""
        x = xs[self.base].expand(n, -1, -1, -1)
        if self.mixin is not None:
            up = xs[self.mixin][:, :x.shape[1]]
            x = x + F.interpolate(up, scale_factor=self.base // self.mixin, mode="nearest").expand(n, -1, -1, -1)
        feats = self.prior(x)
        q = self.enc(torch.cat([x, acts], dim=1)) if acts is not None else None
        stats: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=x.device.type, enabled=False):  # z and KL in float32
            pm, plogs = feats[:, :self.zdim].float(), feats[:, self.zdim:2 * self.zdim].float()
            if q is not None:
                qm, qlogs = q.float().chunk(2, dim=1)
                z = _draw(qm, qlogs, eps_scale, generator) if latent is None else latent.float()
                stats["kl"] = _gaussian_kl(qm, qlogs, pm, plogs)
            else:
                z = _draw(pm, plogs, eps_scale, generator) if latent is None else latent.float()
        stats["z"] = z
        x = x + feats[:, 2 * self.zdim:]
        x = x + self.z_proj(z.to(x.dtype))
        xs[self.base] = self.resnet(x)
        return stats


class DmolHead(nn.Module):
    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.out_conv = _conv(cfg.width, dmol_channels(cfg.num_mixtures, cfg.image_channels), 1)


class Decoder(nn.Module):
    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        layers = cfg.dec_layers
        self.dec_blocks = nn.ModuleList(DecBlock(cfg, r, m, len(layers)) for r, m in layers)
        self.bias_res = sorted(r for r in {r for r, _ in layers} if r <= cfg.no_bias_above)
        self.bias_xs = nn.ParameterList(nn.Parameter(torch.zeros(1, cfg.width, r, r)) for r in self.bias_res)
        self.out_net = DmolHead(cfg)
        self.gain = nn.Parameter(torch.ones(1, cfg.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, cfg.width, 1, 1))


class VDVAE(nn.Module):
    """A VDVAE whose ``state_dict()`` keys are upstream's. Images in [0, 1] (or uint8), NCHW."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    # -- the passes ---------------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        c, s = self.cfg.image_channels, self.cfg.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise UsageError(f"this VDVAE takes {c}×{s}×{s} images (NCHW); got {'×'.join(map(str, x.shape[1:]))}")

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images as float 0..255, or float images in [0, 1] scaled to 0..255 (float32)."""
        self._check_images(x)
        return x.float() if x.dtype == torch.uint8 else x.float() * 255.0

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encoder input from 0..255 pixels: ``(x + shift)·scale``."""
        return (pixels + self.cfg.shift) * self.cfg.scale

    def encode(self, x_norm: torch.Tensor) -> dict[int, torch.Tensor]:
        """The encoder's last activation at each resolution, from normalised NCHW images."""
        self._check_images(x_norm)
        return self.encoder(x_norm)

    def _start_states(self, n: int, like: torch.Tensor) -> dict[int, torch.Tensor]:
        xs = dict(zip(self.decoder.bias_res, self.decoder.bias_xs))
        for r, _ in self.cfg.dec_layers:  # resolutions above no_bias_above start from zeros
            xs.setdefault(r, like.new_zeros(1, self.cfg.width, r, r))
        return xs

    def _finish(self, xs: dict[int, torch.Tensor]) -> torch.Tensor:
        return xs[self.cfg.image_size] * self.decoder.gain + self.decoder.bias

    def decode(self, acts: Mapping[int, torch.Tensor], eps_scale: float = 1.0,
               latents: Sequence[torch.Tensor | None] | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Run the top-down pass on encoder activations, z ~ q(z | x, z<) at every layer.

        ``z = qm + e^qlogσ · ε · eps_scale`` (ε in float32 from ``generator``; ``eps_scale=0`` gives the
        posterior mean). ``latents[i]``, where given and not None, replaces layer i's z (its ``kl`` stays
        that of the posterior). Returns the image-resolution state after ``·gain + bias`` and per layer
        ``{"z", "kl"}`` (elementwise KL(q‖p), float32)."""
        ref = acts[self.cfg.image_size]
        xs = self._start_states(ref.shape[0], ref)
        stats = []
        for i, block in enumerate(self.decoder.dec_blocks):
            latent = latents[i] if latents is not None and i < len(latents) else None
            stats.append(block(xs, acts[block.base], ref.shape[0], eps_scale, latent, generator))
        return self._finish(xs), stats

    def manual_latents_state(self, acts: Mapping[int, torch.Tensor] | int, latents: Sequence[torch.Tensor],
                             eps_scale: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """The decoder state with the first ``len(latents)`` layers' z given and the rest drawn from the
        prior, ``pm + e^plogσ·ε·eps_scale`` (upstream ``forward_manual_latents`` at t=None; the default
        ``eps_scale=0`` takes the prior mean). ``acts`` (or a batch size) only sets the batch size."""
        n = acts if isinstance(acts, int) else next(iter(acts.values())).shape[0]
        xs = self._start_states(n, self.decoder.gain)
        for i, block in enumerate(self.decoder.dec_blocks):
            block(xs, None, n, eps_scale, latents[i] if i < len(latents) else None, generator)
        return self._finish(xs)

    def dmol_params(self, state: torch.Tensor) -> torch.Tensor:
        """The output head on a decoder state, channels last (B,H,W,·), computed in float32."""
        conv = self.decoder.out_net.out_conv
        with torch.autocast(device_type=state.device.type, enabled=False):
            out = F.conv2d(state.float(), conv.weight.float(), conv.bias.float())
        return out.permute(0, 2, 3, 1)

    def elbo(self, x: torch.Tensor, eps_scale: float = 1.0,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Upstream ``VAE.forward``'s per-dimension nats (batch means): ``distortion`` = DMoL NLL of the
        8-bit target ``(x − 127.5)/127.5``, ``rate`` = Σ KL / (C·H·W), ``elbo`` = their sum.
        ``x``: uint8 0..255 or float in [0, 1], NCHW."""
        pixels = self.pixels(x)
        state, stats = self.decode(self.encode(self.normalize(pixels)), eps_scale, generator=generator)
        target = ((pixels.round() - 127.5) / 127.5).permute(0, 2, 3, 1)  # the likelihood is over 8-bit bins
        distortion = dmol_nll(self.dmol_params(state), target)
        rate = sum(s["kl"].sum(dim=(1, 2, 3)) for s in stats) / target[0].numel()
        return {"elbo": (distortion + rate).mean(), "distortion": distortion.mean(), "rate": rate.mean()}

    def reconstruct(self, x01: torch.Tensor, eps_scale: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """One encode-decode pass to an image in [0, 1] of the input's shape, differentiable with respect
        to the posterior heads (through z = qm + σ·ε and the selected component's mean)."""
        state, _ = self.decode(self.encode(self.normalize(self.pixels(x01))), eps_scale, generator=generator)
        # The most likely mixture component's mean, not a sample: the augmentor's randomness already comes
        # from the posterior ε, and logistic sampling noise (or Gumbel selection) would add per-pixel
        # noise that the teacher is not invariant to and that the augmentor cannot control.
        img = dmol_mode_image(self.dmol_params(state), self.cfg.image_channels)
        return ((img + 1.0) / 2.0).permute(0, 3, 1, 2)

    # -- fine-tuning the posterior -------------------------------------------------------------------
    def posterior_parameters(self, start: int = DEFAULT_POSTERIOR_START) -> list[nn.Parameter]:
        """The parameters of the posterior heads ``decoder.dec_blocks[i].enc`` for i ≥ ``start``."""
        n = len(self.decoder.dec_blocks)
        if not 0 <= start < n:
            raise UsageError(f"posterior start {start} is outside this VDVAE's {n} latent layers (0..{n - 1})")
        return [p for blk in self.decoder.dec_blocks[start:] for p in blk.enc.parameters()]

    def set_trainable_posterior(self, start: int = DEFAULT_POSTERIOR_START) -> list[nn.Parameter]:
        """Freeze everything but the posterior heads from layer ``start`` on; returns those parameters."""
        params = self.posterior_parameters(start)
        self.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        return params


def official_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """An upstream checkpoint object as our key names: a mapping str → Tensor, ``module.`` prefixes
    stripped (DDP saves), the fork's ``bias_xs_k`` attributes renamed ``bias_xs.k``."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in obj.items()):
        raise UsageError(f"{source} is not a VDVAE state dict (a mapping of names to tensors); "
                         f"it holds a {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        state[re.sub(r"^decoder\.bias_xs_(\d+)$", r"decoder.bias_xs.\1", key)] = value
    return state


def _describe(state: Mapping[str, torch.Tensor]) -> str | None:
    """What architecture a foreign state dict looks like, for the error's hint."""
    try:
        width = state["encoder.in_conv.weight"].shape[0]
        zdim = state["decoder.dec_blocks.0.enc.c4.weight"].shape[0] // 2
    except (KeyError, IndexError):
        return None
    count = lambda prefix: len({k.split(".")[2] for k in state if k.startswith(prefix)})  # noqa: E731
    return (f"the file has width {width}, zdim {zdim}, {count('encoder.enc_blocks.')} encoder / "
            f"{count('decoder.dec_blocks.')} decoder blocks")


def load_official_vdvae(path: str | Path, preset: str = "cifar10") -> VDVAE:
    """Load an openai/vdvae checkpoint (a plain ``torch.save(state_dict)``, e.g. ``cifar10-seed0-iter-
    900000-model-ema.th``) strictly into the ``preset`` architecture, in eval mode. Nothing is executed
    from the file (``weights_only=True``); keys, shapes, dtypes and finiteness are checked first."""
    cfg = vdvae_preset(preset)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no VDVAE weights file at {path}",
                         hint=f"download e.g. cifar10-seed0-iter-900000-model-ema.th from {OFFICIAL_URL}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign, corrupt or code-carrying files
        raise UsageError(f"{path} is not a PyTorch weights file that loads without running code: "
                         f"{shorten(exc)}") from None
    state = official_state(obj, str(path))
    with torch.device("meta"):  # shapes only: the real tensors come from the file
        model = VDVAE(cfg)
    check_state_dict(model, state, source=str(path), expected=f"a {preset} VDVAE", hint=_describe(state))
    for key, value in state.items():
        if not value.is_floating_point():
            raise UsageError(f"{path} holds {key} as {value.dtype}; a VDVAE's tensors are float32")
        value = value.float()
        if not torch.isfinite(value).all():
            raise UsageError(f"{path} holds non-finite values in {key}; the file is damaged")
        state[key] = value
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
