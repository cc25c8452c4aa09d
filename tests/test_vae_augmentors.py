"""HARD-VAE augmentors ``vdvae`` and ``rqvae`` (plugins/hardctl_builtins/vaeaug.py) on tiny random-weight VAEs.

The VAEs are the ``tiny`` presets (1-channel variants for the 16×16 digits), saved as hardctl VAE files;
their reconstructions are noise, which is all these tests need: what is trained, what a pool entry holds and
replays, the one-line errors, and that ``hardctl distill`` / ``visualize`` run end to end.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import one_line_error
from hardctl.augment import build_augmentor, check_output, resolved_options
from hardctl.augment.pool import pool_files, read_entry
from hardctl.errors import TrainingError, UsageError
from hardctl.vae.files import load_vae, save_vae
from hardctl.vae.rqvae import RQVAE, RQVAE_PRESETS
from hardctl.vae.vdvae import VDVAE, VDVAE_PRESETS
from hardctl.visualize import GRID_META_KEY
from hardctl_builtins.vaeaug import VAE_HARD_DEFAULTS, RQVAEAugmentor, VDVAEAugmentor

SIZE = (16, 16)
VDVAE_START = 4  # the tiny VDVAE has 9 latent layers (0..8); layers 4.. are its 8×8 and 16×16 ones


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae_files(tmp_path_factory) -> dict[str, Path]:
    """Seeded random tiny VAEs: ``vdvae``/``rqvae`` take 1×16×16 (the digits), ``*3`` the presets' RGB."""
    root = tmp_path_factory.mktemp("vaes")
    torch.manual_seed(0)
    configs = {"vdvae": ("vdvae", dataclasses.replace(VDVAE_PRESETS["tiny"], image_channels=1)),
               "vdvae3": ("vdvae", VDVAE_PRESETS["tiny"]),
               "rqvae": ("rqvae", dataclasses.replace(RQVAE_PRESETS["tiny"], in_channels=1, out_ch=1)),
               "rqvae3": ("rqvae", RQVAE_PRESETS["tiny"])}
    files = {}
    for name, (arch, cfg) in configs.items():
        model = VDVAE(cfg) if arch == "vdvae" else RQVAE(cfg)
        files[name] = save_vae(model, root / f"{name}.safetensors", arch=arch, config=cfg.to_dict(), source="test")
    return files


def vdvae(files, **options) -> VDVAEAugmentor:
    return build_augmentor("vdvae", {"weights": str(files["vdvae"]), "start": VDVAE_START, **options},
                           in_chans=1, img_size=SIZE)


def rqvae(files, **options) -> RQVAEAugmentor:
    return build_augmentor("rqvae", {"weights": str(files["rqvae"]), **options}, in_chans=1, img_size=SIZE)


def trainable(module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, *SIZE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- registry
def test_both_are_listed_with_their_options_and_the_papers_vae_settings(cli):
    result = cli("plugins", "--augmentors", "--json")
    assert result.code == 0, result.err
    rows = {r["name"]: r for r in json.loads(result.out)}
    for name, options in (("vdvae", {"weights": "", "start": 10, "eps_scale": 1.0}),
                          ("rqvae", {"weights": "", "noise_site": "pre_quant", "noise_init": 0.01})):
        row = rows[name]
        assert row["plugin"] == "builtin_augmentors" and row["mode"] == "phases"
        assert {o["name"]: o["default"] for o in row["options"]} == options
        assert row["hard_defaults"] == {"l_min": 0.10, "l_max": 0.60, "patience": 5, "lambda_s": 1.0,
                                        "lambda_t": 1.0, "lr": 1e-4, "batch_size": 160}


# ------------------------------------------------------------------------------------------- what trains
def test_vdvae_trains_only_the_posterior_heads_from_start_and_stays_in_eval_mode(vae_files):
    aug = vdvae(vae_files)
    heads = re.compile(rf"vae\.decoder\.dec_blocks\.(\d+)\.enc\.c[1-4]\.(weight|bias)")
    names = trainable(aug)
    assert names and all(heads.fullmatch(n) and int(heads.fullmatch(n).group(1)) >= VDVAE_START for n in names)
    assert len(names) == (9 - VDVAE_START) * 8  # every head of layers 4..8: 4 convs, weight and bias
    aug.train()
    assert aug.training and not any(m.training for m in aug.vae.modules())  # the trainer's .train() is ignored
    aug(images()).mean().backward()
    for name, p in aug.named_parameters():
        if name in names:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert p.grad is None, name


def test_rqvae_trains_everything_but_the_codebook_plus_the_noise_vector(vae_files):
    aug = rqvae(vae_files)
    names = trainable(aug)
    everything = {n for n, _ in aug.named_parameters()}
    assert names == {n for n in everything if not n.startswith("vae.quantizer.")}
    assert {"noise_mean", "noise_log_std", "vae.encoder.conv_in.weight", "vae.quant_conv.weight",
            "vae.post_quant_conv.weight", "vae.decoder.conv_out.weight"} <= names
    book = aug.vae.quantizer.codebooks[0]
    before = {k: v.clone() for k, v in book.state_dict().items()}
    aug.train()
    assert not any(m.training for m in aug.vae.modules())
    optimizer = torch.optim.Adam([p for p in aug.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        aug(images()).mean().backward()
        for name, p in aug.named_parameters():
            if name in names:
                assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        optimizer.step()
    assert float(aug.noise_log_std.grad.abs().sum()) > 0 and float(aug.noise_mean.grad.abs().sum()) > 0
    for key, value in book.state_dict().items():  # never EMA-updated, never restarted
        assert torch.equal(value, before[key]), key


# ------------------------------------------------------------------------------------------- pool entries
@pytest.mark.parametrize("make", [vdvae, rqvae], ids=["vdvae", "rqvae"])
def test_an_old_snapshot_replays_its_output_after_further_training(vae_files, make):
    aug = make(vae_files)
    first = aug.snapshot()
    assert set(first) == trainable(aug)  # a pool entry holds exactly the trained tensors
    x = images()
    torch.manual_seed(7)
    before = aug.forward_with(first, x)
    optimizer = torch.optim.Adam([p for p in aug.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        (-aug(x).var()).backward()
        optimizer.step()
    torch.manual_seed(7)
    assert torch.equal(aug.forward_with(first, x), before)
    torch.manual_seed(7)
    assert float((aug.forward_with(aug.snapshot(), x) - before).abs().max()) > 1e-3  # it did train


def test_vdvae_entry_zero_is_the_vaes_reconstruction_with_the_same_noise(vae_files):
    aug = vdvae(vae_files)
    vae, meta = load_vae(vae_files["vdvae"])
    assert meta["arch"] == "vdvae"
    x = images()
    torch.manual_seed(3)
    params = aug.sample_params(x)
    out = aug.forward_with(aug.snapshot(), x, params)
    ref = vae.reconstruct(x, 1.0, torch.Generator().manual_seed(int(params["seed"])))
    assert torch.allclose(out, ref, atol=1e-6)
    with torch.no_grad():
        other = aug.apply_transform(x, aug.sample_params(x))
    assert float((other - out).abs().max()) > 1e-4  # another draw is another posterior sample
    still = vdvae(vae_files, eps_scale=0.0)  # eps_scale 0: the posterior mean, the same for every draw
    assert torch.equal(still(x), still(x))


def test_rqvae_entry_zero_is_the_vaes_reconstruction_with_the_initial_noise(vae_files):
    aug = rqvae(vae_files, noise_init=0.05)
    vae, _ = load_vae(vae_files["rqvae"])
    x = images()
    torch.manual_seed(3)
    params = aug.sample_params(x)
    assert params["n"].shape == (6, 8, 8, 16)  # per image and latent position, channels last like z_e
    codebook = vae.quantizer.codebooks[0].weight[:-1]
    scale = codebook.pow(2).mean(0).sqrt()  # the codebook's per-channel RMS
    assert torch.allclose(aug.latent_scale, scale)
    for site in ("pre_quant", "post_quant"):
        aug.noise_site = site
        out = aug.forward_with(aug.snapshot(), x, params)
        ref = vae.reconstruct(x, noise=scale * 0.05 * params["n"], noise_site=site)
        assert torch.allclose(out, ref, atol=1e-5), site


@pytest.mark.parametrize("make", [vdvae, rqvae], ids=["vdvae", "rqvae"])
def test_images_in_zero_one_of_the_input_shape_in_float32_under_autocast(vae_files, make):
    aug = make(vae_files)
    x = images(5)
    out = aug(x).detach()
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = aug(x)
    assert low.dtype == torch.float32 and low.shape == x.shape and bool(torch.isfinite(low).all())


@pytest.mark.parametrize("name", ["vdvae+affine", "rqvae+affine"])
def test_vae_plus_affine_warps_the_reconstruction_and_keeps_the_vae_defaults(vae_files, name):
    options = {"weights": str(vae_files[name.split("+")[0]]), **({"start": VDVAE_START} if "vdvae" in name else {})}
    aug = build_augmentor(name, options, in_chans=1, img_size=SIZE)
    assert aug.hard_defaults == VAE_HARD_DEFAULTS and aug.teacher_term
    snap = aug.snapshot()
    assert {"parts.1.mean", "parts.1.log_std"} <= set(snap)
    assert {k[len("parts.0."):] for k in snap if k.startswith("parts.0.")} == trainable(aug.parts[0])
    x = images()
    torch.manual_seed(5)
    out = aug.forward_with(snap, x)
    torch.manual_seed(5)
    vae_only = aug.parts[0].forward_with(aug.parts[0].snapshot(), x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    # the warp starts near the identity (σ 0.01): the composition is the VAE's output, slightly moved
    assert float((out - vae_only).abs().mean()) < 0.05


def test_a_non_finite_vae_output_is_named_by_the_engines_check(vae_files):
    aug = vdvae(vae_files)
    with torch.no_grad():
        next(p for p in aug.parameters() if p.requires_grad).fill_(float("nan"))
    x = images()
    with pytest.raises(TrainingError, match=r"augmentor 'vdvae' \(plugin builtin_augmentors\) returned non-finite"):
        check_output(aug, x, aug(x))


def test_the_weights_path_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolved_options("vdvae", {"weights": "vae.safetensors"})["weights"] == str(tmp_path / "vae.safetensors")
    assert resolved_options("rqvae+affine", {"rqvae.weights": "~/v"})["rqvae.weights"] == str(Path.home() / "v")
    assert resolved_options("vdvae", {})["weights"] == ""  # left to the constructor's one-line error


def test_bad_options_are_usage_errors_at_construction(vae_files):
    with pytest.raises(UsageError, match=r"this VAE has 9 latent layers, so start must be in 0\.\.8"):
        build_augmentor("vdvae", {"weights": str(vae_files["vdvae"])}, in_chans=1, img_size=SIZE)  # default 10
    with pytest.raises(UsageError, match=r"takes 1-channel images with sides a multiple of 2"):
        build_augmentor("rqvae", {"weights": str(vae_files["rqvae"])}, in_chans=1, img_size=(15, 15))


# ------------------------------------------------------------------------------------------- the CLI
BAD = [
    ("vdvae", [], ["--augmentor vdvae needs a VAE: --aug-opt weights=PATH", "hardctl vae train", "hardctl vae convert"]),
    ("vdvae", ["weights={missing}"], ["--augmentor vdvae: no VAE file at", "hardctl vae train"]),
    ("vdvae", ["weights={vdvae3}"], ["--augmentor vdvae: this VAE takes 3×16×16 images; the data has 1×16×16",
                                     "hardctl vae train"]),
    ("vdvae", ["weights={vdvae}", "start=9"], ["start=9 is out of range", "0..8"]),
    ("vdvae", ["weights={vdvae}", "start=-1"], ["start=-1 is out of range"]),
    ("vdvae", ["weights={vdvae}", "eps_scale=-0.5"], ["eps_scale=-0.5 is out of range"]),
    ("vdvae", ["weights={rqvae}"], ["holds a rqvae VAE, not a vdvae", "--augmentor rqvae"]),
    ("rqvae", ["weights={rqvae}", "noise_site=middle"], ["noise_site='middle' is not one of pre_quant, post_quant"]),
    ("rqvae", ["weights={rqvae}", "noise_init=0"], ["noise_init=0.0 is out of range"]),
    ("rqvae", ["weights={rqvae3}"], ["--augmentor rqvae: this VAE takes 3-channel images", "the data has 1×16×16"]),
    ("rqvae+affine", ["weights={vdvae}"], ["holds a vdvae VAE, not a rqvae"]),
]


@pytest.mark.parametrize("name,opts,fragments", BAD, ids=[f"{n}-{'-'.join(o) or 'none'}" for n, o, _ in BAD])
def test_bad_vae_input_is_one_line_exit_2_and_writes_nothing(cli, digits_teacher, vae_files, tmp_path, name, opts,
                                                             fragments):
    paths = {**{k: str(v) for k, v in vae_files.items()}, "missing": str(tmp_path / "nope.safetensors")}
    out = tmp_path / "run"
    args = ["distill", "--teacher", digits_teacher, "--data", "digits", "--epochs", "1", "--augmentor", name,
            "--out", out]
    for opt in opts:
        args += ["--aug-opt", opt.format(**paths)]
    one_line_error(cli(*args), 2, *fragments)
    assert not out.exists()


def distill(cli, teacher, out: Path, augmentor: str, *options: str, extra=()) -> dict:
    args = ["distill", "--teacher", teacher, "--data", "digits", "--epochs", "1", "--augmentor", augmentor,
            # the random VAEs' outputs fool the student ~98 % of the time: l_min 0.99 and patience 1 force switches
            "--l-min", "0.99", "--l-max", "0.995", "--switch-patience", "1", "--max-aug-steps", "2",
            *extra, "--out", out]
    for opt in options:
        args += ["--aug-opt", opt]
    result = cli(*args)
    assert result.code == 0, result.err
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vdvae", "rqvae+affine"])
def test_distill_switches_saves_only_trained_tensors_and_visualize_draws_them(cli, digits_teacher, vae_files,
                                                                             tmp_path, monkeypatch, name):
    vae_file = vae_files[name.split("+")[0]]
    monkeypatch.chdir(vae_file.parent)  # a relative weights path, recorded absolute for visualize below
    weights = f"weights={vae_file.name}"
    options = [weights, f"start={VDVAE_START}"] if name == "vdvae" else [weights]
    out = tmp_path / "run"
    summary = distill(cli, digits_teacher, out, name, *options)
    hard = summary["hard"]
    assert hard["augmentor"] == name and hard["mode"] == "phases"
    assert hard["switches"] >= 1 and hard["aug_steps"] >= 1 and hard["pool_size"] >= 2
    config = (out / "config.toml").read_text()
    assert re.search(r"^aug_lr = 0\.0001$", config, re.M) and re.search(r"^aug_batch_size = 160$", config, re.M)

    assert re.search(rf'^"?(rqvae\.)?weights"? = "{re.escape(str(vae_file))}"$', config, re.M)
    fresh = build_augmentor(name, dict(o.split("=", 1) for o in options), in_chans=1, img_size=SIZE)
    files = pool_files(out)
    assert len(files) == hard["pool_size"]
    expected = set(fresh.snapshot())
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()) == expected  # the posterior heads / all but the codebook, nothing frozen
    first, info = read_entry(files[0])
    assert info["reason"] == "identity"
    assert all(torch.equal(first[k], v) for k, v in fresh.snapshot().items())  # entry 0: the pretrained VAE
    last, _ = read_entry(files[-1])
    assert any(not torch.equal(first[k], last[k]) for k in first)

    shown = tmp_path / "figures"
    monkeypatch.chdir(tmp_path)
    result = cli("visualize", out, "--out", shown, "--rows", "3", "--snapshots", "3")
    assert result.code == 0, result.err
    with Image.open(shown / "augmentations.png") as image:
        layout = json.loads(image.text[GRID_META_KEY])
    assert layout["columns"] == 4 and layout["rows"] == 3  # the original, then entries 0 (the reconstruction) .. last
    assert layout["titles"][0].startswith("original") and layout["titles"][1].startswith("#0 identity")


def test_a_diverging_vae_fine_tune_stops_naming_the_plugin(cli, digits_teacher, vae_files, tmp_path):
    out = tmp_path / "run"
    args = ["distill", "--teacher", digits_teacher, "--data", "digits", "--epochs", "1", "--augmentor", "vdvae",
            "--aug-opt", f"weights={vae_files['vdvae']}", "--aug-opt", f"start={VDVAE_START}", "--l-min", "0.99",
            "--l-max", "0.995", "--switch-patience", "1", "--max-aug-steps", "2", "--aug-lr", "1e30", "--out", out]
    result = cli(*args)  # Adam's first step moves the posterior heads by ~1e30: the latents overflow to NaN
    assert result.code == 1 and "Traceback" not in result.err
    last = result.err.strip().splitlines()[-1]  # after the run's progress log
    assert last.startswith("hardctl: error: augmentor 'vdvae' (plugin builtin_augmentors) returned non-finite")
    assert "check the augmentor's parameters and --aug-lr" in last
