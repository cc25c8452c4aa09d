"""Speed options compute what the plain run computes: --channels-last, --compile, the loader's persistent workers,
--decode (GPU JPEG decoding, its logic checked on the CPU) and HARD-Affine's cached base grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, Subset

from hardctl.config import RunConfig
from hardctl.data.baselines import AugmentedImages
from hardctl.data.folders import ImageFolderImages, imagenet_train_transform
from hardctl.data.gpudecode import EncodedImages, collate_encoded, encoded_view
from hardctl.distill import speed
from hardctl.distill.rundir import read_jsonl
from hardctl.distill.sampling import EpochSampler
from hardctl.errors import UsageError
from hardctl_builtins.augmentors import AffineAugmentor, affine_grid, base_grid

from conftest import one_line_error

TRAIN = ["train", "--model", "mnist_cnn", "--data", "digits", "--epochs", "1", "--amp", "off"]


@pytest.fixture
def no_dropout(monkeypatch):
    """mnist_cnn and mnist_mlp without dropout: a dropout mask is drawn in memory order, so channels_last draws another one."""
    import hardctl.zoo as zoo

    for cls in (zoo.MnistCNN, zoo.MnistMLP):
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _init=cls.__init__, **k: _init(self, *a, **{**k, "drop_rate": 0.0}))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "steps.jsonl")]


def close_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a), load_file(b)
    assert sorted(wa) == sorted(wb) and not any("_orig_mod" in k or k.startswith("module.") for k in wa)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-4, msg=key)


# ----------------------------------------------------------------------------------- HARD-Affine's grid
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [[5, 3, 7, 9], [2, 1, 16, 16], [3, 3, 224, 224]])
def test_cached_affine_grid_is_affine_grid(shape, align_corners):
    theta = (torch.eye(2, 3) + 0.2 * torch.randn(shape[0], 2, 3)).requires_grad_(True)
    ours, reference = affine_grid(theta, shape, align_corners), F.affine_grid(theta, shape, align_corners=align_corners)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)  # the same bmm: bit-equal on this CPU
    weights = torch.randn_like(reference)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), theta)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), theta)
    torch.testing.assert_close(ours_grad, reference_grad, atol=1e-5, rtol=1e-5)
    # built once per shape, device, dtype and align_corners
    assert base_grid(shape[2], shape[3], theta.device, theta.dtype, align_corners) is \
        base_grid(shape[2], shape[3], theta.device, theta.dtype, align_corners)


def test_affine_augmentor_output_unchanged_by_the_cache():
    torch.manual_seed(0)
    aug = AffineAugmentor(in_chans=3, img_size=(20, 24), sigma_init=0.1)
    images = torch.rand(6, 3, 20, 24)
    params = aug.sample_params(images)
    theta = params["theta"]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    reference = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(aug.apply_transform(images, params), reference, atol=1e-6, rtol=0)
    # in channels_last too (the trainer's input layout with --channels-last)
    torch.testing.assert_close(aug.apply_transform(speed.to_channels_last(images), params), reference, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------- --channels-last, --compile
def test_channels_last_trains_and_distils_like_the_default(cli, tmp_path, no_dropout):
    plain, last = tmp_path / "plain", tmp_path / "last"
    sgd = [*TRAIN, "--optimizer", "sgd", "--lr", "0.05"]  # Adam would amplify the rounding differences
    assert cli(*sgd, "--out", plain).code == 0
    assert cli(*sgd, "--channels-last", "--decode", "auto", "--out", last).code == 0
    saved = RunConfig.load(last)
    assert (saved.channels_last, saved.compile, saved.decode) == (True, False, "cpu")  # auto resolves to cpu
    assert RunConfig.load(plain).channels_last is False
    np.testing.assert_allclose(losses(last), losses(plain), rtol=1e-4, atol=1e-5)
    close_weights(last / "model.safetensors", plain / "model.safetensors", atol=1e-4)
    # HARD-Affine distillation from that run as teacher: the teacher, student and inputs all in channels_last
    hard = ["distill", "--teacher", plain, "--student", "mnist_cnn", "--data", "digits", "--epochs", "1", "-b", "64",
            "--aug-batch-size", "64", "--l-min", "0.95", "--l-max", "0.99", "--max-aug-steps", "3", "--amp", "off", "--optimizer", "sgd"]
    assert cli(*hard, "--out", tmp_path / "hard").code == 0
    assert cli(*hard, "--channels-last", "--out", tmp_path / "hard-last").code == 0
    phases = [(r.get("phase"), r.get("pool_size")) for r in read_jsonl(tmp_path / "hard" / "steps.jsonl")]
    assert ("augmentor", 1) in phases  # the run switched, so the augmentor steps ran in channels_last too
    assert phases == [(r.get("phase"), r.get("pool_size")) for r in read_jsonl(tmp_path / "hard-last" / "steps.jsonl")]
    np.testing.assert_allclose(losses(tmp_path / "hard-last"), losses(tmp_path / "hard"), rtol=1e-3, atol=1e-4)


def test_compile_keeps_plain_names_and_resumes_exactly(cli, tmp_path, monkeypatch):
    """The plumbing of --compile with torch.compile's ``eager`` backend (Dynamo traces, no C++ compiler): the
    compiled run equals the plain one, its files hold the plain model's names, and a resume continues exactly.
    test_compile_with_inductor runs the real compiler."""
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    compiled = [*TRAIN, "--epochs", "2", "--compile"]
    assert cli(*TRAIN, "--epochs", "2", "--out", tmp_path / "plain").code == 0
    assert cli(*compiled, "--out", tmp_path / "full").code == 0
    assert RunConfig.load(tmp_path / "full").compile is True
    close_weights(tmp_path / "full" / "model.safetensors", tmp_path / "plain" / "model.safetensors", atol=1e-6)
    state = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    assert not any("_orig_mod" in k for k in state["student"])

    from hardctl.distill.trainer import Trainer

    end_epoch = Trainer.end_epoch

    def stop_after_first(self, record):
        end_epoch(self, record)
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "end_epoch", stop_after_first)
    assert cli(*compiled, "--out", tmp_path / "cut").code != 0
    monkeypatch.setattr(Trainer, "end_epoch", end_epoch)
    assert cli("train", "--resume", tmp_path / "cut").code == 0
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    full, cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.slow
def test_compile_with_inductor(cli, tmp_path, no_dropout):
    """torch.compile's default backend (inductor; C++ on the CPU): a tiny run trains, saves plain names and
    agrees with the eager run up to float rounding (without dropout: inductor draws its own masks)."""
    sgd = [*TRAIN, "--optimizer", "sgd", "--lr", "0.05"]  # Adam would amplify the rounding differences
    assert cli(*sgd, "--out", tmp_path / "plain").code == 0
    assert cli(*sgd, "--compile", "--out", tmp_path / "compiled").code == 0
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "plain"), rtol=1e-3, atol=1e-4)
    close_weights(tmp_path / "compiled" / "model.safetensors", tmp_path / "plain" / "model.safetensors", atol=1e-3)


# ----------------------------------------------------------------------------------- --decode, --workers
def test_decode_options_are_checked(cli):
    one_line_error(cli(*TRAIN, "--decode", "gpu", "--device", "cpu"), 2,
                          "--decode gpu needs a CUDA device", "cpu")
    one_line_error(cli(*TRAIN, "--decode", "nvjpeg"), 2, "--decode must be one of cpu, gpu, auto")


def test_gpu_decoding_refuses_data_without_image_files():
    from hardctl.data import load_data

    data = load_data("digits", seed=0)
    with pytest.raises(UsageError, match="--decode gpu decodes the JPEG files"):
        encoded_view(data.train, "digits")


def jpeg_folder(root: Path, per_class: int = 6, size: tuple[int, int] = (20, 24)) -> Path:
    """``root/train/CLASS/*.jpg`` and ``root/val/CLASS/*.jpg``: smooth colour images (JPEG keeps them close)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                phase = rng.uniform(0, 6, 3)
                pixels = np.stack([127 + 100 * np.sin(xx / (4 + c) + yy / 7 + phase[c]) for c in range(3)], -1)
                side = size if i % 3 else (size[0] + 8, size[1] + 4)  # some images are resized to the first's size
                image = Image.fromarray(pixels.astype(np.uint8)).resize((side[1], side[0]))
                image.save(root / split / cls / f"{i}.jpg", quality=95)
    return root


def test_batch_decoder_matches_pil(tmp_path):
    """The decoder of --decode gpu, run on the CPU (decode_jpeg's device argument is the only difference): an
    imagefolder batch and ImageNet's seeded crops come out as PIL's path makes them, up to JPEG/resize rounding."""
    folder = jpeg_folder(tmp_path / "jpegs")
    files = ImageFolderImages(sorted(str(p) for p in (folder / "train").rglob("*.jpg")), [0] * 12, (20, 24), "RGB")
    view, decoder = encoded_view(Subset(files, range(12)), "imagefolder")
    encoded, _ = collate_encoded([view[i] for i in range(12)])
    decoded = decoder(encoded, torch.device("cpu"))
    reference = torch.stack([files[i][0] for i in range(12)])
    assert decoded.shape == reference.shape == (12, 3, 20, 24)
    assert (decoded - reference).abs().mean() < 0.01 and (decoded - reference).abs().max() < 0.2

    crops = AugmentedImages(files.with_transform(lambda img: img), imagenet_train_transform(16), name="crop", seed=3)
    view, decoder = encoded_view(Subset(crops, range(12)), "imagenet")
    items = [view[i] for i in range(12)]
    crops.set_epoch(0)  # view and crops share the generator: restart it for the PIL path
    view.set_epoch(0)
    encoded, _ = collate_encoded([view[i] for i in range(12)])
    crops.set_epoch(0)
    reference = torch.stack([crops[i][0] for i in range(12)])
    assert [s for _, s, _ in items] != [-1] * 12  # each image carries its crop seed
    decoded = decoder(encoded, torch.device("cpu"))
    assert decoded.shape == (12, 3, 16, 16)
    assert (decoded - reference).abs().mean() < 0.03  # the same crop boxes and flips, decoded and resized apart


class Numbered(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.tensor([float(index)]), index


def noisy(image: torch.Tensor) -> torch.Tensor:  # module level: DataLoader workers pickle the transform
    return image + torch.rand(1)


def test_persistent_workers_reseed_each_epoch(tmp_path):
    """With persistent workers an epoch's per-image random draws depend on (seed, epoch) only, as without them:
    a loader started at epoch 2 (a resumed run) serves what a loader that ran epochs 0 and 1 serves in epoch 2."""

    def epochs(first: int, last: int) -> list[torch.Tensor]:
        data = AugmentedImages(Numbered(), noisy, name="noisy", seed=5)
        sampler = EpochSampler(len(data), seed=1)
        loader = DataLoader(speed.EpochAware(data), batch_size=4, sampler=speed.EpochIndices(sampler),
                            **speed.loader_options(2, torch.device("cpu"), seed=1))
        assert loader.persistent_workers and loader.prefetch_factor == speed.PREFETCH_FACTOR
        served = []
        for epoch in range(first, last + 1):
            sampler.set_epoch(epoch)
            served.append(torch.cat([images for images, _ in loader]))
        return served

    uninterrupted, resumed = epochs(0, 2), epochs(2, 2)
    torch.testing.assert_close(resumed[0], uninterrupted[2], atol=0, rtol=0)
    assert not torch.equal(uninterrupted[1], uninterrupted[2])  # and each epoch draws anew


def test_workers_run_an_imagefolder_like_one_process(cli, tmp_path, no_dropout):
    """--workers 2 (persistent, own seed generator) on a JPEG folder: the same batches and losses as --workers 0
    (without dropout: a one-process loader draws its unused base seed from the global stream, workers do not)."""
    folder = jpeg_folder(tmp_path / "jpegs")
    args = ["train", "--model", "mnist_mlp", "--data", f"imagefolder:{folder}", "--epochs", "2", "-b", "4",
            "--amp", "off"]
    assert cli(*args, "--out", tmp_path / "w0").code == 0
    assert cli(*args, "--workers", "2", "--out", tmp_path / "w2").code == 0
    assert RunConfig.load(tmp_path / "w2").workers == 2
    assert losses(tmp_path / "w2") == losses(tmp_path / "w0")
    assert len(losses(tmp_path / "w0")) >= 4


RECIPE = """\
[recipe]
name = "tiny-ddp"
kind = "transfer"
description = "two arms, one epoch, under two ranks"
seeds = [0]

[defaults]
data = "digits"
epochs = 1
batch_size = 64
amp = "off"

[[arm]]
id = "teacher"
label = "Teacher only"
command = "train"
model = "mnist_mlp"

[[arm]]
id = "kd"
label = "KD"
command = "distill"
teacher = "@teacher"
model = "mnist_mlp"
augmentor = "none"
"""


@pytest.mark.slow
def test_recipe_under_two_ranks_writes_its_files_once(tmp_path):
    """`recipes run` under torchrun: every rank trains each run together; rank 0 alone holds the --out lock and
    writes results.json, results.md, recipe.toml and the runs' files."""
    from test_ddp import launch, ok

    recipe = tmp_path / "tiny-ddp.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    results = launch(tmp_path, 2, "recipes", "run", recipe, "--out", out, "--json", timeout=300)
    ok(results)
    assert json.loads(results[0][1])["recipe"] == "tiny-ddp" and results[1][1] == ""  # rank 0 prints the table
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert [n for n in written if not n.startswith(".")] == ["recipe.toml", "results.json", "results.md"]
    for arm in ("teacher", "kd"):
        run = out / arm / "seed-0"
        assert json.loads((run / "summary.json").read_text())["world_size"] == 2
        assert (run / "log.rank1.txt").is_file() and not any(p.name.endswith(".tmp") for p in run.iterdir())
