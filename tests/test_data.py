"""The built-in data-set formats, read from files written in their real on-disk layouts.

Most tests go through ``hardctl.data.build_datasets`` / ``load_data``, i.e. through the plugin
registry and the installed ``builtin_datasets`` entry point, so the plugin path is exercised too.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hardctl import plugins
from hardctl.data import build_datasets, formats, load_data, parse_spec
from hardctl.errors import DataError, UsageError

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --- helpers that write the real formats ---------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An IDX file as LeCun specifies it: 0, 0, type 0x08, ndim, big-endian sizes, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def mnist_arrays() -> dict[str, np.ndarray]:
    """Three 4×5 training images and two test images; non-square to catch H/W swaps."""
    train = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    test = (200 + np.arange(2 * 4 * 5) % 50).astype(np.uint8).reshape(2, 4, 5)
    return {
        "train_images": train,
        "train_labels": np.array([7, 0, 9], dtype=np.uint8),
        "test_images": test,
        "test_labels": np.array([3, 1], dtype=np.uint8),
    }


def write_mnist(folder: Path, gz: bool | dict[str, bool] = False) -> dict[str, np.ndarray]:
    arrays = mnist_arrays()
    for key, name in MNIST_NAMES.items():
        write_idx(folder / name, arrays[key], gz=gz[key] if isinstance(gz, dict) else gz)
    return arrays


def cifar_batch(n: int, first_label: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [(first_label + i) % 10 for i in range(n)],
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def write_cifar(folder: Path, protocol: int = 2) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(2, i, seed=i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(3, 5, seed=99)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    for name, obj in {**batches, "batches.meta": {b"label_names": names, b"num_vis": 3072}}.items():
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh, protocol=protocol)
    return batches


def write_png(path: Path, color, size=(6, 4), mode: str = "RGB") -> None:
    """A uniform ``size`` = (W, H) image, so resized copies keep exact pixel values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def hand_shift(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """A 3 px shift written out with explicit slices (independent of ``shift_image``)."""
    out = torch.zeros_like(image)
    ys, yd = (slice(0, -3), slice(3, None)) if dy > 0 else (slice(3, None), slice(0, -3))
    xs, xd = (slice(0, -3), slice(3, None)) if dx > 0 else (slice(3, None), slice(0, -3))
    out[:, yd, xd] = image[:, ys, xs]
    return out


# --- registry and specs --------------------------------------------------------------------------


def test_builtin_plugin_registers_the_five_formats():
    entries = {e.name: e for e in plugins.datasets}
    expected = {"digits": False, "fashion-mnist": False, "mnist": True, "cifar10": True, "imagefolder": True,
                "imagenet": True}
    assert expected.keys() <= entries.keys()
    for name, needs_arg in expected.items():
        assert entries[name].needs_arg is needs_arg
        assert entries[name].plugin == "builtin_datasets"
        assert entries[name].help and "\n" not in entries[name].help


def test_unknown_name_suggests_the_near_miss():
    with pytest.raises(UsageError, match="did you mean 'digits'"):
        build_datasets("digit")


def test_mnist_without_a_folder():
    with pytest.raises(DataError, match="needs a folder"):
        build_datasets("mnist")
    with pytest.raises(DataError, match="no such folder"):
        build_datasets("mnist:/nonexistent/hardctl-test")


def test_parse_spec_keeps_colons_in_the_argument():
    assert parse_spec(" MNIST:C:/x ") == ("mnist", "C:/x")
    assert parse_spec("digits") == ("digits", None)


# --- digits --------------------------------------------------------------------------------------


def test_digits_shapes_and_split():
    sets = build_datasets("digits")
    assert (sets.name, sets.source) == ("digits", "sklearn.datasets.load_digits")
    assert sets.classes == [str(d) for d in range(10)] and sets.num_classes == 10
    assert (sets.in_chans, sets.img_size) == (1, (16, 16))
    assert (len(sets.train), len(sets.test)) == (1437, 360)
    assert sets.train.images.shape == (1437, 1, 16, 16) and sets.train.images.dtype == torch.uint8
    image, label = sets.test[0]
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16) and isinstance(label, int)
    assert 0.0 <= image.min() and image.max() <= 1.0

    again = build_datasets("digits")
    for a, b in ((sets.train, again.train), (sets.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_digits_canvas_placement_and_values():
    from sklearn.datasets import load_digits

    sets = build_datasets("digits")
    images = torch.cat([sets.train.images, sets.test.images])
    labels = torch.cat([sets.train.labels, sets.test.labels])
    border = images.clone()
    border[:, :, 4:12, 4:12] = 0
    assert not border.any()

    # train ∪ test is exactly the 1797 digits (as a multiset of label + scaled 8×8 pixels)
    digits = load_digits()
    expected = np.round(digits.images * 255 / 16).astype(np.uint8).reshape(-1, 64)
    expected = np.concatenate([digits.target[:, None].astype(np.uint8), expected], axis=1)
    centres = images[:, 0, 4:12, 4:12].reshape(-1, 64).numpy()
    got = np.concatenate([labels.numpy()[:, None].astype(np.uint8), centres], axis=1)
    assert sorted(map(bytes, expected)) == sorted(map(bytes, got))
    assert int(images.max()) == 255 and 128 in images.unique()  # 16 -> 255, 8 -> round(127.5) = 128


def test_digits_takes_no_argument():
    with pytest.raises(DataError, match="takes no argument"):
        build_datasets("digits:/tmp")


def test_load_data_validation_split_is_deterministic():
    a, b = load_data("digits"), load_data("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1437 - 144, 144, 360)
    assert a.val.indices == b.val.indices and a.train.indices == b.train.indices
    assert not set(a.val.indices) & set(a.train.indices)
    assert a.info["val"] == 144 and a.info["source"] == "sklearn.datasets.load_digits"


def test_default_shift_keeps_mnist_c_proportion():
    from hardctl.data.shift import default_shift_px

    assert [default_shift_px(s) for s in [(28, 28), (16, 16), (32, 32), (224, 224), (8, 8)]] == [3, 2, 3, 24, 1]
    bundle = load_data("digits")
    assert bundle.info["shift_px"] == 2 and bundle.shifted_test.shift_px == 2


def test_shifted_test_moves_each_image_three_pixels_with_zero_fill():
    bundle = load_data("digits", shift_px=3, shift_seed=0)
    for i in range(40):
        image, label = bundle.test[i]
        shifted, shifted_label = bundle.shifted_test[i]
        assert shifted_label == label
        matches = [(dx, dy) for dx in (-3, 3) for dy in (-3, 3) if torch.equal(shifted, hand_shift(image, dx, dy))]
        assert len(matches) == 1, f"image {i} is not a single (±3, ±3) shift"
        assert torch.isclose(shifted.sum(), image.sum())  # the 4 px margin keeps all ink in view

    same = load_data("digits", shift_px=3, shift_seed=0).shifted_test
    other = load_data("digits", shift_px=3, shift_seed=1).shifted_test
    assert all(torch.equal(same[i][0], bundle.shifted_test[i][0]) for i in range(40))
    assert any(not torch.equal(other[i][0], bundle.shifted_test[i][0]) for i in range(40))


# --- IDX: mnist / fashion-mnist ------------------------------------------------------------------


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain = write_idx(tmp_path / "plain" / "x-idx3-ubyte", array)
    zipped = write_idx(tmp_path / "gz" / "x-idx3-ubyte", array, gz=True)
    for path in (plain, zipped, tmp_path / "gz" / "x-idx3-ubyte"):  # the plain name finds x.gz
        out = formats.read_idx(path)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, array)


def test_mnist_plain_files(tmp_path):
    arrays = write_mnist(tmp_path)
    sets = build_datasets(f"mnist:{tmp_path}")
    assert (sets.name, sets.source, sets.num_classes, sets.in_chans, sets.img_size) == (
        "mnist", str(tmp_path), 10, 1, (4, 5)
    )
    assert sets.train.images.shape == (3, 1, 4, 5) and sets.train.images.dtype == torch.uint8
    assert sets.test.images.shape == (2, 1, 4, 5)
    assert int(sets.train.images[1, 0, 2, 3]) == 20 + 2 * 5 + 3  # image 1, row 2, column 3
    assert int(sets.test.images[0, 0, 3, 4]) == int(arrays["test_images"][0, 3, 4])
    assert sets.train.labels.tolist() == [7, 0, 9] and sets.test.labels.tolist() == [3, 1]
    image, label = sets.train[1]
    assert label == 0 and image[0, 2, 3].item() == pytest.approx(33 / 255)


def test_mnist_gzipped_in_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", gz={"train_images": True, "train_labels": False,
                                                "test_images": True, "test_labels": True})
    sets = build_datasets(f"mnist:{tmp_path}")
    assert sets.source == str(tmp_path / "MNIST" / "raw")
    assert sets.train.labels.tolist() == [7, 0, 9] and int(sets.train.images[2, 0, 3, 4]) == 59


def test_mnist_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[\.gz\] in") as err:
        build_datasets(f"mnist:{tmp_path}")
    assert str(tmp_path) in str(err.value) and "train-images" not in err.value.message


def test_truncated_idx_is_refused(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated") as err:
        build_datasets(f"mnist:{tmp_path}")
    assert str(path) in str(err.value)


def test_truncated_gzip_is_refused(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte", np.arange(100, dtype=np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="x-idx1-ubyte.gz"):
        formats.read_idx(path)


def test_corrupt_gzip_stream_is_refused(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte", np.arange(100, dtype=np.uint8), gz=True)
    raw = bytearray(path.read_bytes())
    raw[12:20] = b"\xff" * 8  # inside the deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="x-idx1-ubyte.gz"):
        formats.read_idx(path)


def test_bad_magic_and_dtype_are_refused(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x1f\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02")
    with pytest.raises(DataError, match="bad magic") as err:
        formats.read_idx(path)
    assert str(path) in str(err.value)
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x80\x3f")  # float32
    with pytest.raises(DataError, match="not uint8"):
        formats.read_idx(path)


def test_image_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2], dtype=np.uint8))
    with pytest.raises(DataError, match="3 images but .* 2 labels"):
        build_datasets(f"mnist:{tmp_path}")


def test_fashion_mnist_from_a_folder(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    sets = build_datasets(f"fashion-mnist:{tmp_path}")
    assert sets.classes[0] == "T-shirt/top" and sets.classes[9] == "Ankle boot" and sets.num_classes == 10
    assert sets.train.images.shape == (3, 1, 4, 5)


def test_fashion_mnist_missing_default_folder_hints_at_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_datasets("fashion-mnist")
    (tmp_path / "absent").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        build_datasets("fashion-mnist")


@pytest.mark.skipif(
    not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST absent: apt-get install dataset-fashion-mnist to fill {REAL_FASHION}",
)
def test_real_fashion_mnist():
    sets = build_datasets("fashion-mnist")
    assert (len(sets.train), len(sets.test)) == (60000, 10000)
    assert sets.train[0][0].shape == (1, 28, 28) and sets.img_size == (28, 28)
    assert sets.source == str(REAL_FASHION)
    assert torch.bincount(sets.test.labels).tolist() == [1000] * 10


# --- CIFAR-10 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_batches(tmp_path, protocol):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    sets = build_datasets(f"cifar10:{tmp_path}")
    assert (sets.source, sets.in_chans, sets.img_size) == (str(tmp_path / "cifar-10-batches-py"), 3, (32, 32))
    assert sets.classes[0] == "airplane" and sets.classes[9] == "truck"
    assert sets.train.images.shape == (10, 3, 32, 32) and sets.train.images.dtype == torch.uint8
    assert sets.test.images.shape == (3, 3, 32, 32)
    # train image 3 is the second of data_batch_2; pixel (channel G, row 5, column 7)
    data = batches["data_batch_2"][b"data"]
    assert int(sets.train.images[3, 1, 5, 7]) == int(data[1, 1024 + 5 * 32 + 7])
    assert int(sets.test.images[2, 2, 31, 0]) == int(batches["test_batch"][b"data"][2, 2048 + 31 * 32])
    assert sets.train.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert sets.test.labels.tolist() == [5, 6, 7]


def test_cifar10_numpy1_spelling_of_the_official_files(tmp_path):
    """The official batches name ``numpy.core.multiarray._reconstruct``, which numpy 2 renamed."""
    batches = write_cifar(tmp_path, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw = (tmp_path / name).read_bytes()
        assert b"numpy._core.multiarray\n_reconstruct" in raw
        (tmp_path / name).write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    sets = build_datasets(f"cifar10:{tmp_path}")
    assert sets.source == str(tmp_path)
    assert np.array_equal(sets.test.images.reshape(3, -1).numpy(), batches["test_batch"][b"data"])


def test_cifar10_missing_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataError, match="no test_batch in"):
        build_datasets(f"cifar10:{tmp_path}")


class _Payload:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar10_refuses_foreign_pickles(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Payload(str(marker)), b"labels": []}, fh)
    with pytest.raises(DataError, match=r"refusing to unpickle \w+\.open") as err:
        build_datasets(f"cifar10:{tmp_path}")
    assert "data_batch_3" in str(err.value) and not marker.exists()

    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": os.system, b"labels": []}, fh)
    with pytest.raises(DataError, match=r"refusing to unpickle \w+\.system"):
        build_datasets(f"cifar10:{tmp_path}")

    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Payload}, fh)  # a class reference is refused just the same
    with pytest.raises(DataError, match="refusing to unpickle .*_Payload"):
        build_datasets(f"cifar10:{tmp_path}")


def test_cifar10_corrupt_pickle(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read .*data_batch_1"):
        build_datasets(f"cifar10:{tmp_path}")


# --- image folders -------------------------------------------------------------------------------


def test_imagefolder_rgb_with_resize(tmp_path):
    write_png(tmp_path / "train" / "cat" / "a.png", (10, 20, 30))  # first image: 6 wide, 4 high
    write_png(tmp_path / "train" / "cat" / "b.jpg", 0, mode="L")
    write_png(tmp_path / "train" / "dog" / "c.png", (200, 100, 50), size=(12, 8))
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")  # other suffixes are skipped
    write_png(tmp_path / "val" / "cat" / "d.png", (1, 2, 3))
    write_png(tmp_path / "val" / "dog" / "e.bmp", (4, 5, 6), size=(3, 3))
    sets = build_datasets(f"imagefolder:{tmp_path}")
    assert (sets.name, sets.source, sets.classes) == ("imagefolder", str(tmp_path), ["cat", "dog"])
    assert (sets.in_chans, sets.img_size, len(sets.train), len(sets.test)) == (3, (4, 6), 3, 2)
    image, label = sets.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 6) and label == 0
    assert image[:, 2, 5].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    resized, label = sets.train[2]
    assert resized.shape == (3, 4, 6) and label == 1
    assert resized[:, 3, 0].tolist() == pytest.approx([200 / 255, 100 / 255, 50 / 255])
    grey, _ = sets.train[1]
    assert grey.shape == (3, 4, 6) and not grey.any()
    assert sets.test[1][0].shape == (3, 4, 6) and sets.test[1][1] == 1
    assert sets.test[0][0][:, 0, 0].tolist() == pytest.approx([1 / 255, 2 / 255, 3 / 255])


def test_imagefolder_greyscale_and_test_dir(tmp_path):
    write_png(tmp_path / "train" / "a" / "1.png", 7, size=(5, 5), mode="L")
    write_png(tmp_path / "train" / "b" / "2.PNG", 9, size=(5, 5), mode="L")
    write_png(tmp_path / "test" / "a" / "3.png", (255, 255, 255), size=(5, 5))
    write_png(tmp_path / "test" / "b" / "4.png", 11, size=(5, 5), mode="L")
    bundle = load_data(f"imagefolder:{tmp_path}")
    sets = bundle.sets
    assert (sets.in_chans, sets.img_size, sets.classes) == (1, (5, 5), ["a", "b"])
    image, label = sets.train[1]
    assert image.shape == (1, 5, 5) and label == 1 and image[0, 4, 4].item() == pytest.approx(9 / 255)
    assert sets.test[0][0].shape == (1, 5, 5) and sets.test[0][0].min().item() == 1.0
    assert (len(bundle.train), len(bundle.val)) == (1, 1)


def test_imagefolder_class_mismatch_is_named(tmp_path):
    write_png(tmp_path / "train" / "cat" / "a.png", 0)
    write_png(tmp_path / "train" / "dog" / "b.png", 0)
    write_png(tmp_path / "val" / "cat" / "c.png", 0)
    write_png(tmp_path / "val" / "cow" / "d.png", 0)
    with pytest.raises(DataError, match="extra classes cow; .*lacks classes dog"):
        build_datasets(f"imagefolder:{tmp_path}")


def test_imagefolder_empty_class_and_missing_split(tmp_path):
    write_png(tmp_path / "train" / "cat" / "a.png", 0)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="needs train/ and val/"):
        build_datasets(f"imagefolder:{tmp_path}")
    write_png(tmp_path / "val" / "cat" / "c.png", 0)
    write_png(tmp_path / "val" / "dog" / "d.png", 0)
    with pytest.raises(DataError, match="no .* images in .*dog"):
        build_datasets(f"imagefolder:{tmp_path}")


def test_imagefolder_undecodable_image(tmp_path):
    write_png(tmp_path / "train" / "cat" / "a.png", 0)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    write_png(tmp_path / "val" / "cat" / "c.png", 0)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        build_datasets(f"imagefolder:{tmp_path}")


# --- ImageNet (ILSVRC-2012 layout) ---------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850"]  # the first three of the 1000, in sorted order


def write_jpeg(path: Path, size=(40, 30), color=None, seed: int = 0) -> None:
    """A small JPEG (``size`` = (W, H)): noise unless ``color`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    else:
        Image.new("RGB", size, color).save(path, quality=95)


def write_imagenet(root: Path, train_per_class=(3, 2, 4), val_per_class=(1, 1, 1)) -> Path:
    for c, (wnid, n_train, n_val) in enumerate(zip(WNIDS, train_per_class, val_per_class)):
        for i in range(n_train):
            write_jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", seed=10 * c + i)
        for i in range(n_val):
            write_jpeg(root / "val" / wnid / f"ILSVRC2012_val_{c:04d}{i:04d}.JPEG", seed=100 + 10 * c + i)
    return root


def test_imagenet_tree_classes_splits_and_sizes(tmp_path):
    root = write_imagenet(tmp_path)
    (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")  # other files are skipped
    sets = build_datasets(f"imagenet:{root}")
    assert (sets.name, sets.source, sets.classes) == ("imagenet", str(root), WNIDS)
    assert (sets.in_chans, sets.img_size, sets.num_classes) == (3, (224, 224), 3)
    assert (len(sets.train), len(sets.test), sets.val_fraction) == (9, 3, 0.01)
    assert [sets.test[i][1] for i in range(3)] == [0, 1, 2]
    for dataset in (sets.train, sets.test, sets.train_eval):
        image, label = dataset[4 if dataset is not sets.test else 0]
        assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 224, 224)
        assert 0.0 <= image.min() and image.max() <= 1.0
    assert sets.train[4][1] == sets.train_eval[4][1] == 1  # sorted wnids, sorted files within each
    assert torch.equal(sets.test[2][0], sets.test[2][0])  # the eval transform is deterministic


def test_imagenet_eval_view_resizes_256_and_crops_the_centre_224(tmp_path):
    root = write_imagenet(tmp_path, train_per_class=(1, 1, 1))
    left, right = Image.new("RGB", (256, 256), (255, 0, 0)), Image.new("RGB", (256, 256), (0, 0, 255))
    wide = Image.new("RGB", (512, 256))  # already 256 high: the crop is columns 144..367
    wide.paste(left, (0, 0))
    wide.paste(right, (256, 0))
    wide.save(root / "val" / WNIDS[0] / "ILSVRC2012_val_00000000.JPEG", quality=95)
    image, _ = build_datasets(f"imagenet:{root}").test[0]
    assert image.shape == (3, 224, 224)
    assert image[0, :, :100].mean() > 0.9 and image[2, :, :100].mean() < 0.1  # red: columns 144..243
    assert image[2, :, 124:].mean() > 0.9 and image[0, :, 124:].mean() < 0.1  # blue: columns 268..367


def test_imagenet_validation_split_uses_the_eval_view_and_training_crops_are_seeded(tmp_path):
    root = write_imagenet(tmp_path, train_per_class=(60, 60, 80))  # 200 images: 1 % = 2 held out
    a, b = load_data(f"imagenet:{root}", seed=7), load_data(f"imagenet:{root}", seed=7)
    assert (len(a.train), len(a.val), a.info["val"], a.info["val_fraction"]) == (198, 2, 2, 0.01)
    assert a.val.dataset is a.sets.train_eval and a.train.dataset is a.sets.train
    # validation images are the eval transform of their files: the same every time
    assert torch.equal(a.val[0][0], a.val[0][0]) and torch.equal(a.val[1][0], b.val[1][0])
    index = a.val.indices[0]
    assert torch.equal(a.val[0][0], a.sets.train_eval[index][0])
    decoded = a.sets.train_eval.decode(index)
    assert torch.equal(a.val[0][0], a.sets.train_eval.transform(decoded))
    state = torch.get_rng_state()
    crops_a = [a.train[i][0] for i in range(3)]
    crops_b = [b.train[i][0] for i in range(3)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))  # same seed, same crops
    assert not torch.equal(a.train[0][0], a.train[0][0])  # a fresh crop each time an image is served
    other = load_data(f"imagenet:{root}", seed=8)
    assert not torch.equal(other.train[0][0], crops_a[0])


def test_other_data_sets_keep_ten_percent_and_their_own_view(tmp_path):
    bundle = load_data("digits")
    assert bundle.sets.val_fraction == 0.1 and bundle.sets.train_eval is None
    assert bundle.val.dataset is bundle.sets.train and bundle.info["val_fraction"] == 0.1


def test_imagenet_missing_folders_name_the_download(tmp_path):
    with pytest.raises(DataError) as exc:
        build_datasets(f"imagenet:{tmp_path / 'nothere'}")
    line = exc.value.oneline()
    assert f"imagenet: no such folder {tmp_path / 'nothere'}" in line and "\n" not in line
    assert "image-net.org" in line and "ILSVRC2012_img_train.tar" in line and "--data imagenet:DIR" in line
    assert "sorted into wnid folders" in line
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"imagenet: no folder .*val/ \(download ILSVRC2012"):
        build_datasets(f"imagenet:{tmp_path}")
    with pytest.raises(DataError, match="needs a folder"):
        build_datasets("imagenet")


def test_imagenet_unsorted_val_and_foreign_classes_are_named(tmp_path):
    root = write_imagenet(tmp_path, val_per_class=(0, 0, 0))
    write_jpeg(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="holds 1 images but no wnid folders .*valprep.sh"):
        build_datasets(f"imagenet:{root}")
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    write_jpeg(root / "val" / WNIDS[0] / "a.JPEG")
    write_jpeg(root / "val" / "n99999999" / "b.JPEG")
    with pytest.raises(DataError, match="class folders that train/ lacks: n99999999"):
        build_datasets(f"imagenet:{root}")
    (root / "val" / "n99999999" / "b.JPEG").unlink()
    (root / "val" / "n99999999").rmdir()
    sets = build_datasets(f"imagenet:{root}")  # val may lack classes: labels stay train's indices
    assert sets.classes == WNIDS and len(sets.test) == 1 and sets.test[0][1] == 0
    (root / "train" / WNIDS[2] / "broken.JPEG").write_bytes(b"not a jpeg")
    broken = build_datasets(f"imagenet:{root}")
    with pytest.raises(DataError, match="cannot decode image .*broken.JPEG"):
        broken.train_eval[broken.train_eval.paths.index(str(root / "train" / WNIDS[2] / "broken.JPEG"))]
