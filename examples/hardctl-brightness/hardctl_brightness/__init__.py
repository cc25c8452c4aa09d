"""A complete third-party hardctl augmentor: learned brightness and contrast (``--augmentor brightness``).

Per image, a contrast gain ``g`` and a brightness offset ``b`` are drawn from a learned Gaussian with the
reparameterisation trick, and the image becomes

    x̃ = clamp(pivot + g · (x − pivot) + b, 0, 1)

``g ~ N(μ_g, σ_g²)`` and ``b ~ N(μ_b, σ_b²)``; the means start at the identity (``μ_g = 1``, ``μ_b = 0``) and
the standard deviations are stored as logs so that Adam's steps keep them positive. HARD's augmentor
learns how far it can push brightness and contrast before the student disagrees with the teacher, while
the teacher–teacher term keeps it from washing the image out completely.

The whole plugin is this module plus the entry point in ``pyproject.toml``; the README next to it walks
through the API.
"""

from __future__ import annotations

import math

import hardctl
import torch
from hardctl.augment import Augmentor, HardDefaults, Option
from torch import nn

__all__ = ["BrightnessAugmentor", "register_augmentors"]
__version__ = "0.1.0"


class BrightnessAugmentor(Augmentor):
    """``x̃ = clamp(pivot + g·(x − pivot) + b, 0, 1)`` with ``g``, ``b`` drawn per image (and channel)."""

    # Constructor options: validated by hardctl (type, range, choices) before __init__ is called, listed
    # with their help, settable as --aug-opt KEY=VALUE (brightness.KEY=VALUE inside a composition).
    options = (
        Option("gain_sigma_init", float, 0.1, "initial std of the contrast gain (its mean starts at 1)",
               min=0.0, max=1.0, min_inclusive=False),
        Option("bias_sigma_init", float, 0.05, "initial std of the brightness offset (its mean starts at 0)",
               min=0.0, max=0.5, min_inclusive=False),
        Option("pivot", float, 0.5, "grey level the contrast gain scales around", min=0.0, max=1.0),
        Option("per_channel", bool, False, "one gain and offset per colour channel (colour casts) "
               "instead of one per image"),
    )
    # It has an invariance objective (the teacher must still recognise x̃), so HARD trains it in phases
    # that alternate with the student's, as the paper does for HARD-Affine.
    teacher_term = True
    # The engine's defaults for --l-min/--l-max/--switch-patience/--lambda-s/--lambda-t/--aug-lr/
    # --aug-batch-size when this augmentor (or a composition starting with it) is used.
    hard_defaults = HardDefaults(l_min=0.05, l_max=0.40, patience=5, lambda_s=1.0, lambda_t=1.0, lr=0.02,
                                 batch_size=128)

    def __init__(self, *, in_chans: int, img_size, gain_sigma_init: float = 0.1, bias_sigma_init: float = 0.05,
                 pivot: float = 0.5, per_channel: bool = False):
        super().__init__(in_chans=in_chans, img_size=img_size)
        k = in_chans if per_channel else 1
        # Identity initialisation: gain 1, offset 0. Only nn.Parameters with requires_grad are trained
        # by the augmentor optimizer and kept in pool snapshots.
        self.gain_mean = nn.Parameter(torch.ones(k))
        self.gain_log_std = nn.Parameter(torch.full((k,), math.log(gain_sigma_init)))
        self.bias_mean = nn.Parameter(torch.zeros(k))
        self.bias_log_std = nn.Parameter(torch.full((k,), math.log(bias_sigma_init)))
        self.pivot = float(pivot)

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gain and one offset per image (and channel): ``μ + σ·ε``, differentiable in ``μ`` and ``log σ``."""
        eps = torch.randn(x.shape[0], 2, self.gain_mean.numel(), device=x.device, dtype=torch.float32)
        gain = self.gain_mean.float() + self.gain_log_std.float().exp() * eps[:, 0]
        bias = self.bias_mean.float() + self.bias_log_std.float().exp() * eps[:, 1]
        return {"gain": gain[:, :, None, None], "bias": bias[:, :, None, None]}  # B×k×1×1, broadcast over C×H×W

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic given ``params`` (``forward_with`` and ``visualize`` replay draws under old snapshots)."""
        out = self.pivot + params["gain"] * (x.float() - self.pivot) + params["bias"]
        return out.clamp(0.0, 1.0)  # the contract: pixels stay in [0, 1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pivot={self.pivot}, per_channel={self.gain_mean.numel() > 1}"

    # snapshot()/restore()/forward_with() are inherited: this augmentor's whole state is its four
    # trainable parameters, which is exactly what the base class saves into HARD's pool.


@hardctl.hookimpl
def register_augmentors(register):
    register("brightness", BrightnessAugmentor,
             help="learned brightness/contrast: per-image gain and offset from a learned Gaussian")
