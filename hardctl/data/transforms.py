"""Baseline augmentations of the training images: the paper's comparison rows, not HARD's learned ones.

``--augment NAME`` on ``train`` and ``distill`` wraps the training split in :class:`AugmentedImages`,
which applies a fresh random transform to every image it serves (a learned HARD augmentor, if any,
comes on top of it, batch-wise). The transforms come from ``torchvision.transforms.v2`` wherever it
has them; images stay float ``C×H×W`` in ``[0, 1]`` with their shape and zero (black) fill.

``none``
    No augmentation.
``random-affine``
    The paper's *Random Affine* control (table 1): ``v2.RandomAffine`` with parameters drawn
    uniformly from a bounded range that keeps a centred digit fully visible — rotation ±15°,
    translation up to 10 % of the image side, scale 0.9–1.1, shear ±10° — bilinear, zero fill.
``shift``
    The paper's *MNIST-C Shifts* control: random integer shifts that cover the shifted test set
    (:mod:`hardctl.data.shift`, which moves every image by exactly ``±shift_px`` along x and y): each
    training image moves by ``dx, dy`` drawn uniformly from ``-shift_px … shift_px``, zero fill, with
    :func:`hardctl.data.shift.shift_image`. The test set's four displacements are among them, and so
    are smaller ones and none, so the student still sees centred images (training only on the four
    corner shifts never shows it one, while the paper's control keeps 98.1 % centred accuracy).
    Content never moves by more than ``shift_px``.
``standard``
    The usual natural-image recipe: ``v2.RandomCrop`` with zero padding of 4 px per 32 px of image
    side (2 px on the 16×16 digits, 4 px on 28×28), ``v2.RandomHorizontalFlip`` and
    ``v2.RandomRotation`` of ±10°. Horizontal flips are wrong for digits (a flipped 3 is no digit);
    the row exists because the paper's CIFAR-10 tables use it.

Randomness: with a ``seed``, each dataset object draws per-image seeds from its own generator (mixed
with the DataLoader worker's seed in worker processes), so the same seed and the same order of
requests give the same images, independently of the global RNG, which is left untouched.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms import v2

from hardctl.data.shift import default_shift_px, shift_image
from hardctl.errors import DataError, UsageError, did_you_mean

TRANSFORM_HELP: dict[str, str] = {
    "none": "no baseline augmentation",
    "random-affine": "the paper's Random Affine control: rotation ±15°, translation ≤10 %, scale 0.9-1.1, shear ±10°",
    "shift": "the paper's MNIST-C Shifts control: random shifts of up to ±shift_px along x and y",
    "standard": "random crop with padding, horizontal flip, rotation ±10° (flips are wrong for digits)",
}
TRANSFORM_NAMES: tuple[str, ...] = tuple(TRANSFORM_HELP)

AFFINE_RANGE = {"degrees": 15.0, "translate": (0.1, 0.1), "scale": (0.9, 1.1), "shear": 10.0}
STANDARD_ROTATION = 10.0


def standard_padding(img_size: tuple[int, int]) -> int:
    """The crop padding of ``standard``: CIFAR's 4 px per 32 px of the shorter side, at least 1 px."""
    return max(1, round(4 * min(img_size) / 32))


class RandomShift:
    """Move a C×H×W image by ``dx, dy`` uniform in ``-shift_px … shift_px`` (covering MNIST-C's ``translate``)."""

    def __init__(self, shift_px: int):
        if shift_px < 0:
            raise UsageError(f"shift augmentation needs shift_px >= 0, got {shift_px}")
        self.shift_px = int(shift_px)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        dx, dy = torch.randint(-self.shift_px, self.shift_px + 1, (2,)).tolist()
        return shift_image(image, dx, dy)

    def __repr__(self) -> str:
        return f"RandomShift(shift_px={self.shift_px})"


def build_transform(name: str, *, in_chans: int, img_size: tuple[int, int],
                    shift_px: int | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-image transform called ``name`` (``None`` for ``none``); unknown names are a UsageError."""
    key = name.strip().lower()
    if key not in TRANSFORM_HELP:
        raise UsageError(f"unknown augmentation {name!r}{did_you_mean(key, TRANSFORM_NAMES)}",
                         hint=f"known: {', '.join(TRANSFORM_NAMES)}")
    fill = [0.0] * in_chans
    if key == "none":
        return None
    if key == "random-affine":
        return v2.RandomAffine(**AFFINE_RANGE, interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
    if key == "shift":
        return RandomShift(default_shift_px(img_size) if shift_px is None else shift_px)
    return v2.Compose([  # standard
        v2.RandomCrop(tuple(img_size), padding=standard_padding(img_size), fill=fill),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(STANDARD_ROTATION, interpolation=v2.InterpolationMode.BILINEAR, fill=fill),
    ])


class AugmentedImages(Dataset):
    """``base`` (items ``(image, label)``) with ``transform`` applied to each image as it is served."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor], *, name: str,
                 seed: int | None = None):
        self.base, self.transform, self.name, self.seed = base, transform, name, seed
        self._generator: torch.Generator | None = None
        self._owner: tuple | None = None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _next_seed(self) -> int:
        """The seed of the next image's transform, from this object's generator (per worker process)."""
        worker = get_worker_info()
        owner = (os.getpid(), worker.seed if worker is not None else None)
        if owner != self._owner:  # a fresh process (DataLoader worker) gets its own stream
            mixed = (int(self.seed) * 1_000_003 + (worker.seed if worker is not None else 0)) % (2**63)
            self._generator, self._owner = torch.Generator().manual_seed(mixed), owner
        return int(torch.randint(0, 2**62, (1,), generator=self._generator))

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if self.seed is None:  # the global RNG (seeded and checkpointed by the trainer)
            return self.transform(image), label
        # The transforms draw from the global CPU generator: seed it for this image, then restore it.
        # (torch.manual_seed would also reseed CUDA and costs ~0.5 ms; the CPU generator alone ~5 µs.)
        saved = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(self._next_seed())
            return self.transform(image), label
        finally:
            torch.set_rng_state(saved)

    def __repr__(self) -> str:
        return f"AugmentedImages({self.name}, {len(self)} images, seed={self.seed})"


def augmented_train(dataset: Dataset, name: str, *, in_chans: int, img_size: tuple[int, int],
                    shift_px: int | None = None, seed: int | None = None) -> Dataset:
    """``dataset`` with the baseline augmentation ``name`` applied per image (``none``: unchanged).

    ``shift_px`` is the shifted test set's shift (``None``: the data's default, see
    :func:`hardctl.data.shift.default_shift_px`); only ``shift`` uses it.
    """
    transform = build_transform(name, in_chans=in_chans, img_size=tuple(img_size), shift_px=shift_px)
    if transform is None:
        return dataset
    if len(dataset) > 0:  # type: ignore[arg-type]
        image = dataset[0][0]
        expected = (in_chans, *img_size)
        if not isinstance(image, torch.Tensor) or tuple(image.shape) != expected:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise DataError(f"--augment {name} expects {'×'.join(map(str, expected))} image tensors, got {got}")
    return AugmentedImages(dataset, transform, name=name.strip().lower(), seed=seed)


__all__ = ["TRANSFORM_NAMES", "TRANSFORM_HELP", "AugmentedImages", "RandomShift", "augmented_train",
           "build_transform", "standard_padding"]
