"""RQ-VAE: upstream reference vectors, the official key layout, config files, gradients and noise sites, the
frozen codebook, and the checkpoint loader that never runs code from the file."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from hardctl.errors import UsageError
from hardctl.vae.rqvae import RQVAE, RQVAE_PRESETS, RQVAEConfig, load_official_rqvae
from hardctl.vae.safepickle import load_state_dict_only

FIXTURES = Path(__file__).parent / "fixtures" / "vae"
TINY = FIXTURES / "rqvae-tiny.safetensors"


def _fixture_config() -> RQVAEConfig:
    meta = safe_open(str(TINY), "pt").metadata()
    return RQVAEConfig.from_dict({"ddconfig": json.loads(meta["ddconfig"]), "hparams": json.loads(meta["hparams"])})


def _tiny_loaded() -> tuple[RQVAE, dict[str, torch.Tensor]]:
    tensors = load_file(str(TINY))
    model = RQVAE(_fixture_config())
    model.load_state_dict({k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}, strict=True)
    return model.eval(), tensors


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_tiny_reproduces_upstream_outputs():
    model, t = _tiny_loaded()
    assert model.config == RQVAE_PRESETS["tiny"]
    with torch.no_grad():
        z_e = model.encode(t["input.x_nchw"])
        z_q, commitment, codes = model.quantize(z_e)
        recon = model.decode(z_q)
        from_codes = model.decode_codes(codes)
    _close(z_e, t["output.z_e_nhwc"])
    assert codes.dtype == torch.int64 and torch.equal(codes, t["output.codes"])
    _close(z_q, t["output.z_q_nhwc"])
    _close(commitment.reshape(1), t["output.commitment"])
    _close(recon, t["output.recon_nchw"])
    _close(from_codes, t["output.decode_code_nchw"])
    # reconstruct() is the same pass between [0, 1] and [-1, 1], clamped
    with torch.no_grad():
        y = model.reconstruct((t["input.x_nchw"] + 1) / 2)
    _close(y, (t["output.recon_nchw"].clamp(-1, 1) + 1) / 2)


def test_quantiser_searches_in_float32_under_autocast():
    model, t = _tiny_loaded()
    z_e = t["output.z_e_nhwc"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, _, codes = model.quantize(z_e.bfloat16())
    # z_e rounded to bf16 keeps the reference codes when the search runs in float32 (a bf16 search changes
    # 19 of the 384 here), and the straight-through output comes back in float32
    assert z_q.dtype == torch.float32 and torch.equal(codes, t["output.codes"])


def test_in256_has_exactly_the_official_keys_and_parameter_count():
    manifest = json.loads((FIXTURES / "rqvae-in256-keys.json").read_text())
    with torch.device("meta"):
        model = RQVAE(RQVAE_PRESETS["in256"])
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(state) == 398 and state == manifest
    assert sum(p.numel() for p in model.trainable_for_augmentor()) == 100_207_491
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 100_207_491
    # the shared codebook is one module at all four depths, and takes no gradients
    books = model.quantizer.codebooks
    assert all(b is books[0] for b in books) and not books[0].weight.requires_grad
    assert tuple(books[0].weight.shape) == (16385, 256)


def test_config_json_and_upstream_yaml(tmp_path):
    for cfg in RQVAE_PRESETS.values():
        assert RQVAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    in256 = RQVAE_PRESETS["in256"].to_dict()
    upstream = {"dataset": {"type": "imagenet"}, "arch": {
        "type": "rq-vae", "code_hier": 1, "checkpointing": True,
        "hparams": {**in256["hparams"], "ema": None, "use_padding_idx": False},
        "ddconfig": in256["ddconfig"]}}
    del upstream["arch"]["hparams"]["checkpointing"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(upstream))
    assert RQVAEConfig.from_yaml(path) == RQVAE_PRESETS["in256"]
    upstream["arch"]["type"] = "vq-gan"
    path.write_text(yaml.safe_dump(upstream))
    with pytest.raises(UsageError, match="arch.type is 'vq-gan', expected 'rq-vae'"):
        RQVAEConfig.from_yaml(path)
    upstream["arch"]["type"] = "rq-vae"
    del upstream["arch"]["ddconfig"]["double_z"]  # upstream's Encoder default is double_z=True
    path.write_text(yaml.safe_dump(upstream))
    with pytest.raises(UsageError, match="double_z must be false"):
        RQVAEConfig.from_yaml(path)


@pytest.mark.parametrize("change, message", [
    ({"ch": 48}, r"widths \[48, 96\]; each must be a multiple of 32"),
    ({"resolution": 18, "ch_mult": (1, 1, 2)}, r"resolution 18 must be divisible by 2\*\*\(len\(ch_mult\)-1\) = 4"),
    ({"latent_shape": (4, 4, 16)}, r"latent_shape \[4, 4, 16\] must be \[8, 8, 16\]"),
    ({"code_shape": (3, 3, 3)}, "h and w dividing the latent side 8"),
    ({"attn_resolutions": (4,)}, r"must be among the levels' resolutions \[16, 8\]"),
    ({"loss_type": "lpips"}, "loss_type must be 'mse' or 'l1'"),
])
def test_config_validation_is_one_line(change, message):
    with pytest.raises(UsageError, match=message) as err:
        dataclasses.replace(RQVAE_PRESETS["tiny"], **change)
    assert "\n" not in str(err.value)


def test_image_that_does_not_fit_is_refused():
    model = RQVAE(RQVAE_PRESETS["tiny"])
    with pytest.raises(UsageError, match="3-channel images with sides a multiple of 2 .* got 1×16×16"):
        model.reconstruct(torch.rand(1, 1, 16, 16))
    with pytest.raises(UsageError, match="got 3×15×16"):
        model.reconstruct(torch.rand(1, 3, 15, 16))
    with pytest.raises(UsageError, match="noise_site must be one of pre_quant, post_quant"):
        model.reconstruct(torch.rand(1, 3, 16, 16), noise_site="middle")


@pytest.mark.parametrize("site", ["pre_quant", "post_quant"])
def test_gradients_reach_encoder_decoder_and_noise_but_not_codebook(site):
    model, t = _tiny_loaded()
    model.train()
    x01 = (t["input.x_nchw"] + 1) / 2
    noise = torch.full((1, 1, 1, 16), 0.05, requires_grad=True)
    model.reconstruct(x01, noise=noise, noise_site=site).square().mean().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    for prefix in ("encoder.conv_in", "encoder.down.1.attn.0.q", "quant_conv", "post_quant_conv",
                   "decoder.up.0.block.1.conv2", "decoder.conv_out"):
        grad = model.get_parameter(prefix + ".weight").grad
        assert grad is not None and grad.abs().sum() > 0, prefix
    assert model.quantizer.codebooks[0].weight.grad is None
    names = {id(p) for p in model.trainable_for_augmentor()}
    assert id(model.quantizer.codebooks[0].weight) not in names
    assert len(names) == len([n for n, _ in model.named_parameters() if not n.startswith("quantizer.")])


def test_noise_sites_behave_differently():
    model, t = _tiny_loaded()
    x01 = (t["input.x_nchw"] + 1) / 2
    with torch.no_grad():
        z_e = model.encode(x01 * 2 - 1)
        base_codes = model.quantize(z_e)[2]
        base = model.reconstruct(x01)
        direction = torch.randn(z_e.shape, generator=torch.Generator().manual_seed(0))
        # post-quant: every nonzero noise moves the image, and the change shrinks with the noise
        post = [(model.reconstruct(x01, noise=s * direction, noise_site="post_quant") - base).abs().max()
                for s in (1e-2, 1e-3, 1e-4)]
        assert post[0] > post[1] > post[2] > 0 and post[2] < 1e-3
        # pre-quant: small noise keeps every code, so the output moves only by float rounding of the
        # straight-through sum (z + (q - z)), far less than the same noise after quantisation moves it
        assert torch.equal(model.quantize(z_e + 1e-4 * direction)[2], base_codes)
        pre = (model.reconstruct(x01, noise=1e-4 * direction, noise_site="pre_quant") - base).abs().max()
        assert pre < 1e-6 and pre < post[2] / 50
        # ...and large noise changes codes, hence the image
        assert not torch.equal(model.quantize(z_e + 1.0 * direction)[2], base_codes)
        assert (model.reconstruct(x01, noise=direction, noise_site="pre_quant") - base).abs().max() > 1e-3


def test_codebook_moves_only_through_explicit_ema_update():
    torch.manual_seed(0)
    model = RQVAE(RQVAE_PRESETS["tiny"]).train()
    book = model.quantizer.codebooks[0]
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    x = torch.rand(4, 3, 16, 16)
    model.reconstruct(x).mean().backward()
    out = model.loss(x)
    assert set(out) == {"loss", "recon", "commitment", "z_e", "codes"}
    assert all(torch.equal(before[k], v) for k, v in model.quantizer.state_dict().items())
    model.ema_update(out["z_e"], out["codes"])
    assert not torch.equal(book.weight, before["codebooks.0.weight"])
    assert torch.equal(book.weight[-1], torch.zeros(16))  # the padding row stays unused
    # restarts: no code is left with an EMA count below 1 after an update
    assert book.cluster_size_ema.min() >= 1.0 - 1e-6
    with pytest.raises(RuntimeError, match="call model.train"):
        model.eval().ema_update(out["z_e"], out["codes"])


def test_training_from_scratch_reduces_the_loss():
    torch.manual_seed(0)
    model = RQVAE(dataclasses.replace(RQVAE_PRESETS["tiny"], attn_resolutions=())).train()
    # smooth images (low-frequency) so a few steps can show progress
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4), size=16, mode="bilinear", align_corners=False)
    opt = torch.optim.Adam(model.trainable_for_augmentor(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = model.loss(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.ema_update(out["z_e"], out["codes"])
        losses.append(out["recon"].item())
    assert losses[-1] < 0.5 * losses[0], losses


# --- the checkpoint loader ---------------------------------------------------------------------------------

class FakeScheduler:
    """A custom class, as upstream's model.pt holds one; weights_only=True refuses it."""

    def __init__(self):
        self.last_epoch, self.warmup = 3, {"steps": 5}


class Payload:
    """Runs a command when unpickled without restrictions."""

    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


class Toucher:
    """Creates a file when its state is restored, i.e. when an unrestricted unpickler calls __setstate__."""

    def __setstate__(self, state):
        Path(state).write_text("x")


def _official_file(tmp_path: Path, extra: dict | None = None, with_config: bool = True) -> tuple[Path, RQVAE]:
    model, _ = _tiny_loaded()
    opt = torch.optim.Adam(model.trainable_for_augmentor(), lr=1e-4)
    model(torch.zeros(1, 3, 16, 16))[0].mean().backward()
    opt.step()
    ckpt = {"epoch": 4, "state_dict": model.state_dict(), "discriminator": {"w": torch.ones(3)},
            "optimizer": opt.state_dict(), "scheduler": FakeScheduler(), **(extra or {})}
    folder = tmp_path / "tiny" / "stage1"
    folder.mkdir(parents=True)
    torch.save(ckpt, folder / "model.pt")
    if with_config:
        cfg = RQVAE_PRESETS["tiny"].to_dict()
        arch = {"type": "rq-vae", "code_hier": 1, "hparams": cfg["hparams"], "ddconfig": cfg["ddconfig"]}
        (folder / "config.yaml").write_text(yaml.safe_dump({"arch": arch}))
    return folder / "model.pt", model


def test_safe_loader_reads_a_full_training_checkpoint(tmp_path):
    path, model = _official_file(tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # so the restricted unpickler is what reads it
        torch.load(path, weights_only=True)
    state = load_state_dict_only(path)
    expected = model.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in expected.items())
    assert load_state_dict_only(path, key="discriminator")["w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(UsageError, match=r"has no 'state_dict_ema' entry \(it has 'epoch', 'state_dict', "
                                         r"'discriminator', 'optimizer', 'scheduler'\)"):
        load_state_dict_only(path, key="state_dict_ema")
    # a plain state dict file goes through torch.load(weights_only=True)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": expected}, plain)
    assert torch.equal(load_state_dict_only(plain)["quant_conv.weight"], expected["quant_conv.weight"])


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "__setstate__"])
def test_malicious_pickle_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    call = {"os.system": (os.system, (f"touch {marker}",)),
            "builtins.exec": (exec, (f"open({str(marker)!r}, 'w').write('x')",)),
            "__setstate__": (Toucher, (), str(marker))}[kind]
    path, model = _official_file(tmp_path, extra={"scheduler": Payload(call)})
    state = load_state_dict_only(path)
    assert not marker.exists()
    assert torch.equal(state["decoder.conv_out.weight"], model.state_dict()["decoder.conv_out.weight"])
    # the payload is live: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_object_inside_the_state_dict_is_an_error_not_a_call(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(2), "x": Payload((os.system, (f"touch {marker}",)))}}, path)
    with pytest.raises(UsageError, match="entry 'x' is not a tensor"):
        load_state_dict_only(path)
    assert not marker.exists()


def test_safe_loader_rejects_files_that_are_not_torch_zips(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_state_dict_only(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(UsageError, match="is not a torch zip checkpoint"):
        load_state_dict_only(junk)


def test_load_official_rqvae_round_trip_and_precise_errors(tmp_path):
    path, model = _official_file(tmp_path)
    loaded = load_official_rqvae(path.parent)  # the folder works too; config.yaml beside it
    assert loaded.config == RQVAE_PRESETS["tiny"] and not loaded.training
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.reconstruct(x), model.eval().reconstruct(x))
    # without config.yaml the in256 preset is assumed, and the tiny file does not fit it
    (path.parent / "config.yaml").unlink()
    with pytest.raises(UsageError) as err:
        load_official_rqvae(path)
    line = str(err.value)
    assert "\n" not in line and "is not an RQ-VAE of this config (ch 128" in line
    assert "missing encoder.down.0.block.1.norm1.weight" in line and "shape of encoder.conv_in.weight" in line


def test_load_official_rqvae_names_a_wrong_key_and_unequal_codebooks(tmp_path):
    path, model = _official_file(tmp_path)
    state = model.state_dict()
    state["quant_conv.kernel"] = state.pop("quant_conv.weight")
    torch.save({"state_dict": state}, path)
    with pytest.raises(UsageError, match="missing quant_conv.weight; unexpected quant_conv.kernel$"):
        load_official_rqvae(path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["quantizer.codebooks.2.weight"][0, 0] += 1
    torch.save({"state_dict": state}, path)
    with pytest.raises(UsageError, match="quantizer.codebooks.2.weight differs from depth 0"):
        load_official_rqvae(path)
