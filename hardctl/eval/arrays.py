"""Array-stored test sets: CIFAR-10, CIFAR-10-C, MNIST, MNIST-C, Fashion-MNIST and their shifted copies.

Only the test split is read. CIFAR-10 comes from the official python ``test_batch`` (read by
:mod:`hardctl.data.formats`' numpy-only unpickler; the training batches are not needed), MNIST and
Fashion-MNIST from the ``t10k`` IDX files (plain or ``.gz``). The corrupted sets are memory-mapped
``.npy`` files, sliced per cell and read image by image by the loader's workers:

* CIFAR-10-C: ``CIFAR-10-C/<corruption>.npy`` uint8 (50000, 32, 32, 3), severity-major (rows
  ``(s-1)*10000 : s*10000`` hold severity s), with ``labels.npy`` (50000,) beside them;
* MNIST-C: ``mnist_c/<corruption>/test_images.npy`` (10000, 28, 28, 1) and ``test_labels.npy``, one
  fixed severity per corruption, ``identity`` being the clean copy.

The shifted copies are :class:`hardctl.data.ShiftedImages` (MNIST-C's ``translate``: every image moved
by ``shift_px`` in x and y, signs drawn per image from the seed, zero fill).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hardctl.data import TensorImages, formats
from hardctl.data.shift import ShiftedImages, default_shift_px
from hardctl.errors import DataError
from hardctl.eval import EvalSet
from hardctl.eval.corruptions import (
    CORRUPTIONS,
    EXTRAS,
    MNIST_C_CORRUPTIONS,
    SEVERITIES,
)
from hardctl.eval.sources import Locator, Source, skip_reason

__all__ = [
    "SOURCES",
    "NpyImages",
    "cifar10_c_suite",
    "cifar10_suite",
    "fashion_mnist_suite",
    "mnist_c_suite",
    "mnist_suite",
]

_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SOURCES = {s.key: s for s in (
    Source("cifar10", ("cifar-10-batches-py", "cifar10", "."), "CIFAR-10 python batches (test_batch)",
           nested=("cifar-10-batches-py",), marker=("test_batch",)),
    Source("cifar10-c", ("CIFAR-10-C", "cifar10-c"), "CIFAR-10-C: <corruption>.npy + labels.npy",
           nested=("CIFAR-10-C",)),
    Source("mnist", ("mnist", "MNIST/raw", "."), "MNIST t10k IDX files (plain or .gz)", nested=("MNIST/raw",),
           marker=(_IDX_TEST[0], _IDX_TEST[0] + ".gz")),
    Source("mnist-c", ("mnist_c", "mnist-c"), "MNIST-C: <corruption>/test_images.npy + test_labels.npy",
           nested=("mnist_c",)),
    Source("fashion-mnist", ("fashion-mnist", "FashionMNIST/raw"), "Fashion-MNIST t10k IDX files",
           nested=("FashionMNIST/raw",), marker=(_IDX_TEST[0], _IDX_TEST[0] + ".gz"),
           default=formats.FASHION_MNIST_DIR),
)}  # fmt: skip


class NpyImages(Dataset):
    """Rows ``start:stop`` of a (memory-mapped) N×H×W×C uint8 array, served as uint8 C×H×W tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, start: int = 0, stop: int | None = None):
        self.images, self.labels = images, labels
        self.start, self.stop = start, len(images) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.start + index
        pixels = self.images[row]
        if pixels.dtype != np.uint8:  # MNIST-C as float 0..255: round as its generator's notebook does
            pixels = np.clip(np.rint(pixels), 0, 255)
        image = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))
        return image.permute(2, 0, 1), int(self.labels[row])


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{what}: cannot read {path}: {exc}", hint="download the file again") from None


def _check_images(array: np.ndarray, path: Path, what: str, hw: tuple[int, int], chans: int,
                  floats: bool = False) -> None:
    dtype_ok = array.dtype == np.uint8 or (floats and array.dtype.kind == "f")
    if not dtype_ok or array.ndim != 4 or array.shape[1:] != (*hw, chans):
        raise DataError(f"{what}: {path} holds {array.dtype} {tuple(array.shape)}, expected uint8 (N, {hw[0]}, "
                        f"{hw[1]}, {chans})", hint="use the official release files")


def _labels(array: np.ndarray, path: Path, n: int, what: str, classes: int = 10) -> np.ndarray:
    if array.ndim != 1 or len(array) != n or array.dtype.kind not in "iu":
        raise DataError(f"{what}: {path} holds {array.dtype} {tuple(array.shape)}, expected {n} integer labels",
                        hint="use the official release files")
    labels = np.asarray(array, dtype=np.int64)
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{what}: labels in {path} outside 0..{classes - 1}", hint="use the official release files")
    return labels


def _set(name: str, dataset: Dataset, description: str, chans: int, size: tuple[int, int], path: Path,
         **meta) -> EvalSet:
    return EvalSet(name, dataset, description, num_classes=10, in_chans=chans, img_size=size, path=str(path),
                   meta=meta)


def _skipped(name: str, reason: str, chans: int, size: tuple[int, int], **meta) -> EvalSet:
    return EvalSet(name, None, "", num_classes=10, in_chans=chans, img_size=size, skipped=reason, meta=meta)


def _with_shifted(name: str, test: EvalSet, shift_px: int | None, shift_seed: int) -> list[EvalSet]:
    px = default_shift_px(test.img_size) if shift_px is None else shift_px
    shifted = ShiftedImages(test.dataset, shift_px=px, seed=shift_seed)
    desc = f"{test.description}, every image shifted by ±{px} px in x and y (seed {shift_seed}, zero fill)"
    return [test, EvalSet(f"{name}-shifted", shifted, desc, num_classes=10, in_chans=test.in_chans,
                          img_size=test.img_size, path=test.path,
                          meta={"shift_px": px, "shift_seed": shift_seed, "expected_images": 10_000})]


def cifar10_suite(data_spec=None, *, data_root=None, sets=None, shift_px=None, shift_seed=0, **_) -> list[EvalSet]:
    """The CIFAR-10 test batch and its shifted copy."""
    found = Locator(data_root, sets).find(SOURCES["cifar10"])
    if found.path is None:
        return [_skipped(n, found.reason, 3, (32, 32)) for n in ("cifar10", "cifar10-shifted")]
    images, labels = formats.read_cifar_batch(found.path / "test_batch")  # uint8 N×3×32×32, int64 labels
    _labels(labels, found.path / "test_batch", len(images), "cifar10")
    test = _set("cifar10", TensorImages(torch.from_numpy(images), torch.from_numpy(labels)), "CIFAR-10 test batch",
                3, (32, 32), found.path, expected_images=10_000)
    return _with_shifted("cifar10", test, shift_px, shift_seed)


def cifar10_c_suite(data_spec=None, *, data_root=None, sets=None, **_) -> list[EvalSet]:
    """CIFAR-10-C: 15 benchmark + 4 extra corruptions x 5 severities, 10,000 images a cell."""
    found = Locator(data_root, sets).find(SOURCES["cifar10-c"])
    meta = {"benchmark": "cifar10-c"}
    if found.path is None:
        return [_skipped("cifar10-c", found.reason, 3, (32, 32), **meta)]
    root, out = found.path, []
    labels_path = root / "labels.npy"
    if not labels_path.is_file():
        raise DataError(f"cifar10-c: no labels.npy in {root}", hint="extract CIFAR-10-C.tar completely")
    raw = _load_npy(labels_path, "cifar10-c")
    if raw.ndim != 1 or len(raw) % 5:
        raise DataError(f"cifar10-c: {labels_path} holds {tuple(raw.shape)}, expected 5 x N labels",
                        hint="use the official release files")
    labels = _labels(raw, labels_path, len(raw), "cifar10-c")
    per = len(labels) // 5
    for corruption in CORRUPTIONS + EXTRAS:
        path = root / f"{corruption}.npy"
        cell_meta = {**meta, "corruption": corruption, "extra": corruption in EXTRAS}
        if not path.is_file():
            out.append(_skipped(f"cifar10-c/{corruption}", skip_reason([path]), 3, (32, 32), **cell_meta))
            continue
        images = _load_npy(path, "cifar10-c")
        _check_images(images, path, "cifar10-c", (32, 32), 3)
        if len(images) != len(labels):
            raise DataError(f"cifar10-c: {path} has {len(images)} images but labels.npy {len(labels)}",
                            hint="use the official release files")
        kind = "extra corruption" if corruption in EXTRAS else "benchmark corruption"
        for s in SEVERITIES:
            out.append(_set(f"cifar10-c/{corruption}/{s}", NpyImages(images, labels, (s - 1) * per, s * per),
                            f"CIFAR-10-C {corruption} severity {s} ({kind}), rows {(s - 1) * per}:{s * per}", 3,
                            (32, 32), path, **cell_meta, severity=s, expected_images=10_000))
    return out


def _idx_test(name: str, folder: Path, classes: int) -> TensorImages:
    images, labels = (formats.read_idx(folder / f) for f in _IDX_TEST)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{name}: {folder} t10k files hold {images.shape} images and {labels.shape} labels",
                        hint="use the official IDX files")
    _labels(labels, folder / _IDX_TEST[1], len(images), name, classes)
    return TensorImages(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _idx_suite(name: str, title: str, locator: Locator, shift_px, shift_seed) -> list[EvalSet]:
    found = locator.find(SOURCES[name])
    if found.path is None:
        return [_skipped(n, found.reason, 1, (28, 28)) for n in (name, f"{name}-shifted")]
    dataset = _idx_test(name, found.path, 10)
    size = tuple(dataset.images.shape[2:])
    test = _set(name, dataset, f"{title} test split", 1, size, found.path, expected_images=10_000)
    return _with_shifted(name, test, shift_px, shift_seed)


def mnist_suite(data_spec=None, *, data_root=None, sets=None, shift_px=None, shift_seed=0, **_) -> list[EvalSet]:
    """The MNIST test split and its shifted copy."""
    return _idx_suite("mnist", "MNIST", Locator(data_root, sets), shift_px, shift_seed)


def fashion_mnist_suite(data_spec=None, *, data_root=None, sets=None, shift_px=None, shift_seed=0,
                        **_) -> list[EvalSet]:
    """The Fashion-MNIST test split and its shifted copy (default folder: Debian's dataset-fashion-mnist)."""
    return _idx_suite("fashion-mnist", "Fashion-MNIST", Locator(data_root, sets), shift_px, shift_seed)


def mnist_c_suite(data_spec=None, *, data_root=None, sets=None, **_) -> list[EvalSet]:
    """MNIST-C test files: ``identity`` (clean) and the 15 corruptions, ``translate`` among them."""
    found = Locator(data_root, sets).find(SOURCES["mnist-c"])
    meta = {"benchmark": "mnist-c"}
    if found.path is None:
        return [_skipped("mnist-c", found.reason, 1, (28, 28), **meta)]
    out = []
    for corruption in ("identity", *MNIST_C_CORRUPTIONS):
        folder = found.path / corruption
        x_path, y_path = folder / "test_images.npy", folder / "test_labels.npy"
        cell_meta = {**meta, "corruption": corruption, "expected_images": 10_000}
        if not (x_path.is_file() and y_path.is_file()):
            missing = [p for p in (x_path, y_path) if not p.is_file()]
            out.append(_skipped(f"mnist-c/{corruption}", skip_reason(missing), 1, (28, 28), **cell_meta))
            continue
        images = _load_npy(x_path, "mnist-c")
        _check_images(images, x_path, "mnist-c", (28, 28), 1, floats=True)
        labels = _labels(_load_npy(y_path, "mnist-c"), y_path, len(images), "mnist-c")
        what = "clean copy" if corruption == "identity" else "fixed severity"
        out.append(_set(f"mnist-c/{corruption}", NpyImages(images, labels), f"MNIST-C {corruption} ({what})", 1,
                        (28, 28), folder, **cell_meta))
    return out
