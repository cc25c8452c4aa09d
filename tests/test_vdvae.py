"""VDVAE: equivalence with upstream's reference vectors, the official layout, the loader and the
augmentor-facing passes (posterior-only gradients, differentiable reconstruction, grayscale)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hardctl.errors import UsageError
from hardctl.vae import VDVAE, VDVAE_PRESETS, VDVAEConfig, check_state_dict, load_official_vdvae
from hardctl.vae.dmol import dmol_channels, dmol_mode_image, dmol_nll

FIXTURES = Path(__file__).parent / "fixtures" / "vae"
TINY = FIXTURES / "vdvae-tiny.safetensors"


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ref():
    return load_file(str(TINY))


@pytest.fixture(scope="module")
def model(ref):
    m = VDVAE(VDVAE_PRESETS["tiny"])
    m.load_state_dict({k[len("state."):]: v for k, v in ref.items() if k.startswith("state.")}, strict=True)
    return m.eval()


def nchw(t):
    return t.permute(0, 3, 1, 2)


def test_tiny_preset_is_the_fixture_configuration():
    with safe_open(str(TINY), "pt") as f:
        meta = f.metadata()
    cfg = VDVAE_PRESETS["tiny"]
    for name in ("image_size", "image_channels", "width", "zdim", "num_mixtures", "no_bias_above"):
        assert getattr(cfg, name) == int(meta[name]), name
    assert cfg.bottleneck_multiple == float(meta["bottleneck_multiple"])
    assert (cfg.enc_blocks, cfg.dec_blocks, cfg.custom_width_str) == (meta["enc_blocks"], meta["dec_blocks"], "")
    assert (cfg.shift, cfg.scale) == (-120.63838, 1 / 64.16736)


def test_reproduces_every_upstream_output(ref, model):
    x = nchw(ref["input.x_uint8_nhwc"])
    close(model.normalize(model.pixels(x)), nchw(ref["input.x_encoder_nhwc"]))
    with torch.no_grad():
        acts = model.encode(nchw(ref["input.x_encoder_nhwc"]))
        assert sorted(acts) == [1, 4, 8, 16]
        for res in (1, 4, 8, 16):
            close(acts[res], ref[f"output.encoder_activation.res{res}"])
        state, stats = model.decode(acts, eps_scale=0.0)
        assert len(stats) == 9
        for i, s in enumerate(stats):
            close(s["z"], ref[f"output.layer{i:02d}.z"])
            close(s["kl"], ref[f"output.layer{i:02d}.kl"])
        close(state, ref["output.decoder_state_nchw"])
        close(model.dmol_params(state), ref["output.dmol_params_nhwc"])
        out = model.elbo(x, eps_scale=0.0)
        for key in ("elbo", "distortion", "rate"):
            close(out[key], ref[f"output.{key}"][0])
        # the same numbers from float input in [0, 1]
        close(model.elbo(x.float() / 255, eps_scale=0.0)["elbo"], ref["output.elbo"][0])
        first5 = model.manual_latents_state(acts, [s["z"] for s in stats[:5]])
        close(first5, ref["output.decoder_state_first5_latents_then_prior_mean"])
        assert not torch.allclose(first5, state, atol=1e-3)  # the prior mean really differs from q's


def test_official_cifar10_layout_and_size():
    manifest = json.loads((FIXTURES / "vdvae-cifar10-keys.json").read_text())
    with torch.device("meta"):
        m = VDVAE(VDVAE_PRESETS["cifar10"])
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == manifest
    assert list(m.state_dict()) == list(manifest)
    assert sum(p.numel() for p in m.parameters()) == 39_145_700
    assert len(m.decoder.dec_blocks) == 43
    assert sum(p.numel() for p in m.posterior_parameters(10)) == 8_019_264  # layers 10..42: all of res 16, 32
    assert m.decoder.out_net.out_conv.out_channels == 100 == dmol_channels(10, 3)


def _save(tmp_path, state, name="vdvae-model-ema.th"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_loader_round_trips_a_ddp_saved_model(tmp_path, ref, model):
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    state["module.decoder.bias_xs_2"] = state.pop("module.decoder.bias_xs.2")  # the fork's attribute name
    loaded = load_official_vdvae(_save(tmp_path, state), preset="tiny")
    assert not loaded.training
    assert all(p.device.type == "cpu" and p.requires_grad for p in loaded.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        close(loaded.elbo(nchw(ref["input.x_uint8_nhwc"]), eps_scale=0.0)["elbo"], ref["output.elbo"][0])


def test_loader_names_the_first_difference(tmp_path, model):
    state = dict(model.state_dict())
    del state["decoder.dec_blocks.8.enc.c1.weight"]
    state["decoder.dec_blocks.9.enc.c1.weight"] = torch.zeros(1)
    state["decoder.gain"] = torch.ones(1, 31, 1, 1)
    path = _save(tmp_path, state)
    with pytest.raises(UsageError) as err:
        load_official_vdvae(path, preset="tiny")
    assert str(err.value) == (
        f"{path} is not a tiny VDVAE: missing decoder.dec_blocks.8.enc.c1.weight; "
        "unexpected decoder.dec_blocks.9.enc.c1.weight; shape of decoder.gain is (1, 31, 1, 1) not (1, 32, 1, 1) "
        "(the file has width 32, zdim 4, 9 encoder / 10 decoder blocks)")
    assert "\n" not in str(err.value)


def test_loader_refuses_the_tiny_file_as_cifar10(tmp_path, model):
    path = _save(tmp_path, model.state_dict())
    with pytest.raises(UsageError, match=r"is not a cifar10 VDVAE: missing encoder\.enc_blocks\.9\.c1\.weight, "
                                         r"encoder\.enc_blocks\.9\.c1\.bias \(\+\d+ more\); shape of"):
        load_official_vdvae(path)


def test_loader_bad_files(tmp_path, model):
    with pytest.raises(UsageError, match="no VDVAE weights file at .*openaipublic"):
        load_official_vdvae(tmp_path / "absent.th")
    with pytest.raises(UsageError, match="is not a VDVAE state dict .* holds a list"):
        load_official_vdvae(_save(tmp_path, [torch.zeros(1)]), preset="tiny")
    (tmp_path / "junk.th").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="is not a PyTorch weights file that loads without running code"):
        load_official_vdvae(tmp_path / "junk.th", preset="tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["decoder.bias"][0, 3] = math.nan
    with pytest.raises(UsageError, match="non-finite values in decoder.bias"):
        load_official_vdvae(_save(tmp_path, state), preset="tiny")
    state["decoder.bias"] = torch.zeros(1, 32, 1, 1, dtype=torch.int64)
    with pytest.raises(UsageError, match="holds decoder.bias as torch.int64"):
        load_official_vdvae(_save(tmp_path, state), preset="tiny")
    with pytest.raises(UsageError, match="no VDVAE configuration 'cifar1'; did you mean 'cifar10'"):
        load_official_vdvae(tmp_path / "absent.th", preset="cifar1")


def test_check_state_dict_is_generic():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    check_state_dict(net, {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(3)})
    with pytest.raises(UsageError, match=r"^x.pt is not a Sequential: shape of 0.bias is \(4,\) not \(3,\)$"):
        check_state_dict(net, {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4)}, source="x.pt")


def test_gradients_reach_only_the_posterior_heads_from_start(model):
    m = VDVAE(VDVAE_PRESETS["tiny"])
    m.load_state_dict(model.state_dict())
    trainable = m.set_trainable_posterior(6)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names == {f"decoder.dec_blocks.{i}.enc.c{k}.{w}" for i in (6, 7, 8) for k in (1, 2, 3, 4)
                     for w in ("weight", "bias")}
    assert len(trainable) == 24
    gen = torch.Generator().manual_seed(0)
    m.reconstruct(torch.rand(2, 3, 16, 16, generator=gen), generator=gen).square().sum().backward()
    for name, p in m.named_parameters():
        if name in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    with pytest.raises(UsageError, match=r"posterior start 9 is outside this VDVAE's 9 latent layers \(0..8\)"):
        m.set_trainable_posterior(9)


def test_reconstruct_is_the_mode_image_in_unit_range(ref, model):
    x01 = nchw(ref["input.x_uint8_nhwc"]).float() / 255
    with torch.no_grad():
        out = model.reconstruct(x01, eps_scale=0.0)
        assert out.shape == x01.shape and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        expected = (dmol_mode_image(ref["output.dmol_params_nhwc"], 3) + 1) / 2
        close(out, nchw(expected))
        a = model.reconstruct(x01, generator=torch.Generator().manual_seed(3))
        b = model.reconstruct(x01, generator=torch.Generator().manual_seed(3))
        c = model.reconstruct(x01, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(UsageError, match=r"this VDVAE takes 3×16×16 images \(NCHW\); got 1×28×28"):
        model.reconstruct(torch.rand(2, 1, 28, 28))


def test_mode_image_coupling_by_hand():
    # one pixel, 2 components; component 1 wins; means (r, g, b) = (0.5, 0.1, -0.2), coeffs atanh'd
    k = 2
    coeff = torch.tensor([0.5, -0.25, 1.0])
    params = torch.zeros(1, 1, 1, dmol_channels(k, 3))
    params[..., :k] = torch.tensor([0.0, 2.0])
    for c, mean in enumerate((0.5, 0.1, -0.2)):
        base = k + c * 3 * k
        params[..., base + 1] = mean
        params[..., base + 2 * k + 1] = torch.atanh(coeff[c])
    img = dmol_mode_image(params, 3)[0, 0, 0]
    r = 0.5
    g = 0.1 + 0.5 * r
    b = -0.2 - 0.25 * r + 1.0 * g
    close(img, torch.tensor([r, g, b]))


def test_grayscale_dmol_nll_by_hand():
    # one component, one channel: the NLL of a mid-range pixel is −log of its bin's logistic mass
    params = torch.tensor([[[[0.0, 0.1, math.log(0.05)]]]])
    x = torch.tensor([[[[0.2]]]])
    sig = torch.sigmoid
    mass = sig(torch.tensor((0.2 - 0.1 + 1 / 255) / 0.05)) - sig(torch.tensor((0.2 - 0.1 - 1 / 255) / 0.05))
    close(dmol_nll(params, x), -torch.log(mass).reshape(1))


def test_one_channel_config_builds_and_runs():
    cfg = VDVAEConfig(**{**VDVAE_PRESETS["tiny"].to_dict(), "image_channels": 1, "num_mixtures": 4})
    torch.manual_seed(0)
    m = VDVAE(cfg)
    assert m.encoder.in_conv.in_channels == 1
    assert m.decoder.out_net.out_conv.out_channels == 12  # 4 mixtures × (logit, mean, log-scale)
    x = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    out = m.elbo(x)
    assert all(torch.isfinite(v) for v in out.values())
    torch.testing.assert_close(out["elbo"], out["distortion"] + out["rate"])
    rec = m.reconstruct(x.float() / 255)
    assert rec.shape == (3, 1, 16, 16) and 0.0 <= rec.min() and rec.max() <= 1.0


def test_autocast_keeps_latents_and_dmol_in_float32(model):
    x01 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        acts = model.encode(model.normalize(model.pixels(x01)))
        state, stats = model.decode(acts, eps_scale=1.0)
        assert all(s["z"].dtype == torch.float32 and s["kl"].dtype == torch.float32 for s in stats)
        assert model.dmol_params(state).dtype == torch.float32
        rec = model.reconstruct(x01, eps_scale=0.0)
    assert rec.dtype == torch.float32
    with torch.no_grad():
        full = model.reconstruct(x01, eps_scale=0.0)
    assert (rec - full).abs().max() < 0.1  # bf16 convolutions, same picture


def test_presets_round_trip_through_json():
    for name, cfg in VDVAE_PRESETS.items():
        assert VDVAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
    small = VDVAE_PRESETS["small"]
    with torch.device("meta"):
        m = VDVAE(small)
    assert (small.image_size, small.image_channels, len(m.decoder.dec_blocks)) == (16, 1, 16)
    assert m.decoder.dec_blocks[10].base == 16 and m.decoder.dec_blocks[9].base == 8  # start 10 = full res
    assert sum(p.numel() for p in m.parameters()) == 439_343


@pytest.mark.parametrize("change, message", [
    ({"custom_width_str": "32:64"}, "VDVAE custom_width_str must be empty (one width everywhere), not '32:64'"),
    ({"enc_blocks": "16x2,16d2,8x2,8d2,4x1"}, "dec_blocks uses resolution 1 but the encoder produces only "
                                                  "[4, 8, 16]"),
    ({"dec_blocks": "1x1,4m1,4x1,8m3,8x2,16m8,16x2"}, "dec_blocks token 8m3 mixes in 3, which needs an earlier, "
                                                      "lower-resolution decoder layer"),
    ({"dec_blocks": "1x1,4m1,4x1,8m4,8x2"}, "dec_blocks tops out at 8, not the image size 16"),
    ({"width": 3}, "VDVAE width·bottleneck_multiple = 3·0.25 rounds to 0; it must be at least 1"),
    ({"enc_blocks": "16x2,16q2"}, "enc_blocks token '16q2' is not RxN, RdK, RmS or R (e.g. '16x2,16d2,8x1')"),
    ({"enc_blocks": "16x2,8x1"}, "enc_blocks has a block at 8 where the resolution is 16 (image 16, pooled by "
                                 "each RdK)"),
    ({"image_channels": 2}, "VDVAE image_channels must be 1 or 3, not 2"),
    ({"colour": 1}, "unknown VDVAE setting 'colour'"),
])
def test_config_errors_are_one_line(change, message):
    with pytest.raises(UsageError) as err:
        VDVAEConfig.from_dict({**VDVAE_PRESETS["tiny"].to_dict(), **change})
    assert str(err.value) == message


def test_mixin_ratio_must_be_an_integer():
    with pytest.raises(UsageError, match=r"^dec_blocks token 6m4: 6/4 is not an integer$"):
        VDVAEConfig(image_size=12, image_channels=3, width=8, zdim=2, bottleneck_multiple=0.5, num_mixtures=1,
                    enc_blocks="12x1,12d3,4x1", dec_blocks="4x1,6m4,12m6", no_bias_above=64)
