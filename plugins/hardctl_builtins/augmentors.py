"""Built-in augmentors, registered through the public hook exactly as a third-party plugin would.

* ``affine`` — HARD-Affine (paper section 4.1): a learned Gaussian over the 2×3 matrix of an affine warp
  of the sampling grid (a spatial transformer), initialised to the identity, one matrix drawn per
  image with the reparameterisation trick.
* ``noise`` — additive Gaussian noise ``x̃ = x + μ + σ·ε`` with learned ``μ`` and ``σ`` (the paper's
  toy augmentor, section 3; on images the result is clamped to ``[0, 1]``).
* ``mix`` — HARD-Mix (paper section 4.1, :mod:`.hardmix`): a learned patch-wise convex combination of each
  image with the next images of its batch, trained jointly with the student.
* ``vdvae`` / ``rqvae`` — HARD-VAE (paper section 4.1, :mod:`.vaeaug`): a pretrained VAE's reconstruction,
  with its posterior heads (VDVAE) or all but its codebook plus a latent noise vector (RQ-VAE) fine-tuned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hardctl import hookimpl
from hardctl.augment import Augmentor, HardDefaults, Option
from hardctl_builtins.hardmix import MixAugmentor
from hardctl_builtins.vaeaug import RQVAEAugmentor, VDVAEAugmentor

IDENTITY_AFFINE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_BASE_GRIDS: dict[tuple, torch.Tensor] = {}  # (H, W, device, dtype, align_corners) -> 1×HW×3 identity grid
_BASE_GRIDS_MAX = 16  # a run sees one or two image sizes; visualize a few more


def _linspace(steps: int, align_corners: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ATen's ``linspace_from_neg_one`` (AffineGridGenerator.cpp), op for op, so the cached grid is its grid."""
    if steps <= 1:
        return torch.zeros(1, device=device, dtype=dtype)
    values = torch.linspace(-1, 1, steps, device=device, dtype=dtype)
    return values if align_corners else values * (steps - 1) / steps


def base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype, align_corners: bool) -> torch.Tensor:
    """The identity sampling grid ``[x, y, 1]`` of an ``height×width`` output as ``1×(H·W)×3``, built once per
    shape, device and dtype. ``F.affine_grid`` rebuilds it (about six small kernels) on every call; on a GPU
    the affine student step is launch-bound, so :func:`affine_grid` keeps only its one batched matmul."""
    key = (height, width, torch.device(device), dtype, align_corners)
    grid = _BASE_GRIDS.get(key)
    if grid is None:
        grid = torch.empty(height, width, 3, device=device, dtype=dtype)
        grid[..., 0].copy_(_linspace(width, align_corners, device, dtype))
        grid[..., 1].copy_(_linspace(height, align_corners, device, dtype).unsqueeze(-1))
        grid[..., 2].fill_(1)
        if len(_BASE_GRIDS) >= _BASE_GRIDS_MAX:
            _BASE_GRIDS.clear()
        grid = _BASE_GRIDS[key] = grid.view(1, height * width, 3)
    return grid


def affine_grid(theta: torch.Tensor, size: list[int], align_corners: bool) -> torch.Tensor:
    """``F.affine_grid(theta, size, align_corners)`` for 2-D (N×2×3 ``theta``) with a cached base grid: the
    same batched matmul ATen does (``base.bmm(θᵀ)``), so the grid is the same up to float rounding."""
    n, _, height, width = size
    base = base_grid(height, width, theta.device, theta.dtype, align_corners)
    return base.expand(n, height * width, 3).bmm(theta.transpose(1, 2)).view(n, height, width, 2)


class AffineAugmentor(Augmentor):
    """HARD-Affine: ``θ ~ N(μ, diag(σ²))`` over the six entries of the 2×3 warp, per image.

    ``θ`` maps output pixel coordinates to input sampling coordinates in ``[-1, 1]`` (``affine_grid``), so
    a translation entry of 1.0 moves the image by half its width. ``μ`` starts at the identity and
    ``σ`` at ``sigma_init`` (0.01: near the identity; at 0.1 the "identity" entry already shifts by ±0.8 px
    and scales by ±10 % on 16 px digits, and an MLP student never gets below ``l_min`` on it); ``σ`` is
    stored as its log so that it stays positive under Adam's steps.
    """

    options = (
        Option("sigma_init", float, 0.01, "initial std of every entry of the 2×3 matrix", min=0.0, min_inclusive=False),
        Option("padding_mode", str, "zeros", "pixels warped in from outside the image",
               choices=("zeros", "border", "reflection")),
        Option("align_corners", bool, False, "grid_sample's align_corners (False: pixel areas, torch's default)"),
        Option("min_sigma", float, 0.0, "floor added to every std, so the learned distribution cannot collapse "
               "to a single warp (0: the paper's unconstrained Gaussian)", min=0.0),
    )
    teacher_term = True
    hard_defaults = HardDefaults(l_min=0.05, l_max=0.40, patience=5, lambda_s=1.0, lambda_t=1.0, lr=0.05, batch_size=128)

    def __init__(self, *, in_chans: int, img_size, sigma_init: float = 0.01, padding_mode: str = "zeros",
                 align_corners: bool = False, min_sigma: float = 0.0):
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.mean = nn.Parameter(torch.tensor(IDENTITY_AFFINE))
        self.log_std = nn.Parameter(torch.full((6,), math.log(sigma_init)))
        self.padding_mode, self.align_corners, self.min_sigma = padding_mode, align_corners, float(min_sigma)

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        eps = torch.randn(x.shape[0], 6, device=x.device, dtype=torch.float32)
        theta = self.mean.float() + (self.min_sigma + self.log_std.float().exp()) * eps
        return {"theta": theta.view(-1, 2, 3)}

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        # The warp runs in float32 even under autocast: bf16 grid coordinates are off by a pixel at 224 px.
        with torch.autocast(device_type=x.device.type, enabled=False):
            theta = params["theta"].float()
            grid = affine_grid(theta, list(x.shape), align_corners=self.align_corners)
            out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=self.padding_mode,
                                align_corners=self.align_corners)
        return out.clamp(0.0, 1.0)  # bilinear weights can overshoot [0, 1] by rounding


class NoiseAugmentor(Augmentor):
    """``x̃ = x + μ + σ·ε``, ``ε ~ N(0, 1)`` per element, with learned ``μ`` and ``σ = exp(log σ)``.

    ``shape`` picks how many (μ, σ) pairs there are: one for the whole input (``scalar``, the toy
    example), one per channel, or one per pixel.
    """

    options = (
        Option("sigma_init", float, 0.1, "initial noise std", min=0.0, min_inclusive=False),
        Option("mu_init", float, 0.0, "initial noise mean"),
        Option("shape", str, "scalar", "one (μ, σ) for everything, per channel or per pixel",
               choices=("scalar", "channel", "pixel")),
        Option("clamp", bool, True, "clamp the output to [0, 1] (images); off for unbounded inputs"),
    )
    teacher_term = True
    hard_defaults = HardDefaults()

    def __init__(self, *, in_chans: int, img_size, sigma_init: float = 0.1, mu_init: float = 0.0,
                 shape: str = "scalar", clamp: bool = True):
        super().__init__(in_chans=in_chans, img_size=img_size)
        dims = {"scalar": (1,), "channel": (in_chans, 1, 1), "pixel": (in_chans, *self.img_size)}[shape]
        self.mu = nn.Parameter(torch.full(dims, float(mu_init)))
        self.log_sigma = nn.Parameter(torch.full(dims, math.log(sigma_init)))
        self.clamp = clamp

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"eps": torch.randn_like(x, dtype=torch.float32)}

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        out = x.float() + self.mu + self.log_sigma.exp() * params["eps"]
        return out.clamp(0.0, 1.0) if self.clamp else out


@hookimpl
def register_augmentors(register):
    register("affine", AffineAugmentor, help="HARD-Affine: learned Gaussian over affine warps (shift, rotate, scale, shear)")
    register("noise", NoiseAugmentor, help="learned additive Gaussian noise x + μ + σ·ε (the paper's toy augmentor)")
    register("mix", MixAugmentor, help="HARD-Mix: learned patch-wise mix of each image with the next images of its "
             "batch (joint training)")
    register("vdvae", VDVAEAugmentor, help="HARD-VAE: a pretrained VDVAE's reconstruction, its posterior heads from "
             "layer `start` on fine-tuned (--aug-opt weights=VAE_FILE)")
    register("rqvae", RQVAEAugmentor, help="HARD-VAE (ImageNet): a pretrained RQ-VAE fine-tuned but for its codebook, "
             "with learned noise on the latent (--aug-opt weights=VAE_FILE)")
