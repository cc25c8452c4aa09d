"""The hardctl VAE file format and ``hardctl vae convert / train / eval``: tiny configurations, fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hardctl.errors import UsageError
from hardctl.vae.archs import build_vae, preset_names, resolve_config
from hardctl.vae.files import METADATA_KEY, load_vae, save_vae
from hardctl.vae.rqvae import RQVAE
from tests.conftest import one_line_error


def _tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_vae(arch, "tiny").eval()
    with torch.no_grad():  # upstream zero-initialises some layers; random values make the round trip telling
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _config(model) -> dict:
    return (model.cfg if hasattr(model, "cfg") else model.config).to_dict()


def _same(model, loaded, x) -> None:
    """Identical weights and the same outputs (to float rounding: a buffer read from a file may take another
    SIMD path through a convolution than one allocated by torch)."""
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.allclose(_recon(model, x), _recon(loaded, x), rtol=0, atol=1e-6)


def _recon(model, x):
    with torch.no_grad():
        if isinstance(model, RQVAE):
            return model.reconstruct(x)
        return model.reconstruct(x, eps_scale=1.0, generator=torch.Generator().manual_seed(3))


# --- the file format -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["vdvae", "rqvae"])
def test_save_load_round_trip_and_metadata(tmp_path, arch):
    model = _tiny(arch)
    path = save_vae(model, tmp_path / "v.safetensors", arch=arch, config=_config(model), source="a test",
                    extra={"note": 1})
    loaded, meta = load_vae(path)
    x = torch.rand(2, 3, 16, 16)
    assert not loaded.training
    _same(model, loaded, x)
    assert {k: v for k, v in meta.items() if k not in ("config", "aliases", "normalisation", "hardctl_version", "path")} == \
        {"format": 1, "arch": arch, "image_size": 16, "channels": 3, "source": "a test", "extra": {"note": 1}}
    assert meta["config"] == _config(model)
    assert ("shift" in meta["normalisation"]) if arch == "vdvae" else ("[-1, 1]" in meta["normalisation"])
    with safe_open(str(path), framework="pt") as fh:
        stored = set(fh.keys())
        assert json.loads(fh.metadata()[METADATA_KEY])["arch"] == arch
    if arch == "rqvae":  # the shared codebook is stored once; its other depths are aliases
        assert "quantizer.codebooks.0.weight" in stored and "quantizer.codebooks.1.weight" not in stored
        assert meta["aliases"]["quantizer.codebooks.2.embed_ema"] == "quantizer.codebooks.0.embed_ema"
        assert loaded.quantizer.codebooks[0] is loaded.quantizer.codebooks[2]
        assert not loaded.quantizer.codebooks[0].weight.requires_grad
    else:
        assert meta["aliases"] == {} and len(stored) == len(model.state_dict())


def test_load_vae_errors_are_one_line(tmp_path):
    def error(path) -> str:
        with pytest.raises(UsageError) as exc:
            load_vae(path)
        assert exc.value.exit_code == 2 and "\n" not in str(exc.value)
        return str(exc.value)

    assert "no VAE file at" in error(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    assert "is not a safetensors file" in error(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    assert error(tmp_path / "plain.safetensors").endswith(
        "is not a hardctl VAE file; convert an official checkpoint with `hardctl vae convert`")
    # weights of one size under the metadata of another: the strict check names the first differences
    model = _tiny("vdvae")
    path = save_vae(model, tmp_path / "v.safetensors", arch="vdvae", config=_config(model), source="t")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[METADATA_KEY])
    meta["config"]["zdim"] = 5
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={METADATA_KEY: json.dumps(meta)})
    message = error(tmp_path / "bad.safetensors")
    assert "is not the vdvae its metadata describes: shape of decoder.dec_blocks.0.enc.c4.weight is (8, 8, 1, 1) " \
           "not (10, 8, 1, 1)" in message


def test_small_picks_its_size_variant_and_the_data_channels():
    cfg = resolve_config("vdvae", "small", 28, 1)
    assert (cfg.image_size, cfg.image_channels, cfg.dec_blocks) == (28, 1, "1x1,7m1,7x3,14m7,14x4,28m14,28x5")
    assert len(cfg.dec_layers) == 16 and cfg.dec_layers[10] == (28, 14)  # posterior start 10: first full-res layer
    rq = resolve_config("rqvae", "small", 16, 3)
    assert (rq.resolution, rq.in_channels, rq.latent_shape, rq.code_shape) == (16, 3, (8, 8, 32), (8, 8, 4))
    x = torch.rand(1, 1, 28, 28)
    assert build_vae("vdvae", cfg).reconstruct(x).shape == x.shape
    assert {"tiny", "small", "small-16", "small-28", "cifar10"} <= set(preset_names("vdvae"))
    with pytest.raises(UsageError, match=r"takes 3×32×32 images; the data are 1×28×28 \(--config small or small-28"):
        resolve_config("vdvae", "cifar10", 28, 1)
    with pytest.raises(UsageError, match="no rqvae configuration 'smal'; did you mean 'small'"):
        resolve_config("rqvae", "smal", 16, 1)


# --- convert ---------------------------------------------------------------------------------------------

class FakeScheduler:
    """A custom class, as upstream's model.pt holds one: torch.load(weights_only=True) refuses it."""

    def __init__(self):
        self.last_epoch = 3


def _official_vdvae(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = _tiny("vdvae")
    path = tmp_path / "tiny-seed0-iter-10-model-ema.th"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)  # DDP's prefix, as upstream
    return path, model


def _official_rqvae(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = _tiny("rqvae")
    opt = torch.optim.Adam(model.trainable_for_augmentor(), lr=1e-4)
    folder = tmp_path / "tiny" / "stage1"
    folder.mkdir(parents=True)
    torch.save({"epoch": 4, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": FakeScheduler()}, folder / "model.pt")
    cfg = model.config.to_dict()
    (folder / "config.yaml").write_text(yaml.safe_dump({"arch": {"type": "rq-vae", **cfg}}))
    return folder / "model.pt", model


def test_convert_official_checkpoints(cli, tmp_path):
    for arch, (path, model), args in (("vdvae", _official_vdvae(tmp_path), ["--preset", "tiny"]),
                                      ("rqvae", _official_rqvae(tmp_path), [])):
        out = tmp_path / f"{arch}.safetensors"
        result = cli("vae", "convert", path, "--arch", arch, *args, "--out", out, "--json")
        assert result.code == 0, result.err
        summary = json.loads(result.out)
        assert summary["parameters"] == sum(p.numel() for p in model.parameters())
        loaded, meta = load_vae(out)
        _same(model, loaded, torch.rand(2, 3, 16, 16))
        assert meta["source"] == f"official {arch} checkpoint {path.name}" and len(meta["extra"]["sha256"]) == 64
        assert meta["extra"]["configuration"] == ("preset tiny" if arch == "vdvae" else f"config {path.parent / 'config.yaml'}")


def test_convert_errors_are_one_line_and_write_nothing(cli, tmp_path):
    vd, _ = _official_vdvae(tmp_path)
    rq, _ = _official_rqvae(tmp_path)
    out = tmp_path / "out.safetensors"
    one_line_error(cli("vae", "convert", tmp_path / "nope.th", "--arch", "vdvae", "--out", out), 2, "no checkpoint file at")
    one_line_error(cli("vae", "convert", rq, "--arch", "vdvae", "--out", out), 2,
                   "looks like an RQ-VAE checkpoint; use --arch rqvae")
    one_line_error(cli("vae", "convert", vd, "--arch", "rqvae", "--preset", "tiny", "--out", out), 2,
                   "looks like a VDVAE checkpoint; use --arch vdvae")
    # the default preset (cifar10) is another size: the first missing keys and shapes are named
    line = one_line_error(cli("vae", "convert", vd, "--arch", "vdvae", "--out", out), 2,
                          "is not the vdvae configuration given (3×32×32", "missing encoder.enc_blocks.9.c1.weight")
    assert "shape of encoder.in_conv.weight is (32, 3, 3, 3) not (384, 3, 3, 3)" in line
    state = torch.load(vd, weights_only=True)
    del state["module.decoder.gain"]
    state["module.decoder.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "cut.th")
    one_line_error(cli("vae", "convert", tmp_path / "cut.th", "--arch", "vdvae", "--preset", "tiny", "--out", out), 2,
                   "missing decoder.gain; unexpected decoder.extra")
    one_line_error(cli("vae", "convert", vd, "--arch", "vdvea", "--out", out), 2, "did you mean 'vdvae'")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    out.write_bytes(b"keep me")
    one_line_error(cli("vae", "convert", vd, "--arch", "vdvae", "--preset", "tiny", "--out", out), 2,
                   "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert cli("vae", "convert", vd, "--arch", "vdvae", "--preset", "tiny", "--out", out, "--force").code == 0
    assert load_vae(out)[1]["arch"] == "vdvae"


# --- train -----------------------------------------------------------------------------------------------

def _train(cli, out: Path, *extra):
    return cli("vae", "train", "--arch", "rqvae", "--config", "tiny", "--data", "digits", "--limit", "96",
               "--batch-size", "16", "--lr", "3e-3", "--out", out, *extra)


def test_train_writes_the_vae_and_resume_continues_exactly(cli, tmp_path):
    result = _train(cli, tmp_path / "a", "--epochs", "2")
    assert result.code == 0, result.err
    a = tmp_path / "a"
    for name in ("vae.safetensors", "reconstructions.png", "log.txt", "epochs.jsonl", "vae-train.json",
                 "checkpoints/last.pt"):
        assert (a / name).is_file(), name
    records = [json.loads(line) for line in (a / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 12
    assert records[1]["train_loss"] < records[0]["train_loss"] and records[1]["val_mse"] < records[0]["val_mse"]
    assert "epoch 2/2" in (a / "log.txt").read_text()
    model, meta = load_vae(a)
    assert meta["extra"]["epochs"] == 2 and meta["channels"] == 1 and model.config.in_channels == 1
    # two more epochs by --resume equal four epochs in one go (data order, EMA restarts and RNG restored)
    assert cli("vae", "train", "--resume", a, "--epochs", "4").code == 0
    assert _train(cli, tmp_path / "b", "--epochs", "4").code == 0
    resumed, straight = load_file(str(a / "vae.safetensors")), load_file(str(tmp_path / "b" / "vae.safetensors"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert [json.loads(x)["epoch"] for x in (a / "epochs.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_vdvae_trains_with_upstream_optimiser(cli, tmp_path):
    result = cli("vae", "train", "--arch", "vdvae", "--config", "tiny", "--data", "digits", "--limit", "64",
                 "--batch-size", "16", "--epochs", "2", "--lr", "5e-2", "--out", tmp_path / "v", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    first, last = summary["first_epoch"], summary["last_epoch"]
    assert last["step"] == 8 and last["lr"] == pytest.approx(5e-2 * 8 / 100)  # linear warm-up over 100 steps
    assert last["train_elbo"] < first["train_elbo"] and "val_elbo" in last
    assert abs(last["train_elbo"] - last["train_distortion"] - last["train_rate"]) < 1e-4
    settings = json.loads((tmp_path / "v" / "vae-train.json").read_text())
    assert (settings["betas"], settings["weight_decay"], settings["grad_clip"], settings["skip_threshold"]) == \
        ([0.9, 0.9], 0.01, 10.0, 50.0)


def test_a_diverging_run_stops_and_keeps_the_last_good_epoch(cli, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = RQVAE.loss

    def failing(self, x):
        calls["n"] += 1
        out = original(self, x)
        if calls["n"] > 6:  # epoch 2 of 6 steps on: the loss is NaN every time
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(RQVAE, "loss", failing)
    result = _train(cli, tmp_path / "d", "--epochs", "3")
    assert result.code == 1 and "Traceback" not in result.err  # progress lines first, then the one error line
    errors = [line for line in result.err.splitlines() if line.startswith("hardctl: error: ")]
    assert errors == [result.err.splitlines()[-1]]
    assert "loss was not finite 5 steps in a row (epoch 2, step 11)" in errors[0] and "last good epoch (1)" in errors[0]
    _, meta = load_vae(tmp_path / "d")
    assert meta["extra"]["epochs"] == 1
    assert torch.load(tmp_path / "d" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "d" / "reconstructions.png").exists()


def test_train_refuses_bad_requests_before_writing(cli, tmp_path):
    out = tmp_path / "r"
    one_line_error(cli("vae", "train", "--arch", "vdvae", "--config", "cifar10", "--data", "digits", "--out", out), 2,
                   "takes 3×32×32 images; the data are 1×16×16", "--config small or small-16")
    one_line_error(cli("vae", "train", "--arch", "rqvae", "--config", "tiny", "--data", "digits", "--epochs", "0",
                       "--out", out), 2, "--epochs must be at least 1")
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("x")
    one_line_error(_train(cli, out, "--epochs", "1"), 2, "already exists and is not empty")
    one_line_error(_train(cli, out, "--epochs", "1", "--force"), 2, "not a `hardctl vae train` folder (mine.txt)")
    one_line_error(cli("vae", "train", "--resume", out), 2, "cannot resume")
    one_line_error(cli("vae", "train", "--resume", out, "--lr", "1", "--data", "digits28"), 2,
                   "--resume continues the saved settings; drop --data, --lr")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


# --- eval ------------------------------------------------------------------------------------------------

def test_eval_reports_reconstruction_and_teacher_accuracy(cli, tmp_path, digits_teacher):
    from hardctl.data import load_data
    from hardctl.models import InputNormalize, load_model

    assert _train(cli, tmp_path / "e", "--epochs", "1").code == 0
    result = cli("vae", "eval", tmp_path / "e", "--data", "digits", "--teacher", digits_teacher, "--limit", "40",
                 "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    # the same numbers computed by hand
    test = load_data("digits").test
    x = torch.stack([test[i][0] for i in range(40)])
    y = torch.tensor([test[i][1] for i in range(40)])
    vae, _ = load_vae(tmp_path / "e")
    teacher, info = load_model(digits_teacher)
    norm = InputNormalize(info.mean, info.std)
    with torch.no_grad():
        recon = vae.reconstruct(x)
        predict = lambda images: teacher.eval()(norm(images)).argmax(1)  # noqa: E731
        acc_orig, acc_recon = (100.0 * float((predict(v) == y).float().mean()) for v in (x, recon))
    assert report["images"] == 40 and report["mse"] == pytest.approx(float((recon - x).pow(2).mean()), rel=1e-5)
    assert report["teacher_acc_original"] == pytest.approx(acc_orig)
    assert report["teacher_acc_reconstruction"] == pytest.approx(acc_recon)
    assert 0 < report["psnr_db"] < 60
    table = cli("vae", "eval", tmp_path / "e" / "vae.safetensors", "--data", "digits", "--limit", "8")
    assert table.code == 0 and "reconstruction MSE" in table.out and "PSNR (dB)" in table.out
    one_line_error(cli("vae", "eval", tmp_path / "e", "--data", "digits28"), 2,
                   "the VAE takes 1×16×16 images; 'digits28' has 1×28×28")
