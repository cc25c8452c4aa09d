"""Write a smaller copy of an MNIST-layout data set: N training images (a seeded, class-balanced draw), all test images.

Fashion-MNIST's 60,000 training images make each KD epoch cost ~75 s of teacher forwards on a 2-core CPU
(the paper's CNN teacher runs ~47 MMAC per 28×28 image), so the CPU-scale table in the README trains on
a subset; the test sets (centered and shifted) stay complete. The output is a folder of the four IDX
files that ``--data fashion-mnist:DIR`` (or ``mnist:DIR``) reads like the original:

    python -m hardctl.data.subsets /usr/share/datasets/fashion-mnist runs/data/fashion-mnist-10k --train 10000
    hardctl train --data fashion-mnist:runs/data/fashion-mnist-10k ...
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
from pathlib import Path

import numpy as np

from hardctl.data.formats import read_idx

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 IDX file (magic 0x0000080N, big-endian dimensions), gzipped like the originals."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(f"{path}.gz", "wb") as out:
        out.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices, as equal a number per class as possible, in a seeded random draw (kept sorted)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    quota = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    picks = np.concatenate([idx[:q] for idx, q in zip(per_class, quota)])
    return np.sort(picks)


__all__ = ["FILES", "balanced_subset", "main", "write_idx"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hardctl.data.subsets", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the four IDX files (plain or .gz)")
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--train", type=int, required=True, help="training images to keep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images, labels = read_idx(args.source / FILES[0]), read_idx(args.source / FILES[1])
    if not 0 < args.train <= len(labels):
        parser.error(f"--train must be in 1..{len(labels)}")
    keep = balanced_subset(labels, args.train, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_idx(args.out / FILES[0], images[keep])
    write_idx(args.out / FILES[1], labels[keep])
    for name in FILES[2:]:
        found = next(p for p in (args.source / name, args.source / f"{name}.gz") if p.is_file())
        shutil.copyfile(found, args.out / found.name)
    print(f"{args.out}: {len(keep)} of {len(labels)} training images "
          f"({np.bincount(labels[keep]).tolist()} per class), all test images")


if __name__ == "__main__":
    main()
