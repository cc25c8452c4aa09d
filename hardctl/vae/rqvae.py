"""RQ-VAE (Lee et al. 2022; kakaobrain/rq-vae-transformer, stage 1), written here to match upstream exactly.

State-dict keys, layer order and numerics follow upstream so an official ``model.pt`` loads strictly and
``tests/fixtures/vae/rqvae-tiny.safetensors`` (upstream outputs for seeded weights) is reproduced.
What differs on purpose:

* The codebook is **frozen** in every forward pass: quantising never updates the EMA buffers nor restarts
  codes, whatever the module's mode. HARD only fine-tunes a pretrained RQ-VAE, and an augmentor that moved
  the codebook on its adversarial batches would change the VAE it is meant to perturb. Training from scratch
  (``hardctl vae train``) calls :meth:`RQVAE.ema_update` explicitly after each step instead.
* :meth:`RQVAE.loss` is MSE (or L1) + ``latent_loss_weight`` · commitment only; upstream adds LPIPS and a
  patch-GAN, which need extra weights and GPU time this CPU-scale trainer does not have.
* SiLU and dropout are out of place (upstream's in-place versions give the same numbers but get in the way
  of autograd when activations are reused).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hardctl.errors import UsageError
from hardctl.vae.rqvae_config import RQVAE_PRESETS, RQVAEConfig
from hardctl.vae.statecheck import check_state_dict

__all__ = ["RQVAE", "RQVAEConfig", "RQVAE_PRESETS", "NOISE_SITES", "load_official_rqvae"]
EMA_EPS = 1e-5  # upstream's Laplace smoothing of the EMA cluster sizes
NOISE_SITES = ("pre_quant", "post_quant")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN→SiLU→3×3, GN→SiLU→dropout→3×3, plus a 1×1 ``nin_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int, dropout: float, checkpointing: bool = False):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.dropout = _norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)
        self.checkpointing = checkpointing

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._body, x, use_reentrant=False)
        return self._body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions with 1×1 q, k, v, proj_out and a residual add."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)  # b, n, c
        k, v = self.k(h).reshape(b, c, -1), self.v(h).reshape(b, c, -1)  # b, c, n
        attn = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # b, n_query, n_key
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right and bottom by one, then a 3×3 stride-2 convolution (upstream's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, name: str) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attn)
    if resample is not None:
        setattr(level, name, resample)
    return level


def _mid(width: int, cfg: RQVAEConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(width, width, cfg.dropout, cfg.checkpointing)
    mid.attn_1 = AttnBlock(width)
    mid.block_2 = ResnetBlock(width, width, cfg.dropout, cfg.checkpointing)
    return mid


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width, res = cfg.ch, cfg.resolution
        for i, mult in enumerate(cfg.ch_mult):
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(width, cfg.ch * mult, cfg.dropout, cfg.checkpointing))
                width = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(width))
            last = i == len(cfg.ch_mult) - 1
            self.down.append(_level(blocks, attn, None if last else Downsample(width), "downsample"))
            res = res if last else res // 2
        self.mid = _mid(width, cfg)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirror of the encoder; ``up[i]`` is stored by level index (``up[0]`` is full resolution, run last)."""

    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        width = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsampling
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = _mid(width, cfg)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, cfg.ch * cfg.ch_mult[i], cfg.dropout, cfg.checkpointing))
                width = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(width))
            levels.insert(0, _level(blocks, attn, Upsample(width) if i else None, "upsample"))
            res = res * 2 if i else res
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Codebook(nn.Module):
    """``n_embed`` codes plus an unused padding row (upstream's ``padding_idx``, excluded from the search);
    ``weight`` never takes gradients, the EMA buffers exist for strict loading and from-scratch training."""

    def __init__(self, n_embed: int, dim: int):
        super().__init__()
        weight = torch.randn(n_embed + 1, dim)
        weight[-1] = 0.0
        self.n_embed = n_embed
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("cluster_size_ema", torch.zeros(n_embed))
        self.register_buffer("embed_ema", weight[:-1].clone())

    @torch.no_grad()
    def nearest(self, r: torch.Tensor) -> torch.Tensor:
        """Index of the closest code for each vector of ``r`` (…, dim), by ‖r‖² + ‖e‖² − 2 r·e as upstream
        computes it (the same arithmetic keeps near-ties resolved the same way)."""
        codes_t = self.weight[:-1].t()
        flat = r.reshape(-1, r.shape[-1])
        dist = torch.addmm(flat.pow(2.0).sum(1, keepdim=True) + codes_t.pow(2.0).sum(0, keepdim=True),
                           flat, codes_t, alpha=-2.0)
        return dist.argmin(dim=-1).reshape(r.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.weight)

    @torch.no_grad()
    def ema_step(self, vectors: torch.Tensor, codes: torch.Tensor, decay: float, restart: bool) -> None:
        n, dim = self.n_embed, self.weight.shape[1]
        vectors = vectors.reshape(-1, dim).float()
        codes = codes.reshape(-1)
        counts = torch.bincount(codes, minlength=n).float()
        sums = torch.zeros(n, dim, device=vectors.device).index_add_(0, codes, vectors)
        self.cluster_size_ema.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_ema.mul_(decay).add_(sums, alpha=1 - decay)
        if restart:
            # dead codes (EMA count < 1) restart at random batch vectors, jittered like upstream so that
            # several restarts from one vector separate; drawn with replacement (upstream: a permutation)
            dead = self.cluster_size_ema < 1
            n_dead = int(dead.sum())
            if n_dead:
                pick = vectors[torch.randint(len(vectors), (n_dead,), device=vectors.device)]
                pick = pick + torch.rand_like(pick) * (0.01 / dim ** 0.5)
                self.embed_ema[dead] = pick
                self.cluster_size_ema[dead] = 1.0
        total = self.cluster_size_ema.sum()
        smoothed = total * (self.cluster_size_ema + EMA_EPS) / (total + n * EMA_EPS)
        self.weight[:-1] = self.embed_ema / smoothed[:, None]


class RQBottleneck(nn.Module):
    """Residual quantisation of depth ``code_shape[2]``; with a shared codebook the same :class:`Codebook`
    sits at every depth (its keys appear once per depth in the state dict, like upstream)."""

    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.shared_codebook:
            shared = Codebook(cfg.n_embed, cfg.codebook_dim)
            self.codebooks = nn.ModuleList([shared] * cfg.depth)
        else:
            self.codebooks = nn.ModuleList(Codebook(cfg.n_embed, cfg.codebook_dim) for _ in range(cfg.depth))

    def to_code_shape(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width, d = x.shape
        rh, rw = self.cfg.code_divisor
        x = x.reshape(b, height // rh, rh, width // rw, rw, d).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, height // rh, width // rw, -1)

    def to_latent_shape(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        rh, rw = self.cfg.code_divisor
        x = x.reshape(b, h, w, rh, rw, self.cfg.embed_dim).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h * rh, w * rw, self.cfg.embed_dim)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the nearest-code search runs in float32 even under autocast: bf16 distances would pick other codes
        with torch.autocast(z_e.device.type, enabled=False):
            return self._quantize(z_e.float())

    def _quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.to_code_shape(z_e)
        sums, codes = [], []
        with torch.no_grad():
            residual, total = x.detach().clone(), torch.zeros_like(x)
            for book in self.codebooks:
                code = book.nearest(residual)
                quant = book.lookup(code)
                residual = residual - quant
                total = total + quant
                sums.append(total)
                codes.append(code)
        # upstream's 'cumsum' commitment: the mean over depths of ‖z_e − (sum of the first d quants)‖²
        commitment = torch.stack([(x - s).pow(2.0).mean() for s in sums]).mean()
        z_q = self.to_latent_shape(sums[-1])
        return z_e + (z_q - z_e).detach(), commitment, torch.stack(codes, dim=-1)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.shape[-1] != self.cfg.depth:
            raise UsageError(f"codes have depth {codes.shape[-1]}, the RQ-VAE uses {self.cfg.depth}")
        quants = [book.lookup(codes[..., d]) for d, book in enumerate(self.codebooks)]
        return self.to_latent_shape(torch.stack(quants, dim=-2).sum(-2))

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step per codebook from the residuals each depth quantised; a shared codebook pools all
        depths in one step (upstream steps it once per depth within a forward pass)."""
        residual = self.to_code_shape(z_e.detach()).float()
        pooled: dict[int, tuple[Codebook, list, list]] = {}
        for d, book in enumerate(self.codebooks):
            entry = pooled.setdefault(id(book), (book, [], []))
            entry[1].append(residual.reshape(-1, residual.shape[-1]))
            entry[2].append(codes[..., d].reshape(-1))
            residual = residual - book.lookup(codes[..., d])
        for book, vectors, idx in pooled.values():
            book.ema_step(torch.cat(vectors), torch.cat(idx), self.cfg.decay, self.cfg.restart_unused_codes)


class RQVAE(nn.Module):
    """Encoder → quant_conv → residual quantiser → post_quant_conv → decoder, upstream's key names."""

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = RQBottleneck(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.quantizer.eval()

    def train(self, mode: bool = True) -> "RQVAE":
        super().train(mode)
        self.quantizer.eval()  # frozen codebook: only ema_update moves it, and only when asked
        return self

    def encode(self, x_m11: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] (B, C, H, W) → z_e (B, h, w, embed_dim), channels last."""
        return self.quant_conv(self.encoder(x_m11)).permute(0, 2, 3, 1).contiguous()

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (straight-through z_q, cumulative commitment loss, codes (B, h', w', depth) int64)."""
        return self.quantizer(z_e)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Channels-last latent → images, roughly in [−1, 1] (unclamped, as upstream)."""
        return self.decoder(self.post_quant_conv(z_q.permute(0, 3, 1, 2).contiguous()))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.embed_codes(codes))

    def forward(self, x_m11: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_q, commitment, codes = self.quantize(self.encode(x_m11))
        return self.decode(z_q), commitment, codes

    def reconstruct(self, x01: torch.Tensor, noise: torch.Tensor | None = None,
                    noise_site: str = "pre_quant") -> torch.Tensor:
        """Images in [0, 1] → reconstruction in [0, 1]; ``noise`` (broadcastable to z_e, channels last) is
        added before quantisation (``pre_quant``: the decoder still sees codebook sums) or after
        (``post_quant``: a continuous perturbation). Differentiable through the straight-through estimator."""
        if noise_site not in NOISE_SITES:
            raise UsageError(f"noise_site must be one of {', '.join(NOISE_SITES)}, not {noise_site!r}")
        self.config.check_image(*x01.shape[1:])
        z = self.encode(x01 * 2.0 - 1.0)
        if noise is not None and noise_site == "pre_quant":
            z = z + noise
        z, _, _ = self.quantize(z)
        if noise is not None and noise_site == "post_quant":
            z = z + noise
        return (self.decode(z).clamp(-1.0, 1.0) + 1.0) / 2.0

    def loss(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss on images in [0, 1]: reconstruction (MSE or L1 in [−1, 1], as upstream) plus
        ``latent_loss_weight`` · commitment. Also returns the detached ``z_e`` and ``codes`` for
        :meth:`ema_update`."""
        x = x01 * 2.0 - 1.0
        z_e = self.encode(x)
        z_q, commitment, codes = self.quantize(z_e)
        out = self.decode(z_q)
        recon = F.mse_loss(out, x) if self.config.loss_type == "mse" else F.l1_loss(out, x)
        total = recon + self.config.latent_loss_weight * commitment
        return {"loss": total, "recon": recon, "commitment": commitment, "z_e": z_e.detach(), "codes": codes}

    def ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """Move the codebook towards the vectors assigned to it (decay ``config.decay``, ε 1e-5, dead codes
        restarted when ``restart_unused_codes``). For the VAE trainer only, and only in train mode."""
        if not self.training:
            raise RuntimeError("RQVAE.ema_update is for training from scratch; call model.train() first")
        self.quantizer.ema_update(z_e, codes)

    def trainable_for_augmentor(self) -> list[nn.Parameter]:
        """Every parameter except the codebook (HARD fine-tunes the RQ-VAE in its entirety)."""
        return [p for name, p in self.named_parameters() if not name.startswith("quantizer.")]


def load_official_rqvae(path: str | Path, config_yaml: str | Path | None = None) -> RQVAE:
    """An official ``<name>/stage1/model.pt`` (or its folder) → an :class:`RQVAE` in eval mode. The
    architecture comes from ``config_yaml``, else ``config.yaml`` beside the file, else the in256 preset;
    only ``state_dict`` is read, through a loader that never runs code from the file."""
    from hardctl.vae.safepickle import load_state_dict_only

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    beside = path.parent / "config.yaml"
    if config_yaml is not None:
        cfg = RQVAEConfig.from_yaml(config_yaml)
    else:
        cfg = RQVAEConfig.from_yaml(beside) if beside.is_file() else RQVAE_PRESETS["in256"]
    state = load_state_dict_only(path, key="state_dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = RQVAE(cfg)
    check_state_dict(model, state, source=str(path), expected=f"an RQ-VAE of this config (ch {cfg.ch}, "
                     f"ch_mult {list(cfg.ch_mult)}, {cfg.n_embed} codes × {cfg.embed_dim}, depth {cfg.depth})")
    if cfg.shared_codebook:
        for d in range(1, cfg.depth):
            for part in ("weight", "cluster_size_ema", "embed_ema"):
                if not torch.equal(state[f"quantizer.codebooks.{d}.{part}"], state[f"quantizer.codebooks.0.{part}"]):
                    raise UsageError(f"{path}: quantizer.codebooks.{d}.{part} differs from depth 0, but the "
                                     "config says shared_codebook: true")
    model.load_state_dict(state, strict=True)
    return model.eval()

