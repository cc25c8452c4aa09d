"""hardctl.data.subsets: a smaller MNIST-layout copy that the data specs read like the original."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from hardctl.data import load_data
from hardctl.data.formats import read_idx

from hardctl.data.subsets import FILES, balanced_subset, write_idx


def make_idx_set(folder: Path, train_labels: np.ndarray, test_n: int = 6) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = len(train_labels)
    write_idx(folder / FILES[0], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(folder / FILES[1], train_labels.astype(np.uint8))
    write_idx(folder / FILES[2], rng.integers(0, 256, (test_n, 28, 28), dtype=np.uint8))
    write_idx(folder / FILES[3], np.arange(test_n, dtype=np.uint8) % 3)


def test_balanced_subset_takes_equal_shares_and_is_seeded():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 20)
    picks = balanced_subset(labels, 7, seed=3)
    assert np.bincount(labels[picks]).tolist() == [3, 2, 2]  # 7 = 3 + 2 + 2, the remainder to the first class
    assert picks.tolist() == sorted(picks.tolist()) and len(set(picks.tolist())) == 7
    assert picks.tolist() == balanced_subset(labels, 7, seed=3).tolist()
    assert picks.tolist() != balanced_subset(labels, 7, seed=4).tolist()


def test_the_copy_loads_as_a_data_spec_with_all_test_images(tmp_path):
    source, out = tmp_path / "full", tmp_path / "small"
    make_idx_set(source, np.arange(30) % 3)
    done = subprocess.run([sys.executable, "-m", "hardctl.data.subsets", str(source), str(out),
                           "--train", "12"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "12 of 30 training images ([4, 4, 4] per class)" in done.stdout
    full_images, small_images = read_idx(source / FILES[0]), read_idx(out / FILES[0])
    small_labels = read_idx(out / FILES[1])
    assert small_images.shape == (12, 28, 28) and np.bincount(small_labels).tolist() == [4, 4, 4]
    # every kept image is an original one with its own label
    keep = balanced_subset(np.arange(30) % 3, 12, seed=0)
    assert np.array_equal(small_images, full_images[keep]) and np.array_equal(small_labels, keep % 3)
    bundle = load_data(f"mnist:{out}")
    assert bundle.info["train"] + bundle.info["val"] == 12 and bundle.info["test"] == 6


def test_asking_for_more_than_there_is_is_a_usage_error(tmp_path):
    make_idx_set(tmp_path / "full", np.arange(9) % 3)
    done = subprocess.run([sys.executable, "-m", "hardctl.data.subsets", str(tmp_path / "full"),
                           str(tmp_path / "small"), "--train", "10"], capture_output=True, text=True)
    assert done.returncode == 2 and "--train must be in 1..9" in done.stderr
