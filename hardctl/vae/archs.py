"""The two VAE architectures by name, and their configurations by name.

``ARCHS`` maps ``vdvae`` / ``rqvae`` to what the file format, the converter and the trainer need of each:
its config class, model class, presets and official loader. :func:`build_vae` turns a preset name, a
config dict (as recorded in a hardctl VAE file) or a config object into a model.

``small`` is a family, not one configuration: the data decide. :func:`resolve_config` picks the size
variant for the data's image side (``small-16``: the 16×16 digits; ``small-28``: Fashion-MNIST, MNIST,
digits28) and sets the channels to the data's (1 or 3); ``tiny`` (tests) and the explicit ``small-16`` /
``small-28`` take the data's channels too. VDVAE's ``small-28`` runs its latents at
28/14/7/1; RQ-VAE's keeps one 2× downsampling, a 14×14 latent (8×8 on 16 px).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from hardctl.errors import UsageError, did_you_mean
from hardctl.vae.rqvae import RQVAE, RQVAE_PRESETS, RQVAEConfig, load_official_rqvae
from hardctl.vae.vdvae import VDVAE, VDVAE_PRESETS, VDVAEConfig, load_official_vdvae

__all__ = ["ARCHS", "Arch", "arch_of", "build_vae", "config_dict", "config_from", "image_geometry",
           "preset_names", "resolve_config"]


def _vdvae_small28() -> VDVAEConfig:
    # the digits' small preset scaled to 28 px: resolutions 28/14/7/1, 17 latent layers, the same widths
    return dataclasses.replace(VDVAE_PRESETS["small"], image_size=28,
                               enc_blocks="28x3,28d2,14x3,14d2,7x3,7d7,1x2",
                               dec_blocks="1x1,7m1,7x3,14m7,14x4,28m14,28x5")


def _rqvae_small(side: int) -> RQVAEConfig:
    base = RQVAE_PRESETS["small"]  # ch_mult (1, 1): one 2× downsampling
    latent = side // base.downsampling
    return dataclasses.replace(base, resolution=side, latent_shape=(latent, latent, base.embed_dim),
                               code_shape=(latent, latent, base.code_shape[2]))


@dataclass(frozen=True)
class Arch:
    """One architecture: how to build, describe and load it."""

    name: str
    config_cls: type
    model_cls: type
    presets: Mapping[str, Any]
    official_loader: Callable[..., nn.Module]
    normalisation: str  # what the model does to [0, 1] images inside (recorded in every VAE file)
    official_default: str  # the preset an official checkpoint is read as by default

    def size(self, cfg: Any) -> tuple[int, int]:
        """(image side, channels) a configuration was built for."""
        if isinstance(cfg, VDVAEConfig):
            return cfg.image_size, cfg.image_channels
        return cfg.resolution, cfg.in_channels


ARCHS: dict[str, Arch] = {
    "vdvae": Arch("vdvae", VDVAEConfig, VDVAE,
                  {**VDVAE_PRESETS, "small-16": VDVAE_PRESETS["small"], "small-28": _vdvae_small28()},
                  load_official_vdvae,
                  "encoder input (255·x + shift)·scale (shift/scale in the config); likelihood over 8-bit pixels "
                  "as (255·x − 127.5)/127.5; reconstruction is the most likely DMoL component's mean, in [0, 1]",
                  "cifar10"),
    "rqvae": Arch("rqvae", RQVAEConfig, RQVAE,
                  {**RQVAE_PRESETS, "small-16": _rqvae_small(16), "small-28": _rqvae_small(28)},
                  load_official_rqvae,
                  "encoder input 2·x − 1 ([-1, 1]); decoder output clamped to [-1, 1] and mapped back to [0, 1]",
                  "in256"),
}
SMALL_SIDES = (16, 28)  # the size variants of ``small``
ADAPTS_CHANNELS = ("tiny", "small-16", "small-28")  # like ``small``, these take the data's 1 or 3 channels


def arch_of(name: str) -> Arch:
    if name not in ARCHS:
        raise UsageError(f"no VAE architecture {name!r}{did_you_mean(name, ARCHS)}",
                         hint="choose " + " or ".join(ARCHS))
    return ARCHS[name]


def preset_names(arch: str) -> list[str]:
    return list(arch_of(arch).presets)


def config_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict()


def config_from(arch: str, spec: Any) -> Any:
    """A config object from a preset name, a config dict (``to_dict()`` form) or a config object."""
    a = arch_of(arch)
    if isinstance(spec, a.config_cls):
        return spec
    if isinstance(spec, str):
        if spec not in a.presets:
            raise UsageError(f"no {arch} configuration {spec!r}{did_you_mean(spec, a.presets)}",
                             hint="choose one of " + ", ".join(a.presets))
        return a.presets[spec]
    if isinstance(spec, Mapping):
        return a.config_cls.from_dict(spec)
    raise UsageError(f"a {arch} configuration is a preset name or a mapping, not {type(spec).__name__}")


def _with_channels(arch: str, cfg: Any, channels: int) -> Any:
    if arch == "vdvae":
        return dataclasses.replace(cfg, image_channels=channels)
    return dataclasses.replace(cfg, in_channels=channels, out_ch=channels)


def resolve_config(arch: str, name: str, side: int, channels: int) -> Any:
    """The configuration ``name`` for C×side×side data; ``small`` picks its size variant and the data's
    channels. Any other preset must fit as it is, else one line says which configuration would."""
    a = arch_of(arch)
    if name == "small":
        if side not in SMALL_SIDES or channels not in (1, 3):
            raise UsageError(f"--config small takes 1- or 3-channel images of {' or '.join(map(str, SMALL_SIDES))} "
                             f"px; the data are {channels}×{side}×{side}")
        return _with_channels(arch, a.presets[f"small-{side}"], channels)
    cfg = config_from(arch, name)
    if name in ADAPTS_CHANNELS and channels in (1, 3):
        cfg = _with_channels(arch, cfg, channels)
    want_side, want_ch = a.size(cfg)
    if (side, channels) != (want_side, want_ch):
        fits = [n for n, c in a.presets.items() if n != "small" and a.size(c) == (side, channels)]
        if side in SMALL_SIDES and channels in (1, 3):
            fits.insert(0, "small")
        what = f"--config {' or '.join(fits)} for {channels}×{side}×{side} images" if fits else \
            f"no preset takes {channels}×{side}×{side} images"
        raise UsageError(f"the {arch} configuration {name!r} takes {want_ch}×{want_side}×{want_side} images; "
                         f"the data are {channels}×{side}×{side}", hint=what)
    return cfg


def image_geometry(arch: str, cfg: Any) -> tuple[int, int]:
    return arch_of(arch).size(cfg)


def build_vae(arch: str, config: Any) -> nn.Module:
    """A freshly initialised model of ``arch`` from a preset name, config dict or config object."""
    a = arch_of(arch)
    return a.model_cls(config_from(arch, config))
