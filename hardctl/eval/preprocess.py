"""Image files in, uint8 tensors out: per-model evaluation preprocessing and the lazy file data set.

Image-file sets (ImageNet and its variants) are decoded by DataLoader workers and resized *per
model*: each model is fed at its own input size with the crop and interpolation of its timm
pretrained config (``timm.data.resolve_data_config``; built with ``timm.data.create_transform``),
which is how timm's results tables were produced. Tensors leave the workers as uint8 (4x less to pin
and copy than float); the evaluation loop turns them into ``[0, 1]`` floats on the device and applies
the model's own mean/std (:class:`hardctl.models.InputNormalize`).

Policies, recorded with every result:

* ``crop``: ``Resize(floor(size / crop_pct))`` of the shorter side, then ``CenterCrop(size)``
  (ImageNet val, ReaL, V2, A, R, Sketch);
* ``resize``: the images are already 224x224 centre crops (ImageNet-C, Stylized-ImageNet): fed as
  they are (hendrycks' ``test.py`` applies no resize), resized straight to the model's input size
  only when it differs;
* ``tensor``: arrays stored at the data set's own size (MNIST, CIFAR-10 and their corruptions) are
  fed as stored.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from hardctl.errors import DataError

__all__ = ["FileImages", "Preprocessing", "preprocessing_for"]

POLICIES = ("crop", "resize", "tensor")


@dataclass(frozen=True)
class Preprocessing:
    """How one model is fed one kind of set."""

    policy: str
    size: tuple[int, int] = (0, 0)
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    mode: str = "RGB"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def transform(self) -> Callable | None:
        """The PIL -> uint8 C×H×W transform (``None`` for stored tensors)."""
        if self.policy == "tensor":
            return None
        from timm.data import create_transform
        from timm.data.transforms import str_to_interp_mode
        from torchvision import transforms

        if self.policy == "crop":
            return create_transform(input_size=(len(self.mean) or 3, *self.size), is_training=False,
                                    interpolation=self.interpolation, crop_pct=self.crop_pct,
                                    crop_mode=self.crop_mode, normalize=False)
        # PIL's resize returns an exact copy when the size already matches, so 224x224 images stay untouched
        return transforms.Compose([transforms.Resize(self.size, interpolation=str_to_interp_mode(self.interpolation)),
                                   transforms.PILToTensor()])

    def describe(self) -> str:
        norm = f"Normalize(mean={_fmt(self.mean)}, std={_fmt(self.std)})"
        h, w = self.size
        if self.policy == "tensor":
            return f"as stored (uint8 /255, or floats in [0, 1]), {norm}"
        if self.policy == "resize":
            return f"{self.mode}, 224x224 as stored (Resize to {h}x{w} {self.interpolation} if the size differs), /255, {norm}"
        return (f"{self.mode}, Resize(shorter side {int(min(h, w) / self.crop_pct)}, {self.interpolation}), "
                f"CenterCrop({h}x{w}) [crop_pct {self.crop_pct:g}], /255, {norm}")

    @property
    def key(self) -> tuple:
        """Models with equal keys share one decoding pass (same input images, own normalisation)."""
        return (self.policy, self.size, self.crop_pct, self.crop_mode, self.interpolation, self.mode)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def preprocessing_for(model: nn.Module, info, policy: str) -> Preprocessing:
    """The preprocessing of ``model`` (with :class:`hardctl.models.ModelInfo` ``info``) under ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown preprocessing policy {policy!r}")
    base = dict(policy=policy, size=tuple(info.img_size), mode="L" if info.in_chans == 1 else "RGB",
                mean=tuple(info.mean), std=tuple(info.std))
    if policy == "tensor":
        return Preprocessing(**base)
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation") or "bilinear"
    if policy == "resize":
        return Preprocessing(**base, interpolation="bilinear")
    return Preprocessing(**base, crop_pct=float(cfg.get("crop_pct") or 0.875),
                         crop_mode=cfg.get("crop_mode") or "center", interpolation=interpolation)


class FileImages(Dataset):
    """Image files with integer targets, decoded with PIL on access and passed through ``transform``.

    A file that cannot be decoded is an error naming the file: skipping it (as timm's ``ImageDataset``
    does) would silently score another image in its place.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int], *, transform: Callable | None = None,
                 mode: str = "RGB"):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths, self.targets = list(paths), list(targets)
        self.transform, self.mode = transform, mode

    def with_preprocessing(self, pre: Preprocessing) -> FileImages:
        clone = copy.copy(self)
        clone.transform, clone.mode = pre.transform(), pre.mode
        return clone

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.paths[index]
        try:
            with open(path, "rb") as fh:
                image = Image.open(fh).convert(self.mode)  # convert() decodes while the file is open
        except OSError as exc:
            raise DataError(f"cannot decode image {path}: {exc}", hint="remove or replace the file") from None
        if self.transform is None:
            from torchvision.transforms.functional import pil_to_tensor

            return pil_to_tensor(image), self.targets[index]
        return self.transform(image), self.targets[index]

    def __repr__(self) -> str:
        root = os.path.commonpath(self.paths) if self.paths else ""
        return f"FileImages({len(self)} images under {root})"
