"""Models adapt to the data: classes, channels and image size, CNNs and ViTs, end to end on disk layouts."""

from __future__ import annotations

import json
import pickle

import numpy as np
from PIL import Image


def write_cifar10(folder, n_train=40, n_test=20, seed=0):
    """The official python-batch layout: five data batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = folder / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    for name, n in [(f"data_batch_{i}", n_train // 5) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}  # python ints, as in the official files
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return folder.parent


def write_imagefolder(folder, classes=("cat", "dog", "fox"), per_class=6, size=(20, 20), channels=3):
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in classes:
            (folder / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / split / name / f"{i}.png")
    return folder


def test_resnet18_on_cifar10_layout(cli, tmp_path):
    root = write_cifar10(tmp_path / "data")
    result = cli("train", "--model", "resnet18", "--data", f"cifar10:{root}", "--epochs", "1", "--batch-size", "8",
                 "--out", tmp_path / "run", "--json")
    assert result.code == 0, result.err
    assert "resnet18: 10 classes, input 3x32x32, mean (0.485, 0.456, 0.406)" in result.err
    meta = (tmp_path / "run" / "config.toml").read_text()
    assert 'model = "resnet18"' in meta


def test_vit_student_distilled_from_cnn_on_an_image_folder(cli, tmp_path):
    root = write_imagefolder(tmp_path / "pets")
    spec = f"imagefolder:{root}"
    result = cli("train", "--model", "mnist_cnn", "--data", spec, "--epochs", "1", "--batch-size", "4",
                 "--out", tmp_path / "teacher")
    assert result.code == 0, result.err
    result = cli("distill", "--teacher", tmp_path / "teacher", "--student", "mnist_vit", "--data", spec,
                 "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "kd", "--json")
    assert result.code == 0, result.err
    assert "hard_vit_mnist: 3 classes, input 3x20x20" in result.err
    summary = json.loads(result.out)
    assert summary["student"]["arch"] == "hard_vit_mnist" and summary["teacher"]["arch"] == "hard_mnist_cnn"
    result = cli("eval", "--model", tmp_path / "kd", "--data", "digits")
    assert result.code == 2 and "predicts 3 classes but data 'digits' has 10" in result.err


def test_a_model_fed_the_wrong_image_size_gets_a_usage_error(cli, tmp_path):
    root = write_imagefolder(tmp_path / "grey", classes=tuple("0123456789"), per_class=1, size=(24, 24),
                             channels=1)
    result = cli("train", "--model", "mnist_mlp", "--data", "digits", "--epochs", "1", "--out", tmp_path / "mlp")
    assert result.code == 0, result.err
    result = cli("eval", "--model", tmp_path / "mlp", "--data", f"imagefolder:{root}")
    assert result.code == 2, result.err  # an MLP for 16x16 pixels cannot read 24x24 images
    assert "cannot take (1, 24, 24) images" in result.err and "Traceback" not in result.err
