"""The shifted test set: MNIST-C ``translate`` made reproducible and applicable to any data set.

MNIST-C's ``translate`` (severity 3, its default) moves every image by exactly 3 px horizontally and
3 px vertically, each sign random, with zero fill; integer translations with skimage's bilinear warp
are exact shifts, so a plain shift with zero fill reproduces it. Here the signs come from a seeded
generator per image index, so the same seed always gives the same shifted set.

The default shift keeps MNIST-C's proportion, 3 px per 28 px of image side (:func:`default_shift_px`):
exactly 3 px on MNIST and Fashion-MNIST, and 2 px on the 16×16 digits canvas, where 3 px would move the
8-pixel digits by almost half their size and defeat even a convolutional teacher.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def default_shift_px(img_size: tuple[int, int]) -> int:
    """MNIST-C's 3 px per 28 px of the shorter image side, at least 1 px."""
    return max(1, round(3 * min(img_size) / 28))


def shift_image(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move ``image`` (C×H×W) right by ``dx`` and down by ``dy`` pixels, filling with zeros."""
    _, h, w = image.shape
    out = torch.zeros_like(image)
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[:, dst_y, dst_x] = image[:, src_y, src_x]
    return out


def shift_signs(n: int, seed: int) -> torch.Tensor:
    """``n×2`` tensor of ±1: the (x, y) direction of each image's shift."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, 2), generator=generator) * 2 - 1


class ShiftedImages(Dataset):
    """``base`` with image ``i`` shifted by ``shift_px·signs[i]``; labels unchanged."""

    def __init__(self, base: Dataset, shift_px: int = 3, seed: int = 0):
        self.base = base
        self.shift_px = int(shift_px)
        self.signs = shift_signs(len(base), seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        sx, sy = (int(s) * self.shift_px for s in self.signs[index])
        return shift_image(image, sx, sy), label
