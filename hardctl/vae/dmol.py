"""The discretized mixture of logistics (DMoL) that VDVAE's output head parameterises.

Layout of the head's channels (channels last, as upstream's ``DmolNet`` emits them): ``K`` mixture logits,
then for each image channel a block of ``K`` means and ``K`` log-scales, and for RGB also ``K`` coupling
coefficients (pre-tanh). So an RGB head has ``K·10`` channels (upstream's ``num_mixtures * 10``) and a
grayscale head ``K·3`` (no coupling: there is no earlier channel to condition on).

RGB coupling is autoregressive over the channels of one pixel: green's mean gets ``c0·red`` and blue's
gets ``c1·red + c2·green``; in the likelihood "red"/"green" are the *target* values, in the image we emit
they are the already-decided output values. Everything here runs in float32 with autocast disabled: the
log-CDF differences of neighbouring 8-bit bins cancel catastrophically in half precision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

LOG_SCALE_MIN = -7.0  # upstream's floor on the logistic log-scales
HALF_BIN = 1.0 / 255.0  # half the width of an 8-bit bin on the [-1, 1] scale
EDGE = 0.999  # targets beyond ±EDGE are the open-ended first and last bins


def dmol_channels(num_mixtures: int, image_channels: int) -> int:
    """How many channels the output conv needs: ``K·10`` for RGB, ``K·3`` for one channel."""
    per_channel = 3 if image_channels == 3 else 2  # means, log-scales (+ coupling coefficients for RGB)
    return num_mixtures * (1 + image_channels * per_channel)


class DmolParams(NamedTuple):
    """The split head: ``logits`` (B,H,W,K); ``means`` and ``log_scales`` (B,H,W,C,K), log-scales already
    floored; ``coeffs`` (B,H,W,3,K) after tanh for RGB, ``None`` for one channel."""

    logits: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor
    coeffs: torch.Tensor | None


def split_dmol(params: torch.Tensor, image_channels: int) -> DmolParams:
    """Split channels-last head output ``params`` (B,H,W,·) into its mixture parts (float32)."""
    params = params.float()
    per_channel = 3 if image_channels == 3 else 2
    total = params.shape[-1]
    k, rem = divmod(total, 1 + image_channels * per_channel)
    if rem or k < 1:
        raise ValueError(f"a {image_channels}-channel DMoL head cannot have {total} channels")
    b, h, w = params.shape[:3]
    logits = params[..., :k]
    rest = params[..., k:].reshape(b, h, w, image_channels, per_channel * k)
    means = rest[..., :k]
    log_scales = rest[..., k:2 * k].clamp(min=LOG_SCALE_MIN)
    coeffs = torch.tanh(rest[..., 2 * k:3 * k]) if image_channels == 3 else None
    return DmolParams(logits, means, log_scales, coeffs)


def dmol_nll(params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per dimension in nats, one value per image (B,).

    ``target`` is channels last (B,H,W,C) on the [-1, 1] scale of 8-bit pixels, ``(x − 127.5)/127.5``.
    Each sub-pixel gets the logistic mass of its bin (±1/255), the edge bins the open tail; where the bin
    mass underflows below 1e-5 the density at the bin centre times the bin width stands in, as upstream does.
    """
    with torch.autocast(device_type=params.device.type, enabled=False):
        target = target.float()
        image_channels = target.shape[-1]
        p = split_dmol(params, image_channels)
        x = target.unsqueeze(-1)  # B,H,W,C,1 broadcasts against the K components
        means = p.means
        if p.coeffs is not None:
            red, green = x[..., 0, :], x[..., 1, :]
            means = torch.stack([means[..., 0, :],
                                 means[..., 1, :] + p.coeffs[..., 0, :] * red,
                                 means[..., 2, :] + p.coeffs[..., 1, :] * red + p.coeffs[..., 2, :] * green], dim=-2)
        centred = x - means
        inv_scale = torch.exp(-p.log_scales)
        plus_in = inv_scale * (centred + HALF_BIN)
        min_in = inv_scale * (centred - HALF_BIN)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log σ(plus_in): mass of the lowest bin
        log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 − σ(min_in)): mass of the highest bin
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_scale * centred
        log_pdf_mid = mid_in - p.log_scales - 2.0 * F.softplus(mid_in)
        inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5))
        log_probs = torch.where(x < -EDGE, log_cdf_plus, torch.where(x > EDGE, log_one_minus_cdf_min, inner))
        log_mix = log_probs.sum(dim=-2) + torch.log_softmax(p.logits, dim=-1)  # B,H,W,K
        per_pixel = torch.logsumexp(log_mix, dim=-1)
        dims = target.shape[1] * target.shape[2] * target.shape[3]
        return -per_pixel.sum(dim=(1, 2)) / dims


def dmol_mode_image(params: torch.Tensor, image_channels: int) -> torch.Tensor:
    """The image (B,H,W,C) in [-1, 1] made of each pixel's most likely component's mean.

    The component is chosen by a hard argmax of the logits (no Gumbel noise), the same one for every
    channel of a pixel; the output is the selected mean, with the RGB coupling applied to the clamped,
    already-emitted channels. Gradients flow through the means and coupling coefficients (the selection is
    piecewise constant), which is what an augmentor trained through this output needs.
    """
    with torch.autocast(device_type=params.device.type, enabled=False):
        p = split_dmol(params, image_channels)
        pick = F.one_hot(p.logits.argmax(dim=-1), p.logits.shape[-1]).to(p.means.dtype).unsqueeze(-2)  # B,H,W,1,K
        mu = (p.means * pick).sum(-1)  # B,H,W,C
        if p.coeffs is None:
            return mu.clamp(-1.0, 1.0)
        c = (p.coeffs * pick).sum(-1)
        red = mu[..., 0].clamp(-1.0, 1.0)
        green = (mu[..., 1] + c[..., 0] * red).clamp(-1.0, 1.0)
        blue = (mu[..., 2] + c[..., 1] * red + c[..., 2] * green).clamp(-1.0, 1.0)
        return torch.stack([red, green, blue], dim=-1)
