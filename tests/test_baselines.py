"""Baseline augmentations (hardctl.data.baselines): shapes, ranges, shift bounds, seeding, bad names,
lists joined with '+', random erasing, and the float path of the v2 auto-augment policies."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from hardctl.data.baselines import (TRANSFORM_NAMES, AugmentedImages, augmented_train, build_transform,
                                     parse_augment, standard_padding)
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
    assert TRANSFORM_NAMES == ("none", "random-affine", "shift", "standard", "trivialaugment", "augmix",
                               "randaugment")


def test_none_returns_the_dataset_itself():
    base = Squares()
    assert augmented_train(base, "none", in_chans=1, img_size=(16, 16), shift_px=2, seed=0) is base


@pytest.mark.parametrize("name", ["random-affine", "shift", "standard", "trivialaugment", "augmix", "randaugment",
                                  "standard+trivialaugment"])
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


@pytest.mark.parametrize("name", ["random-affine", "shift", "standard", "trivialaugment", "augmix",
                                  "shift+randaugment"])
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
    assert "known: none, random-affine, shift, standard, trivialaugment, augmix, randaugment" in message
    assert "\n" not in message


def test_a_list_applies_its_parts_in_order():
    assert parse_augment(" Standard + trivialaugment ") == ["standard", "trivialaugment"]
    assert parse_augment("none") == [] and parse_augment("none+shift") == ["shift"]
    base = Squares(n=30)
    listed = augmented_train(base, "shift+random-affine", in_chans=1, img_size=(16, 16), shift_px=2, seed=None)
    assert listed.name == "shift+random-affine"
    shift = build_transform("shift", in_chans=1, img_size=(16, 16), shift_px=2)
    affine = build_transform("random-affine", in_chans=1, img_size=(16, 16), shift_px=2)
    for i in range(len(base)):
        torch.manual_seed(i)
        got = listed[i][0]
        torch.manual_seed(i)
        assert torch.equal(got, affine(shift(base[i][0])))  # shift first, then the affine on its result


def test_an_unknown_part_of_a_list_is_named():
    with pytest.raises(UsageError) as exc:
        parse_augment("standard+trivalaugment")
    message = exc.value.oneline()
    assert "unknown augmentation 'trivalaugment' in --augment 'standard+trivalaugment'" in message
    assert "did you mean 'trivialaugment'" in message and "join several with '+'" in message
    with pytest.raises(UsageError, match="unknown augmentation ''"):
        parse_augment("standard+")


@pytest.mark.parametrize("name", ["trivialaugment", "augmix", "randaugment"])
def test_auto_augment_policies_take_float_images_as_they_are(name):
    """The v2 policies accept float 1-channel images, pick the same ops as on uint8, agree up to rounding."""
    transform = build_transform(name, in_chans=1, img_size=(16, 16), shift_px=None)
    diffs = []
    for seed in range(40):
        as_uint8 = (torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 255).round().to(torch.uint8)
        torch.manual_seed(seed)
        from_float = transform(as_uint8.float() / 255)
        torch.manual_seed(seed)
        from_uint8 = transform(as_uint8).float() / 255
        assert from_float.dtype == torch.float32 and 0 <= float(from_float.min()) <= float(from_float.max()) <= 1
        diffs.append(float((from_float - from_uint8).abs().max()))
    diffs = torch.tensor(diffs)
    assert float(diffs.median()) <= 2 / 255  # same ops, same strengths: rounding only
    assert float(diffs.max()) < 0.1


def test_random_erasing_comes_after_the_list_and_zeroes_a_rectangle():
    transform = build_transform("shift", in_chans=1, img_size=(16, 16), shift_px=2, random_erasing=1.0)
    assert isinstance(transform, v2.Compose) and isinstance(transform.transforms[-1], v2.RandomErasing)
    assert transform.transforms[-1].p == 1.0 and transform.transforms[-1].value == [0.0]
    alone = build_transform("none", in_chans=1, img_size=(16, 16), shift_px=None, random_erasing=0.25)
    assert isinstance(alone, v2.RandomErasing) and alone.p == 0.25
    assert build_transform("none", in_chans=1, img_size=(16, 16), shift_px=None, random_erasing=0.0) is None
    ones = torch.ones(3, 32, 32)
    erase = build_transform("none", in_chans=3, img_size=(32, 32), shift_px=None, random_erasing=1.0)
    torch.manual_seed(0)
    for _ in range(20):
        zeros = erase(ones) == 0
        assert torch.equal(zeros[0], zeros[1]) and torch.equal(zeros[0], zeros[2])  # all channels alike
        ys, xs = torch.nonzero(zeros[0], as_tuple=True)
        box = (int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1))
        assert int(zeros[0].sum()) == box[0] * box[1]  # one filled rectangle
        assert 0.02 * 32 * 32 - 32 <= box[0] * box[1] <= 0.33 * 32 * 32 + 32  # v2's scale (0.02, 0.33), rounded
    data = augmented_train(Squares(), "none", in_chans=1, img_size=(16, 16), random_erasing=0.5, seed=0)
    assert isinstance(data, AugmentedImages) and data.name == "random-erasing(0.5)"
    with pytest.raises(UsageError, match="--random-erasing must be a probability"):
        build_transform("none", in_chans=1, img_size=(16, 16), shift_px=None, random_erasing=1.5)


def test_set_epoch_makes_each_epoch_depend_on_seed_and_epoch_only():
    base = Squares()
    first = augmented_train(base, "trivialaugment", in_chans=1, img_size=(16, 16), seed=7)
    again = augmented_train(base, "trivialaugment", in_chans=1, img_size=(16, 16), seed=7)
    serve = lambda data: torch.stack([data[i][0] for i in range(len(base))])
    first.set_epoch(0)
    epoch0 = serve(first)
    first.set_epoch(1)
    epoch1 = serve(first)
    again.set_epoch(1)  # a resumed run starts at epoch 1 without having served epoch 0
    assert torch.equal(serve(again), epoch1) and not torch.equal(epoch0, epoch1)
    first.set_epoch(0)
    assert torch.equal(serve(first), epoch0)


def test_wrong_image_shape_is_a_data_error():
    with pytest.raises(DataError, match="expects 3×16×16 image tensors, got \\(1, 16, 16\\)"):
        augmented_train(Squares(), "shift", in_chans=3, img_size=(16, 16), shift_px=2, seed=0)


def test_a_run_with_augment_trains_and_records_it(tmp_path):
    from hardctl.config import RunConfig
    from hardctl.distill.run import run

    summary = run(RunConfig(model="mnist_mlp", epochs=1, batch_size=64, augment="shift"), tmp_path / "shift")
    assert 0 <= summary["student"]["shifted_acc"] <= 100
    assert RunConfig.load(tmp_path / "shift").augment == "shift"
