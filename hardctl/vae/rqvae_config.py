"""Configuration of the RQ-VAE (kakaobrain/rq-vae-transformer stage 1): upstream's ``arch.ddconfig`` and
``arch.hparams`` as one frozen record, read from upstream's ``config.yaml`` or our JSON, plus named presets.
The model itself is in :mod:`hardctl.vae.rqvae`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hardctl.errors import UsageError
from hardctl.tomlio import read_yaml

_DD = ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
       "attn_resolutions", "dropout")
_HP = ("embed_dim", "n_embed", "latent_shape", "code_shape", "shared_codebook", "decay", "restart_unused_codes",
       "loss_type", "latent_loss_weight", "bottleneck_type", "checkpointing")
# Upstream's values for keys a config.yaml may leave out (RQVAE/Encoder signatures, augment_arch_defaults).
_YAML_HP_DEFAULTS = {"embed_dim": 64, "n_embed": 512, "decay": 0.99, "loss_type": "l1", "latent_loss_weight": 0.25,
                     "restart_unused_codes": False, "bottleneck_type": "rq", "checkpointing": False}
_YAML_DD_DEFAULTS = {"ch_mult": (1, 2, 4, 8), "dropout": 0.0, "double_z": True}


@dataclass(frozen=True)
class RQVAEConfig:
    """Upstream's ``arch.ddconfig`` (encoder/decoder) and ``arch.hparams`` (quantiser, loss) in one record."""

    z_channels: int
    resolution: int
    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    embed_dim: int
    n_embed: int
    latent_shape: tuple[int, int, int]
    code_shape: tuple[int, int, int]
    shared_codebook: bool = True
    decay: float = 0.99
    restart_unused_codes: bool = True
    loss_type: str = "mse"
    latent_loss_weight: float = 0.25
    dropout: float = 0.0
    double_z: bool = False
    bottleneck_type: str = "rq"
    checkpointing: bool = False  # recompute ResnetBlocks in backward (memory for time; numerics unchanged)

    def __post_init__(self):
        for name in ("ch_mult", "attn_resolutions", "latent_shape", "code_shape"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                raise UsageError(f"rqvae config: {name} must be a list of integers, not {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str):
            raise UsageError(f"rqvae config: {msg}")

        if self.double_z:
            bad("double_z must be false (the RQ-VAE encoder outputs z_channels, not a mean and a variance)")
        if self.bottleneck_type != "rq":
            bad(f"bottleneck_type must be 'rq', not {self.bottleneck_type!r}")
        if self.loss_type not in ("mse", "l1"):
            bad(f"loss_type must be 'mse' or 'l1', not {self.loss_type!r}")
        for name in ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "embed_dim",
                     "n_embed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            bad(f"ch_mult must be a non-empty list of positive integers, not {list(self.ch_mult)}")
        widths = sorted({self.ch * m for m in self.ch_mult})
        if any(w % 32 for w in widths):
            bad(f"ch × ch_mult gives widths {widths}; each must be a multiple of 32 (GroupNorm with 32 groups)")
        if self.resolution % self.downsampling:
            bad(f"resolution {self.resolution} must be divisible by 2**(len(ch_mult)-1) = {self.downsampling}")
        reached = [self.resolution // 2**i for i in range(len(self.ch_mult))]
        if any(r not in reached for r in self.attn_resolutions):
            bad(f"attn_resolutions {list(self.attn_resolutions)} must be among the levels' resolutions {reached}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), not {self.dropout}")
        if not 0.0 < self.decay < 1.0:
            bad(f"decay must be in (0, 1), not {self.decay}")
        if self.latent_loss_weight < 0:
            bad(f"latent_loss_weight must be >= 0, not {self.latent_loss_weight}")
        side = self.resolution // self.downsampling
        if len(self.latent_shape) != 3 or tuple(self.latent_shape) != (side, side, self.embed_dim):
            bad(f"latent_shape {list(self.latent_shape)} must be [{side}, {side}, {self.embed_dim}] "
                f"(resolution / 2**(len(ch_mult)-1), embed_dim)")
        cs = self.code_shape
        if len(cs) != 3 or min(cs) < 1 or side % cs[0] or side % cs[1]:
            bad(f"code_shape {list(cs)} must be [h, w, depth] with h and w dividing the latent side {side}")

    # derived sizes
    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def depth(self) -> int:
        return self.code_shape[2]

    @property
    def code_divisor(self) -> tuple[int, int]:
        return self.latent_shape[0] // self.code_shape[0], self.latent_shape[1] // self.code_shape[1]

    @property
    def codebook_dim(self) -> int:
        rh, rw = self.code_divisor
        return rh * rw * self.embed_dim

    def check_image(self, channels: int, height: int, width: int) -> None:
        """One-line UsageError unless a C×H×W image fits (the network is fully convolutional)."""
        step = self.downsampling * max(self.code_divisor)
        if channels != self.in_channels or height % step or width % step:
            raise UsageError(f"the RQ-VAE takes {self.in_channels}-channel images with sides a multiple of {step} "
                             f"(trained at {self.resolution}×{self.resolution}); got {channels}×{height}×{width}")

    # serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        lists = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        return {"ddconfig": {k: lists[k] for k in _DD}, "hparams": {k: lists[k] for k in _HP}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RQVAEConfig":
        if not isinstance(data, Mapping) or set(data) != {"ddconfig", "hparams"}:
            raise UsageError("rqvae config must be a mapping with exactly 'ddconfig' and 'hparams'")
        flat: dict[str, Any] = {}
        for section, names in (("ddconfig", _DD), ("hparams", _HP)):
            part = data[section]
            unknown = sorted(set(part) - set(names))
            if unknown:
                raise UsageError(f"rqvae config: unknown {section} keys {unknown} (known: {', '.join(names)})")
            flat.update(part)
        try:
            return cls(**flat)
        except TypeError as exc:  # a required field is missing
            raise UsageError(f"rqvae config: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RQVAEConfig":
        """Read upstream's ``config.yaml`` (``arch.type: rq-vae``), filling omitted keys with upstream's
        defaults and ignoring the hparams upstream swallows (``ema``, ``use_padding_idx``, …)."""
        path = Path(path)
        doc = read_yaml(path, "RQ-VAE config")
        arch = doc.get("arch") if isinstance(doc, dict) else None
        if not isinstance(arch, dict) or arch.get("type") != "rq-vae":
            found = arch.get("type") if isinstance(arch, dict) else None
            raise UsageError(f"{path} is not an RQ-VAE config: arch.type is {found!r}, expected 'rq-vae'")
        hp, dd = arch.get("hparams") or {}, arch.get("ddconfig") or {}
        if not dd.get("resamp_with_conv", True) or dd.get("give_pre_end", False):
            raise UsageError(f"{path}: resamp_with_conv false / give_pre_end true are not supported")
        flat = {**_YAML_HP_DEFAULTS, **_YAML_DD_DEFAULTS, "checkpointing": bool(arch.get("checkpointing", False))}
        flat.update({k: v for k, v in hp.items() if k in _HP})
        flat.update({k: v for k, v in dd.items() if k in _DD})
        missing = [k for k in ("latent_shape", "code_shape", "shared_codebook", "z_channels", "resolution",
                               "in_channels", "out_ch", "ch", "num_res_blocks", "attn_resolutions") if k not in flat]
        if missing:
            raise UsageError(f"{path}: arch.hparams/ddconfig lack {', '.join(missing)}")
        return cls(**flat)


RQVAE_PRESETS: dict[str, RQVAEConfig] = {
    # the reference-vector configuration of tests/fixtures/vae/rqvae-tiny.safetensors
    "tiny": RQVAEConfig(z_channels=16, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2),
                        num_res_blocks=1, attn_resolutions=(8,), embed_dim=16, n_embed=64,
                        latent_shape=(8, 8, 16), code_shape=(8, 8, 3)),
    # grayscale 28×28 (Fashion-MNIST; the 16×16 digits fit too: any even side). One downsampling keeps a
    # 14×14 latent (8×8 on digits) with 4 residual codes per position, so reconstructions stay close to the
    # input, which an identity-initialised augmentor needs. Width 32 throughout and no attention: a step of 64
    # images takes ~1 s on 2 cores (ch_mult (1, 2) took twice that), 235k parameters.
    "small": RQVAEConfig(z_channels=32, resolution=28, in_channels=1, out_ch=1, ch=32, ch_mult=(1, 1),
                         num_res_blocks=1, attn_resolutions=(), embed_dim=32, n_embed=256,
                         latent_shape=(14, 14, 32), code_shape=(14, 14, 4)),
    # configs/imagenet256/stage1/in256-rqvae-8x8x4.yaml (the official ImageNet 256 checkpoints)
    "in256": RQVAEConfig(z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 1, 2, 2, 4, 4),
                         num_res_blocks=2, attn_resolutions=(8,), embed_dim=256, n_embed=16384,
                         latent_shape=(8, 8, 256), code_shape=(8, 8, 4), checkpointing=True),
}
