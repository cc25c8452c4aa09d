"""Pretrained-VAE backbones for the HARD-VAE augmentors, re-implemented with upstream state-dict keys."""

from hardctl.vae.rqvae import RQVAE, RQVAE_PRESETS, RQVAEConfig, load_official_rqvae
from hardctl.vae.statecheck import check_state_dict
from hardctl.vae.vdvae import VDVAE, VDVAE_PRESETS, VDVAEConfig, load_official_vdvae

__all__ = ["check_state_dict", "VDVAE", "VDVAE_PRESETS", "VDVAEConfig", "load_official_vdvae",
           "RQVAE", "RQVAE_PRESETS", "RQVAEConfig", "load_official_rqvae"]
