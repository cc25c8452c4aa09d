"""The built-in data-set formats, registered through the same hook as any third-party plugin.

The readers themselves live in :mod:`hardctl.data.formats` (array formats) and
:mod:`hardctl.data.folders` (folders of images); this module only names them for
``--data NAME[:ARG]`` and says which ones need a folder.
"""

from __future__ import annotations

from typing import Callable

from hardctl import hookimpl
from hardctl.data import folders, formats


@hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    register(
        "digits",
        formats.load_digits_dataset,
        help="scikit-learn's 8x8 digits on a 16x16 canvas, built in (1437 train / 360 test)",
        needs_arg=False,
    )
    register(
        "digits28",
        formats.load_digits28_dataset,
        help="the same digits at MNIST's geometry: 2x upscaled onto a 28x28 canvas, built in",
        needs_arg=False,
    )
    register(
        "fashion-mnist",
        formats.load_fashion_mnist_dataset,
        help=f"Fashion-MNIST IDX files in DIR (default {formats.FASHION_MNIST_DIR})",
        needs_arg=False,
    )
    register(
        "mnist",
        formats.load_mnist_dataset,
        help="MNIST IDX files (plain or .gz) in DIR or DIR/MNIST/raw",
        needs_arg=True,
    )
    register(
        "cifar10",
        formats.load_cifar10_dataset,
        help="CIFAR-10 python batches in DIR or DIR/cifar-10-batches-py",
        needs_arg=True,
    )
    register(
        "imagefolder",
        folders.load_imagefolder_dataset,
        help="images in DIR/train/CLASS/ and DIR/val/CLASS/ (or test/), decoded lazily",
        needs_arg=True,
    )
    register(
        "imagenet",
        folders.load_imagenet_dataset,
        help="ILSVRC-2012 DIR/train/<wnid>/ and DIR/val/<wnid>/: one class per wnid folder present (1000 in the "
        "full release, sorted = timm/torchvision indices); random resized crop 224 + flip for training, "
        "resize 256 + centre crop 224 for val and the 1 % held-out validation split",
        needs_arg=True,
    )
