"""HARD-Mix (``--augmentor mix``): the patch-wise learned mix, its contract, training and its visualize grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hardctl_builtins.hardmix import MixAugmentor, suggest_patch_size
from PIL import Image

from hardctl.augment import Augmentor, AugmentorPool, build_augmentor
from hardctl.augment.pool import pool_files, read_entry
from hardctl.config import RunConfig
from hardctl.errors import UsageError
from hardctl.visualize import GRID_META_KEY, assemble_grid, render
from hardctl.distill.build import resolve_config


def mix(in_chans=1, size=(16, 16), **options) -> MixAugmentor:
    aug = build_augmentor("mix", {k: str(v) for k, v in options.items()}, in_chans=in_chans, img_size=size)
    assert isinstance(aug, MixAugmentor)
    return aug


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ---------------------------------------------------------------------------------------------- the module
def test_starts_near_the_identity_within_the_bias_bound():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 16, 16)
    aug = mix()
    params = aug.sample_params(x)
    with torch.no_grad():
        out = aug.apply_transform(x, params)
        own = aug.sources(x, params)["weight"][:, 0]
    # G = 2: w_own = sigmoid(4 + Δ), Δ the (tiny) score difference from the 0.01-std projection; allow |Δ| ≤ 0.5
    assert float(own.min()) >= sigmoid(4.0 - 0.5) and float(own.max()) <= sigmoid(4.0 + 0.5)
    assert float(own.mean()) == pytest.approx(sigmoid(4.0), abs=2e-3)  # 0.982
    # x̃ − x = w_partner · (partner − x) with pixels in [0, 1]: at most 1 − w_own everywhere
    gap = float((out - x).abs().max())
    assert 0 < gap <= 1 - sigmoid(4.0 - 0.5)
    with torch.no_grad():
        assert float((mix(identity_bias=8).apply_transform(x, params) - x).abs().max()) <= 1 - sigmoid(7.5)


def test_hand_computed_mix_of_two_images():
    # 2 images of 1×2×4, patches 2×2 (two patches), D = 1, projection = the patch's sum, μ = 1, ε = 0, b = (0.5, 0)
    aug = MixAugmentor(in_chans=1, img_size=(2, 4), patch_size=2, proj_dim=1, identity_bias=0.5, sigma_init=1.0)
    with torch.no_grad():
        aug.proj.weight.fill_(1.0)
        aug.mu.fill_(1.0)
    a = torch.tensor([[0.1, 0.2, 0.9, 0.9], [0.0, 0.1, 0.8, 1.0]])  # left patch sum 0.4, right 3.6
    b = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.1, 0.1]])  # left patch sum 2.0, right 0.2
    x = torch.stack([a, b])[:, None]
    params = {"eps": torch.zeros(2, 1)}
    with torch.no_grad():
        out = aug.apply_transform(x, params)

    def own_weight(own_sum, other_sum):  # softmax over (own score + 0.5, partner score)
        return 1.0 / (1.0 + math.exp(other_sum - (own_sum + 0.5)))

    expected = torch.empty_like(x)
    for i, (me, other) in enumerate([(a, b), (b, a)]):
        for cols in (slice(0, 2), slice(2, 4)):
            w = own_weight(float(me[:, cols].sum()), float(other[:, cols].sum()))
            expected[i, 0, :, cols] = w * me[:, cols] + (1 - w) * other[:, cols]
    assert torch.allclose(out, expected, atol=1e-6)
    # e.g. image 0's left patch: w = 1 / (1 + e^(2.0 − 0.9)) = 0.2497
    assert float(out[0, 0, 0, 0]) == pytest.approx(0.2497 * 0.1 + 0.7503 * 0.5, abs=1e-4)
    weights = aug.sources(x, params)["weight"].detach()
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    w00, w01 = own_weight(0.4, 2.0), own_weight(3.6, 0.2)
    assert float(weights[0, 0]) == pytest.approx((w00 + w01) / 2, abs=1e-6)


def test_group_rolls_the_batch_and_weights_sum_to_one():
    torch.manual_seed(1)
    aug = mix(group_size=3, identity_bias=0.0, sigma_init=2.0)
    with torch.no_grad():
        aug.proj.weight.normal_()
    x = torch.rand(5, 1, 16, 16)
    params = aug.sample_params(x)
    weights, _ = aug.weights(x, params)
    assert weights.shape == (5, 3, 16)  # 16 patches of 4×4
    assert torch.allclose(weights.sum(dim=1), torch.ones(5, 16), atol=1e-6)
    assert float(weights.detach().std()) > 0.05  # image-dependent: not one weight for all patches
    report = aug.sources(x, params)
    assert report["index"].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 1]]
    assert report["index"].dtype == torch.long
    assert torch.allclose(report["weight"].sum(dim=1), torch.ones(5), atol=1e-6)


def test_constant_weights_give_the_exact_pixelwise_blend_with_the_next_image():
    # own score log 3 vs the partner's 0 and a zero projection: 75/25 in every patch, so the unfold/fold
    # round trip must give exactly the pixelwise blend with the next image of the batch
    for chans, size in ((1, (16, 16)), (3, (8, 12))):
        aug = mix(in_chans=chans, size=size, identity_bias=math.log(3.0))
        with torch.no_grad():
            aug.proj.weight.zero_()
        x = torch.rand(3, chans, *size)
        assert torch.allclose(aug(x), 0.75 * x + 0.25 * x.roll(-1, dims=0), atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    aug = mix(in_chans=3, size=(8, 8), patch_size=2)
    x = torch.rand(4, 3, 8, 8)
    target = torch.rand_like(x)
    ((aug(x) - target) ** 2).sum().backward()
    for name in ("mu", "log_sigma", "proj.weight", "bias"):
        grad = dict(aug.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().max()) > 0, name
    assert set(aug.snapshot()) == {"mu", "log_sigma", "proj.weight", "bias"}


@pytest.mark.parametrize("chans, size, patch", [(1, (16, 16), 4), (3, (12, 8), 4), (3, (6, 6), 1)])
def test_one_and_three_channels_keep_shape_and_range(chans, size, patch):
    torch.manual_seed(3)
    aug = mix(in_chans=chans, size=size, patch_size=patch, identity_bias=-1.0, temperature=0.1)
    with torch.no_grad():
        aug.proj.weight.normal_(std=3.0)  # sharp, extreme weights
    x = torch.rand(4, chans, *size)
    x[0] = 1.0
    x[1] = 0.0
    out = aug(x).detach()
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_batch_of_one_and_batch_smaller_than_the_group():
    aug = mix(group_size=4, identity_bias=0.0)
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(aug(x), x)
    report = aug.sources(x, aug.sample_params(x))
    assert report["index"].tolist() == [[0]] and report["weight"].tolist() == [[1.0]]
    pair = torch.rand(2, 1, 16, 16)
    report = aug.sources(pair, aug.sample_params(pair))
    assert report["index"].tolist() == [[0, 1], [1, 0]]  # G' = B = 2


@pytest.mark.skipif(not hasattr(torch, "autocast"), reason="no autocast")
def test_float32_under_autocast():
    aug = mix()
    x = torch.rand(4, 1, 16, 16)
    params = aug.sample_params(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug.apply_transform(x, params)
    assert out.dtype == torch.float32
    assert torch.allclose(out, aug.apply_transform(x, params), atol=1e-6)


@pytest.mark.parametrize("options, size, fragment", [
    ({"patch_size": 5}, (16, 16), ("mix option patch_size=5 does not divide the image size 16×16 "
                                   "(choose a divisor of both sides, e.g. --aug-opt patch_size=4)")),
    ({"patch_size": 15}, (224, 224), ("patch_size=15 does not divide the image size 224×224 (choose a divisor "
                                      "of both sides, e.g. --aug-opt patch_size=14)")),
    ({"patch_size": 4}, (16, 6), "e.g. --aug-opt patch_size=2)"),
    ({"group_size": 1}, (16, 16), "augmentor 'mix' option group_size=1 is out of range (it must be >= 2)"),
    ({"temperature": 0}, (16, 16), "option temperature=0.0 is out of range (it must be > 0.0)"),
])
def test_bad_options_are_one_line_usage_errors(options, size, fragment):
    with pytest.raises(UsageError) as err:
        mix(size=size, **options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_suggested_patch_size_divides_both_sides():
    assert suggest_patch_size(5, 16, 16) == 4
    assert suggest_patch_size(7, 32, 48) == 8
    assert suggest_patch_size(4, 15, 17) == 1


def test_base_augmentors_report_no_sources():
    affine = build_augmentor("affine", {}, in_chans=1, img_size=(8, 8))
    x = torch.rand(2, 1, 8, 8)
    assert Augmentor.sources is type(affine).sources
    assert affine.sources(x, affine.sample_params(x)) is None
    assert affine.sources_with(affine.snapshot(), x) is None
    composed = build_augmentor("affine+noise", {}, in_chans=1, img_size=(8, 8))
    assert composed.sources_with(composed.snapshot(), x) is None  # parts that mix nothing report nothing


def test_plugins_lists_mix_with_its_options(cli):
    result = cli("plugins", "--augmentors", "--json")
    assert result.code == 0, result.err
    row = {r["name"]: r for r in json.loads(result.out)}["mix"]
    assert row["mode"] == "joint" and row["plugin"] == "builtin_augmentors"
    assert [o["name"] for o in row["options"]] == ["group_size", "patch_size", "proj_dim", "temperature",
                                                   "identity_bias", "sigma_init"]
    assert row["options"][0]["default"] == 2 and row["options"][0]["min"] == 2
    assert row["hard_defaults"]["lr"] == MixAugmentor.hard_defaults.lr
    table = cli("plugins", "--augmentors")
    assert "mix" in table.out and "group_size" in table.out


# ---------------------------------------------------------------------------------------------- visualize
def make_mix_run(run: Path, moves: list[dict]) -> Path:
    """A HARD-Mix run directory as the trainer leaves it (config, pool, steps), without training."""
    run.mkdir(parents=True)
    cfg = resolve_config(RunConfig(command="distill", data="digits", model="hard_mnist_mlp", teacher="teacher-run",
                    augmentor="mix", aug_options={}))
    cfg.save(run)
    aug = build_augmentor("mix", {}, in_chans=1, img_size=(16, 16))
    pool = AugmentorPool(aug, run / "augmentors")
    pool.add(reason="start", iteration=0, step=0, epoch=1, augmentor="mix")
    for k, move in enumerate(moves, start=1):
        with torch.no_grad():
            for name, value in move.items():
                dict(aug.named_parameters())[name].copy_(torch.as_tensor(value))
        pool.add(reason="epoch", iteration=10 * k, step=10 * k, epoch=k, augmentor="mix")
    (run / "steps.jsonl").write_text("".join(json.dumps({"iter": i, "step": i, "epoch": 1, "phase": "joint",
                                                         "aug_error": 0.1, "pool_size": 1}) + "\n"
                                             for i in range(1, 11)))
    return run


def test_visualize_shows_the_sources_and_the_weights_of_each_mix(tmp_path):
    run = make_mix_run(tmp_path / "mix", [{"bias": [0.0, 0.0]}, {"bias": [-math.log(3.0), 0.0]}])
    torch.manual_seed(0)
    paths = render(run, rows=3, snapshots=3)
    with Image.open(paths["grid"]) as image:
        layout = json.loads(image.text[GRID_META_KEY])
        rgb = image.convert("RGB")
    assert layout["columns"] == 5 and layout["rows"] == 3  # source 1, source 2, then three snapshots
    assert layout["titles"][0] == "source 1\n(the image)" and layout["titles"][1] == "source 2\n(next row)"
    assert layout["titles"][2].startswith("#0 start") and layout["titles"][2].endswith("mean 98/2 %")
    assert layout["titles"][3].endswith("mean 50/50 %")  # bias (0, 0) and a near-flat projection
    assert layout["titles"][4].endswith("mean 25/75 %")  # the partner's score is log 3 higher
    assert layout["captions"][:2] == [None, None] and layout["captions"][2] == ["98/2 %"] * 3
    assert layout["captions"][4] == ["25/75 %"] * 3
    # the sources: row r's partner is row r + 1 (the last row's is row 0)
    pictures = [[torch.from_numpy(np.asarray(rgb.crop(tuple(b)), dtype=np.int16)) for b in column]
                for column in layout["boxes"]]
    assert torch.equal(pictures[1][0], pictures[0][1]) and torch.equal(pictures[1][2], pictures[0][0])
    assert not torch.equal(pictures[0][0], pictures[1][0])
    # the first snapshot is almost the image, the 50/50 one is in between
    assert float((pictures[2][0] - pictures[0][0]).abs().max()) <= 255 * 0.03
    assert float((pictures[3][0] - pictures[0][0]).abs().max()) > 30


def test_assemble_grid_captions_add_height_and_are_checked():
    columns = [torch.rand(2, 1, 16, 16)] * 2
    plain = assemble_grid(columns, ["a", "b"])
    captioned = assemble_grid(columns, ["a", "b"], captions=[None, ["x 1", "x 2"]])
    assert captioned.image.height > plain.image.height and captioned.layout()["captions"][1] == ["x 1", "x 2"]
    assert "captions" not in plain.layout()
    with pytest.raises(ValueError, match="one line per row"):
        assemble_grid(columns, ["a", "b"], captions=[None, ["only one"]])


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_distill_with_mix_trains_jointly_and_draws_the_grid(cli, digits_teacher, tmp_path):
    out = tmp_path / "run"
    result = cli("distill", "--teacher", digits_teacher, "--data", "digits", "--epochs", "2", "--batch-size", "128",
                 "--augmentor", "mix", "--aug-opt", "patch_size=8", "--out", out)
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hard"]["mode"] == "joint" and summary["hard"]["switches"] == 0
    assert summary["hard"]["pool_size"] == 3  # start + one per epoch
    assert summary["hard"]["options"]["patch_size"] == 8
    grid = out / "augmentations.png"
    assert grid.is_file() and Path(summary["hard"]["figures"]["grid"]) == grid
    with Image.open(grid) as image:
        layout = json.loads(image.text[GRID_META_KEY])
    assert layout["titles"][:2] == ["source 1\n(the image)", "source 2\n(next row)"] and layout["columns"] == 5
    first, last = (read_entry(p)[0] for p in (pool_files(out)[0], pool_files(out)[-1]))
    assert not torch.equal(first["proj.weight"], last["proj.weight"])  # the augmentor trained with the student
    assert not torch.equal(first["bias"], last["bias"])


def test_distill_rejects_a_patch_size_that_does_not_divide_the_images(cli, digits_teacher, tmp_path):
    result = cli("distill", "--teacher", digits_teacher, "--data", "digits", "--epochs", "1", "--augmentor", "mix",
                 "--aug-opt", "patch_size=3", "--out", tmp_path / "run")
    assert result.code == 2
    lines = [line for line in result.err.strip().splitlines() if line]
    assert len(lines) == 1 and "mix option patch_size=3 does not divide the image size 16×16" in lines[0]
    assert "--aug-opt patch_size=2)" in lines[0]  # 2 and 4 are as close to 3: the smaller
