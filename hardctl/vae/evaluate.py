"""``hardctl vae eval``: how well a VAE reconstructs a data set's test split, and what a teacher makes of it.

Metrics (images in [0, 1]):

* ``mse``: mean squared error per pixel between reconstruction and original;
* ``psnr_db``: 10·log10(1 / MSE) per image, averaged over the images;
* ``bits_per_dim`` (VDVAE): the negative ELBO in nats per dimension ÷ ln 2 (one posterior draw per image,
  8-bit likelihood as upstream);
* with a teacher: its top-1 accuracy on the originals and on the reconstructions, and how often its
  prediction on a reconstruction equals that on the original. An identity-initialised augmentor starts at
  the reconstruction, so the gap between the two accuracies is what HARD-VAE starts from.

The reconstructions are what an augmentor starts from: VDVAE's decoder with one posterior draw (ε ~ N(0, I),
``eps_scale`` 1, seeded), the most likely mixture component's mean as the image; ``eps_scale=0`` gives the
posterior mean. RQ-VAE's is deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from hardctl.errors import UsageError
from hardctl.vae.files import load_vae

__all__ = ["evaluate_vae"]


def _vae_path(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    return path / "vae.safetensors" if path.is_dir() else path


def _teacher(spec: str, bundle, sample: torch.Tensor):
    from hardctl.models import InputNormalize, load_for_data

    model, info = load_for_data("teacher", spec, data=bundle.spec, num_classes=bundle.num_classes,
                                in_chans=bundle.in_chans, img_size=bundle.img_size, sample=sample,
                                require_trained=True)
    norm = InputNormalize(info.mean, info.std).to(sample.device)
    model.eval()
    return lambda x: model(norm(x)).argmax(dim=1), info


@torch.no_grad()
def evaluate_vae(vae: str | Path, data: str, *, teacher: str | None = None, limit: int | None = None,
                 batch_size: int = 64, eps_scale: float = 1.0, seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Score the VAE file (or training folder) ``vae`` on the test split of ``data``; see the module docstring."""
    from hardctl.data import load_data
    from hardctl.device import select_device

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    if eps_scale < 0 or not math.isfinite(eps_scale):
        raise UsageError(f"--eps-scale must be a finite number >= 0, not {eps_scale}")
    dev = select_device(device)
    model, meta = load_vae(_vae_path(vae), device=dev)
    bundle = load_data(data)
    side, channels = meta["image_size"], meta["channels"]
    height, width = bundle.img_size
    if (bundle.in_chans, height, width) != (channels, side, side):
        raise UsageError(f"the VAE takes {channels}×{side}×{side} images; {data!r} has "
                         f"{bundle.in_chans}×{height}×{width}", hint="evaluate it on the data it was trained for")
    test = bundle.test if limit is None else Subset(bundle.test, range(min(limit, len(bundle.test))))
    loader = DataLoader(test, batch_size=batch_size, shuffle=False)
    arch = meta["arch"]
    gen = torch.Generator(device=dev).manual_seed(seed)
    predict = None
    if teacher is not None:
        predict, _ = _teacher(teacher, bundle, next(iter(loader))[0][:2].to(dev))
    n, sq_sum, psnr_sum, nats_sum = 0, 0.0, 0.0, 0.0
    correct_orig = correct_recon = agree = 0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        if arch == "vdvae":
            recon = model.reconstruct(x, eps_scale=eps_scale, generator=gen)
            nats_sum += float(model.elbo(x, generator=gen)["elbo"]) * len(x)
        else:
            recon = model.reconstruct(x)
        per_image = (recon - x).pow(2).flatten(1).mean(dim=1)
        sq_sum += float(per_image.sum())
        psnr_sum += float((10 * torch.log10(1.0 / per_image.clamp_min(1e-10))).sum())
        if predict is not None:
            p_orig, p_recon = predict(x), predict(recon)
            correct_orig += int((p_orig == y).sum())
            correct_recon += int((p_recon == y).sum())
            agree += int((p_orig == p_recon).sum())
        n += len(x)
    result: dict[str, Any] = {"vae": str(_vae_path(vae)), "arch": arch, "data": data, "images": n,
                              "source": meta.get("source", ""), "mse": sq_sum / n, "psnr_db": psnr_sum / n}
    if arch == "vdvae":
        result["bits_per_dim"] = nats_sum / n / math.log(2.0)
        result["eps_scale"] = eps_scale
    if predict is not None:
        result.update({"teacher": str(teacher), "teacher_acc_original": 100.0 * correct_orig / n,
                       "teacher_acc_reconstruction": 100.0 * correct_recon / n,
                       "teacher_agreement": 100.0 * agree / n})
    return result
