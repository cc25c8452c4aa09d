"""HARD-Mix (paper section 4.1): a learned, image-dependent, patch-wise mix of a group of images.

For output image ``i`` the group is the batch rolled by ``g = 0 … G−1``: sources ``(i + g) mod B``, so
source 0 is the image itself and any batch size works (a batch smaller than ``group_size`` uses a group
of ``B``; a batch of one is returned unchanged). Every ``P×P`` patch ``p`` of every source is projected,
``proj(p) = W·flatten(p)`` (``W``: ``D × C·P·P``, no bias: a bias would add the same amount to every
source's score and cancel in the softmax), and compared with one query per output image drawn with the
reparameterisation trick, ``q_i = μ + σ ⊙ ε`` (``ε ~ N(0, I_D)``, drawn in :meth:`sample_params` so that
``visualize`` can replay it). The scores

    ``s[i, g, n] = ⟨proj(p[(i+g) mod B, n]), q_i⟩ / (τ·√D) + b_g``

are normalised over the group per patch position, ``w = softmax_g(s)``, and the output patch is the
convex combination ``x̃[i, n] = Σ_g w[i, g, n] · p[(i+g) mod B, n]``. ``b`` is a learned per-source bias
that starts at ``(identity_bias, 0, …, 0)`` and ``W`` starts tiny, so the augmentor starts close to the
identity (``identity_bias`` 4, ``G`` 2: the image itself keeps ≈ 98 %) and learns to move away from it.

There is no teacher–teacher term (a teacher should not be invariant to a mix), so HARD trains it jointly
with the student. :meth:`MixAugmentor.sources` reports, per output image, its sources' batch indices and
mean mixing weights (``hardctl visualize`` shows them next to the mixes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hardctl.augment import Augmentor, HardDefaults, Option
from hardctl.errors import UsageError

__all__ = ["MixAugmentor", "suggest_patch_size"]

PROJ_INIT_STD = 0.01  # projection weights start tiny: scores start (almost) flat, the bias decides


def suggest_patch_size(wanted: int, height: int, width: int) -> int:
    """The divisor of both ``height`` and ``width`` closest to ``wanted`` (the smaller one on a tie)."""
    common = math.gcd(height, width)
    divisors = [d for d in range(1, common + 1) if common % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), d))


class MixAugmentor(Augmentor):
    """HARD-Mix: each patch of image ``i`` becomes a learned convex combination of the same patch of the
    ``group_size`` images ``i, i+1, …`` of the batch (weights from a sampled query, see the module doc)."""

    options = (
        # 2 sources: Mixup/CutMix's pairs, the simplest group; more sources make the mixes harder to read.
        Option("group_size", int, 2, "images mixed into each output: the image itself and the next "
               "group_size-1 images of the batch (a smaller batch mixes all of it)", min=2),
        # 4 px on 16 px digits gives a 4×4 grid of patches (CutMix-like pieces); use 16 on 224 px images.
        Option("patch_size", int, 4, "side of the square patches that are mixed (must divide height and width)",
               min=1),
        # 16: a few directions for the query are enough to tell patches apart; cost is C·P·P·D per patch.
        Option("proj_dim", int, 16, "dimension D of the patch projection and of the sampled query", min=1),
        # 1: scores are already scaled by 1/sqrt(D); lower sharpens the mixes towards CutMix, higher to Mixup.
        Option("temperature", float, 1.0, "softmax temperature τ of the scores (scores / (τ·sqrt(D)))",
               min=0.0, min_inclusive=False),
        # 4: with G = 2 the image itself starts with sigmoid(4) ≈ 98 % of every patch (near the identity,
        # like HARD-Affine's start) while the softmax is not yet saturated, so gradients still flow.
        Option("identity_bias", float, 4.0, "initial score bonus of the image itself (0: an even mix at start)"),
        # 1: the query is as random as a standard normal at start; μ starts at 0 (no preferred direction).
        Option("sigma_init", float, 1.0, "initial std σ of the sampled query q = μ + σ·ε",
               min=0.0, min_inclusive=False),
    )
    teacher_term = False  # paper: no teacher–teacher term for HARD-Mix; trained jointly with the student
    # Joint training: l_min / l_max / patience / λ_t / batch_size are unused. lr 1e-2 (Adam): on digits
    # (CNN -> MLP, KD temperature 1, batch 32) the image's own mean weight goes 98 % -> 78 % in 5 epochs
    # (205 steps); 1e-3 does not leave the ≈98 % start in that time and 5e-2 gets to ≈70 % by epoch 3 but
    # then oscillates. At KD temperature 5 mixing mostly softens the teacher, which lowers the KL the
    # augmentor ascends, so it drifts towards the identity instead (the paper's ImageNet runs use 1.0).
    hard_defaults = HardDefaults(lambda_s=1.0, lambda_t=0.0, lr=1e-2)

    def __init__(self, *, in_chans: int, img_size, group_size: int = 2, patch_size: int = 4, proj_dim: int = 16,
                 temperature: float = 1.0, identity_bias: float = 4.0, sigma_init: float = 1.0):
        super().__init__(in_chans=in_chans, img_size=img_size)
        height, width = self.img_size
        if height % patch_size or width % patch_size:
            better = suggest_patch_size(patch_size, height, width)
            raise UsageError(f"mix option patch_size={patch_size} does not divide the image size {height}×{width}",
                             hint=f"choose a divisor of both sides, e.g. --aug-opt patch_size={better}")
        self.group_size, self.patch_size, self.proj_dim = int(group_size), int(patch_size), int(proj_dim)
        self.temperature = float(temperature)
        self.proj = nn.Linear(in_chans * patch_size * patch_size, proj_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=PROJ_INIT_STD)
        self.mu = nn.Parameter(torch.zeros(proj_dim))
        self.log_sigma = nn.Parameter(torch.full((proj_dim,), math.log(sigma_init)))
        bias = torch.zeros(self.group_size)
        bias[0] = float(identity_bias)
        self.bias = nn.Parameter(bias)

    # -- the two halves ------------------------------------------------------------------------------
    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``eps``: the query noise, ``B × D`` (the group is the rolled batch, nothing else is random)."""
        return {"eps": torch.randn(x.shape[0], self.proj_dim, device=x.device, dtype=torch.float32)}

    def group(self, batch: int, device=None) -> torch.Tensor:
        """``B × G'`` batch indices of each output's sources, ``(i + g) mod B`` with ``G' = min(G, B)``."""
        size = min(self.group_size, batch)
        return (torch.arange(batch, device=device)[:, None] + torch.arange(size, device=device)[None, :]) % batch

    def weights(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``B × G' × N`` mixing weights (per output, source and patch) and the ``B × N × C·P·P`` patches."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            batch = x.shape[0]
            patches = F.unfold(x.float(), self.patch_size, stride=self.patch_size).transpose(1, 2)  # B×N×K
            index = self.group(batch, x.device)
            query = self.mu.float() + self.log_sigma.float().exp() * params["eps"].float()  # B×D
            projected = patches @ self.proj.weight.float().t()  # B×N×D, once per image
            scale = self.temperature * math.sqrt(self.proj_dim)
            # score[i, g, n] = <proj(p[(i+g) mod B, n]), q_i> / (τ·√D) + b_g
            scores = torch.einsum("bgnd,bd->bgn", projected[index], query) / scale
            scores = scores + self.bias.float()[: index.shape[1], None]
            return scores.softmax(dim=1), patches

    def apply_transform(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        # Weights and mix in float32 even under autocast: bf16 would blur a 98/2 split to 100/0.
        weights, patches = self.weights(x, params)
        with torch.autocast(device_type=x.device.type, enabled=False):
            mixed = torch.zeros_like(patches)
            for g in range(weights.shape[1]):  # G is small: a loop keeps one rolled copy alive at a time
                mixed = mixed + weights[:, g, :, None] * patches.roll(-g, dims=0)
            out = F.fold(mixed.transpose(1, 2), tuple(x.shape[-2:]), self.patch_size, stride=self.patch_size)
        return out.clamp(0.0, 1.0)  # a convex combination of pixels in [0, 1]; clamp only the rounding

    def sources(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``index``: ``B × G'`` batch indices of each output's sources (column 0: the image itself);
        ``weight``: ``B × G'`` mean mixing weight of each source over the patches (rows sum to 1)."""
        weights, _ = self.weights(x, params)
        return {"index": self.group(x.shape[0], x.device), "weight": weights.mean(dim=2)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, group_size={self.group_size}, patch_size={self.patch_size}, "
                f"proj_dim={self.proj_dim}, temperature={self.temperature}")
