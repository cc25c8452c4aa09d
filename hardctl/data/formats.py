"""Readers of the array data-set formats that hardctl knows without any plugin.

Each ``load_*_dataset(arg)`` builder turns the ``ARG`` of a ``--data NAME[:ARG]`` spec into an
:class:`~hardctl.data.ImageDatasets` held in memory: the scikit-learn digits, MNIST / Fashion-MNIST
IDX files and the CIFAR-10 python pickles. The folder-of-images readers (``imagefolder``,
``imagenet``) live in :mod:`hardctl.data.folders`. The builders are registered by the
``hardctl_builtins.datasets`` plugin; everything that can go wrong with the user's files is reported
as a one-line :class:`~hardctl.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardctl.data import ImageDatasets, TensorImages
from hardctl.errors import DataError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "load_cifar10_dataset",
    "load_digits_dataset",
    "load_fashion_mnist_dataset",
    "load_mnist_dataset",
    "read_idx",
]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CANVAS = 16  # 8×8 digits centred on 16×16, so a 3 px shift moves ink instead of cropping it

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

_IDX_UINT8 = 0x08
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


MNIST_HINT = ("download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; e.g. torchvision.datasets.MNIST(DIR, "
              "download=True)) into DIR and pass --data mnist:DIR")
CIFAR10_HINT = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it "
                "into DIR and pass --data cifar10:DIR")


def data_folder(arg: str, name: str, hint: str | None = None) -> Path:
    folder = Path(arg).expanduser()
    if not folder.is_dir():
        raise DataError(f"{name}: no such folder {folder}", hint=hint or f"pass an existing folder as {name}:DIR")
    return folder


def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise DataError(f"{name} takes no argument, got {name}:{arg}", hint=f"use --data {name}")


# --- scikit-learn digits -------------------------------------------------------------------------


def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images n×8×8 in 0..16, labels)`` of scikit-learn's digits.

    Importing scikit-learn takes seconds, longer than a whole digits epoch, so the CSV that
    ``load_digits`` itself parses (64 pixel columns, then the label) is read straight from the
    installed package; ``load_digits`` is the fallback should a release move the file.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without executing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits28_dataset(arg: str | None = None) -> ImageDatasets:
    """The same digits and split at MNIST's geometry: upscaled 2× (16×16 of ink) on a 28×28 canvas.

    MNIST centres 20×20 of ink in 28×28, so the paper's CNN ends in a 3×3 map before global pooling and
    is partly shift-invariant; on the 16×16 canvas it ends in 1×1 and is not (see the README).
    """
    return load_digits_dataset(arg, scale=2, canvas_size=28, name="digits28")


def load_digits_dataset(arg: str | None = None, *, scale: int = 1, canvas_size: int = DIGITS_CANVAS,
                        name: str = "digits") -> ImageDatasets:
    """The 1797 8×8 scikit-learn digits on a 16×16 canvas, split 1437 train / 360 test.

    ``scale``/``canvas_size`` give other geometries of the same images and split (see :func:`load_digits28_dataset`).
    """
    _no_arg(name, arg)
    pixels, targets = _read_sklearn_digits()
    n = len(pixels)
    ink = torch.from_numpy(np.asarray(pixels, dtype=np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if scale != 1:  # bilinear, so strokes stay smooth like MNIST's anti-aliased ones
        ink = torch.nn.functional.interpolate(ink, scale_factor=scale, mode="bilinear", align_corners=False)
    side = ink.shape[-1]
    canvas = np.zeros((n, 1, canvas_size, canvas_size), dtype=np.uint8)
    lo = (canvas_size - side) // 2
    canvas[:, :, lo : lo + side, lo : lo + side] = ink.round().clamp(0, 255).to(torch.uint8).numpy()
    images, labels = torch.from_numpy(canvas), torch.as_tensor(targets, dtype=torch.long)

    # The digits ship without a test split; a fixed permutation gives every run the same one.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = math.ceil(n * DIGITS_TEST_FRACTION)
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return ImageDatasets(
        name=name,
        train=TensorImages(images[train_idx], labels[train_idx]),
        test=TensorImages(images[test_idx], labels[test_idx]),
        classes=[str(d) for d in range(10)],
        in_chans=1,
        img_size=(canvas_size, canvas_size),
        source="sklearn.datasets.load_digits",
    )


# --- IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one uint8 IDX file (gzipped or plain; ``x`` also finds ``x.gz`` and vice versa)."""
    path = Path(path)
    other = path.with_name(path.name[:-3]) if path.suffix == ".gz" else Path(f"{path}.gz")
    candidates = [path, other]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DataError(f"no IDX file {path}[.gz]", hint="check the folder and the file name")
    try:
        raw = found.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, since files get renamed
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupt deflate stream
        raise DataError(f"cannot read IDX file {found}: {exc}", hint="download the file again") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"{found} is not an IDX file (bad magic number)", hint="download the file again")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _IDX_UINT8:
        raise DataError(
            f"{found}: IDX data type 0x{dtype_code:02x} is not uint8 (0x08)",
            hint="use the official ubyte files",
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{found}: truncated IDX header", hint="download the file again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{found}: IDX file {what} ({len(raw)} bytes, header says {expected})",
            hint="download the file again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _idx_dir(name: str, folder: Path, layouts: tuple[str, ...], hint: str) -> Path:
    """The first of ``folder`` and its torchvision sub-layouts that holds all four IDX files."""

    def has(d: Path, f: str) -> bool:
        return (d / f).is_file() or (d / f"{f}.gz").is_file()

    for candidate in (folder, *(folder / sub for sub in layouts)):
        if all(has(candidate, f) for f in _IDX_FILES.values()):
            return candidate
    missing = [f"{f}[.gz]" for f in _IDX_FILES.values() if not has(folder, f)]
    raise DataError(f"{name}: no {', '.join(missing)} in {folder}", hint=hint)


def _idx_split(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(folder / _IDX_FILES[images]), read_idx(folder / _IDX_FILES[labels])
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(
            f"{folder}: {_IDX_FILES[images]} must be N×H×W and {_IDX_FILES[labels]} N, "
            f"got {x.shape} and {y.shape}",
            hint="the image and label files may be swapped",
        )
    if len(x) != len(y):
        raise DataError(
            f"{folder}: {_IDX_FILES[images]} has {len(x)} images but {_IDX_FILES[labels]} {len(y)} labels",
            hint="the files come from different releases; download them again",
        )
    return x, y


def _load_idx_set(
    name: str, folder: Path, layouts: tuple[str, ...], classes: list[str], hint: str
) -> ImageDatasets:
    found = _idx_dir(name, folder, layouts, hint)
    train_x, train_y = _idx_split(found, "train_images", "train_labels")
    test_x, test_y = _idx_split(found, "test_images", "test_labels")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{name}: train and test images differ in size in {found}",
            hint="download the files again",
        )
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if top >= len(classes):
        raise DataError(
            f"{name}: label {top} in {found} but only {len(classes)} classes",
            hint="check the label files",
        )
    return ImageDatasets(
        name=name,
        # IDX images carry no channel axis; the models expect N×1×H×W
        train=TensorImages(torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y).long()),
        test=TensorImages(torch.from_numpy(test_x).unsqueeze(1), torch.from_numpy(test_y).long()),
        classes=list(classes),
        in_chans=1,
        img_size=(int(train_x.shape[1]), int(train_x.shape[2])),
        source=str(found),
    )


def load_mnist_dataset(arg: str | None) -> ImageDatasets:
    """MNIST from ``DIR`` (the four IDX files, plain or ``.gz``; also ``DIR/MNIST/raw``)."""
    if arg is None:
        raise DataError("mnist needs a folder", hint="use --data mnist:DIR")
    hint = "download the four MNIST IDX files into that folder"
    folder = data_folder(arg, "mnist", MNIST_HINT)
    return _load_idx_set("mnist", folder, ("MNIST/raw",), [str(d) for d in range(10)], hint)


def load_fashion_mnist_dataset(arg: str | None = None) -> ImageDatasets:
    """Fashion-MNIST from ``DIR`` or, by default, Debian's ``/usr/share/datasets/fashion-mnist``."""
    if arg is None:
        folder = Path(FASHION_MNIST_DIR)
        hint = "apt-get install dataset-fashion-mnist, or pass --data fashion-mnist:DIR"
        if not folder.is_dir():
            raise DataError(f"fashion-mnist: no folder {folder}", hint=hint)
    else:
        folder = data_folder(arg, "fashion-mnist")
        hint = "download the four Fashion-MNIST IDX files into that folder"
    return _load_idx_set("fashion-mnist", folder, ("FashionMNIST/raw",), FASHION_MNIST_CLASSES, hint)


# --- CIFAR-10 python pickles ---------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


# Pickles run whatever callables they name, so only what rebuilds a numpy array is resolved. The
# names are mapped to objects here rather than imported by name, so that the numpy 1 spelling of
# the official files (numpy.core...) works on numpy 2 without its deprecation shim.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,  # protocol 5 (Python >= 3.14 default)
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,  # bytes in protocol 2 from Python 3
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy array reconstruction."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        factory = _PICKLE_ALLOWED.get((module, name))
        if factory is None:
            raise DataError(
                f"{self.path}: refusing to unpickle {module}.{name} (only numpy arrays are allowed)",
                hint="use the official CIFAR-10 python batches",
            )
        return factory()


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}",
            hint="download the file again",
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a pickled dict, got {type(obj).__name__}",
            hint="use the official CIFAR-10 python batches",
        )
    return obj


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    shape_ok = isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
    if not shape_ok or data.dtype != np.uint8:
        raise DataError(
            f"{path}: b'data' must be a uint8 N×3072 array",
            hint="use the official CIFAR-10 python batches",
        )
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(
            f"{path}: {len(data)} images but {labels.size} labels",
            hint="download the file again",
        )
    # rows are three 32×32 planes (R, G, B), each row-major
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_dataset(arg: str | None) -> ImageDatasets:
    """CIFAR-10 from the python batches in ``DIR`` or ``DIR/cifar-10-batches-py``."""
    if arg is None:
        raise DataError("cifar10 needs a folder", hint="use --data cifar10:DIR")
    folder = data_folder(arg, "cifar10", CIFAR10_HINT)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    layouts = (folder, folder / "cifar-10-batches-py")  # the tarball extracts into the latter
    found = next((d for d in layouts if all((d / n).is_file() for n in names)), None)
    if found is None:
        missing = [n for n in names if not (folder / n).is_file()]
        raise DataError(
            f"cifar10: no {', '.join(missing)} in {folder}",
            hint="extract cifar-10-python.tar.gz into that folder",
        )
    train = [read_cifar_batch(found / n) for n in names[:-1]]
    test_x, test_y = read_cifar_batch(found / "test_batch")
    train_x, train_y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    classes = list(CIFAR10_CLASSES)
    if (found / "batches.meta").is_file():
        meta = _unpickle(found / "batches.meta").get(b"label_names")
        if meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta]
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if top >= len(classes) or min(train_y.min(initial=0), test_y.min(initial=0)) < 0:
        raise DataError(
            f"cifar10: labels outside 0..{len(classes) - 1} in {found}",
            hint="check batches.meta",
        )
    return ImageDatasets(
        name="cifar10",
        train=TensorImages(torch.from_numpy(train_x), torch.from_numpy(train_y)),
        test=TensorImages(torch.from_numpy(test_x), torch.from_numpy(test_y)),
        classes=classes,
        in_chans=3,
        img_size=(32, 32),
        source=str(found),
    )
