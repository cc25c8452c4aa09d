"""Baseline augmentations (hardctl.data.transforms): shapes, ranges, shift bounds, seeding, bad names."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from hardctl.data.transforms import (TRANSFORM_NAMES, AugmentedImages, augmented_train, build_transform,
                                     standard_padding)
from hardctl.errors import DataError, UsageError


class Squares(Dataset):
    """Deterministic 1×16×16 images: a bright 6×6 square in the middle, label = index % 10."""

    def __init__(self, n: int = 40, chans: int = 1, size: int = 16):
        self.n, self.chans, self.size = n, chans, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        image = torch.zeros(self.chans, self.size, self.size)
        lo = self.size // 2 - 3
        image[:, lo:lo + 6, lo:lo + 6] = 0.5 + 0.5 * (index % 3) / 2
        return image, index % 10


def bounding_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(image.sum(0) > 0, as_tuple=True)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def test_transform_names_cover_the_paper_controls():
    assert TRANSFORM_NAMES == ("none", "random-affine", "shift", "standard")


def test_none_returns_the_dataset_itself():
    base = Squares()
    assert augmented_train(base, "none", in_chans=1, img_size=(16, 16), shift_px=2, seed=0) is base


@pytest.mark.parametrize("name", ["random-affine", "shift", "standard"])
@pytest.mark.parametrize("chans", [1, 3])
def test_shape_dtype_range_and_labels_are_kept(name, chans):
    base = Squares(chans=chans)
    data = augmented_train(base, name, in_chans=chans, img_size=(16, 16), shift_px=2, seed=0)
    assert isinstance(data, AugmentedImages) and len(data) == len(base)
    changed = 0
    for i in range(len(base)):
        image, label = data[i]
        assert image.shape == (chans, 16, 16) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert label == base[i][1]
        changed += not torch.equal(image, base[i][0])
    assert changed >= len(base) // 2  # it really augments


def test_shift_moves_content_by_at_most_shift_px_covering_the_shifted_test_set():
    base = Squares(n=400)
    y0, _, x0, _ = bounding_box(base[0][0])
    for px in (1, 2, 3):
        data = augmented_train(base, "shift", in_chans=1, img_size=(16, 16), shift_px=px, seed=1)
        moves = set()
        for i in range(len(base)):
            image = data[i][0]
            y, _, x, _ = bounding_box(image)
            dy, dx = y - y0, x - x0
            assert abs(dx) <= px and abs(dy) <= px
            assert image.sum() == pytest.approx(base[i][0].sum())  # the square stays whole on the canvas
            moves.add((dx, dy))
        corners = {(px, px), (px, -px), (-px, px), (-px, -px)}  # the shifted test set's displacements
        assert corners <= moves and (0, 0) in moves
        assert len(moves) == (2 * px + 1) ** 2  # every shift in range occurs


def test_shift_default_follows_the_shifted_test_set():
    transform = build_transform("shift", in_chans=1, img_size=(28, 28), shift_px=None)
    assert transform.shift_px == 3  # MNIST-C's 3 px on 28 px
    assert build_transform("shift", in_chans=1, img_size=(16, 16), shift_px=None).shift_px == 2


def test_random_affine_keeps_a_centred_digit_visible():
    base = Squares(n=200)
    data = augmented_train(base, "random-affine", in_chans=1, img_size=(16, 16), shift_px=2, seed=3)
    for i in range(len(base)):
        image = data[i][0]
        top, bottom, left, right = bounding_box(image)
        assert top > 0 and left > 0 and bottom < 15 and right < 15  # nothing pushed off the canvas
        assert image.sum() > 0.5 * base[i][0].sum()


def test_standard_pads_in_proportion_to_the_image():
    assert standard_padding((32, 32)) == 4 and standard_padding((28, 28)) == 4
    assert standard_padding((16, 16)) == 2 and standard_padding((8, 8)) == 1


@pytest.mark.parametrize("name", ["random-affine", "shift", "standard"])
def test_same_seed_same_images_and_epochs_differ(name):
    base = Squares()
    first = augmented_train(base, name, in_chans=1, img_size=(16, 16), shift_px=2, seed=7)
    again = augmented_train(base, name, in_chans=1, img_size=(16, 16), shift_px=2, seed=7)
    other = augmented_train(base, name, in_chans=1, img_size=(16, 16), shift_px=2, seed=8)
    state = torch.get_rng_state()
    epoch1 = torch.stack([first[i][0] for i in range(len(base))])
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    torch.manual_seed(1234)  # ... and does not matter
    assert torch.equal(epoch1, torch.stack([again[i][0] for i in range(len(base))]))
    assert not torch.equal(epoch1, torch.stack([other[i][0] for i in range(len(base))]))
    epoch2 = torch.stack([first[i][0] for i in range(len(base))])
    assert not torch.equal(epoch1, epoch2)  # a new draw each time an image is served


def test_unseeded_uses_the_global_rng():
    base = Squares()
    data = augmented_train(base, "shift", in_chans=1, img_size=(16, 16), shift_px=2, seed=None)
    torch.manual_seed(5)
    a = torch.stack([data[i][0] for i in range(len(base))])
    torch.manual_seed(5)
    b = torch.stack([data[i][0] for i in range(len(base))])
    assert torch.equal(a, b)


def test_unknown_name_lists_the_names_with_a_suggestion():
    with pytest.raises(UsageError) as exc:
        augmented_train(Squares(), "random_afine", in_chans=1, img_size=(16, 16), shift_px=2, seed=0)
    message = exc.value.oneline()
    assert "unknown augmentation 'random_afine'" in message
    assert "did you mean 'random-affine'?" in message
    assert "known: none, random-affine, shift, standard" in message
    assert "\n" not in message


def test_wrong_image_shape_is_a_data_error():
    with pytest.raises(DataError, match="expects 3×16×16 image tensors, got \\(1, 16, 16\\)"):
        augmented_train(Squares(), "shift", in_chans=3, img_size=(16, 16), shift_px=2, seed=0)


def test_a_run_with_augment_trains_and_records_it(tmp_path):
    from hardctl.config import RunConfig
    from hardctl.distill.trainer import run

    summary = run(RunConfig(model="mnist_mlp", epochs=1, batch_size=64, augment="shift"), tmp_path / "shift")
    assert 0 <= summary["student"]["shifted_acc"] <= 100
    assert RunConfig.load(tmp_path / "shift").augment == "shift"
