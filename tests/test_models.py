"""Tests for the hard_* timm models (hardctl.zoo) and model specs / weights files (hardctl.models).

Everything runs offline on CPU with tiny inputs; the only timm model built besides the hard_* ones is
resnet18 (without weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from conftest import fake_hub_cache
from hardctl.errors import CheckpointError, ModelError, UsageError
from hardctl.models import (
    ALIASES,
    InputNormalize,
    ModelInfo,
    create_model,
    describe,
    load_model,
    resolve_name,
    save_model,
)

HARD_MODELS = ("hard_mnist_cnn", "hard_mnist_mlp", "hard_mnist_mlp_wide", "hard_vit_mnist")


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    a.eval(), b.eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


# --- the zoo ----------------------------------------------------------------------------------------


def test_hard_models_are_registered_in_timm() -> None:
    assert set(HARD_MODELS) <= set(timm.list_models("hard_*"))
    for name in HARD_MODELS:
        assert not timm.is_model_pretrained(name)


@pytest.mark.parametrize("name", HARD_MODELS)
@pytest.mark.parametrize("size", [28, 16])
@pytest.mark.parametrize("chans", [1, 3])
def test_hard_models_build_and_run(name: str, size: int, chans: int) -> None:
    model = timm.create_model(name, num_classes=7, in_chans=chans, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, chans, size, size))
    assert out.shape == (2, 7)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg or model.default_cfg == cfg
    assert cfg["num_classes"] == 10 and cfg["input_size"] == (1, 28, 28)
    assert cfg["mean"] == (0.0,) and cfg["std"] == (1.0,)
    assert "classifier" in cfg and "first_conv" in cfg and not cfg.get("hf_hub_id")


@pytest.mark.parametrize("name", HARD_MODELS)
def test_hard_models_follow_timm_head_api(name: str) -> None:
    model = timm.create_model(name, num_classes=5).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert torch.equal(model.forward_head(feats), model(x))
    assert pre.shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model.num_classes == 3
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    assert isinstance(model.get_classifier(), torch.nn.Linear)


def test_cnn_layers_match_the_paper() -> None:
    model = timm.create_model("hard_mnist_cnn")
    convs = [model.conv1, model.conv2, model.conv3]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 128, (3, 3), (0, 0)),
        (128, 64, (3, 3), (0, 0)),
        (64, 64, (3, 3), (0, 0)),
    ]
    assert model.fc.in_features == 64 and model.fc.out_features == 10
    # 28 -> 26 -> 24 -> 12 -> 10 -> 3 (MaxPool(3) kept where the map is large enough)
    assert model.forward_features(torch.rand(1, 1, 28, 28)).shape == (1, 64, 3, 3)


def test_cnn_rejects_images_too_small_for_its_convs() -> None:
    with pytest.raises(ModelError, match="at least 10x10"):
        create_model("mnist_cnn", num_classes=10, in_chans=1, img_size=8)


def test_mlp_widths_and_bias_free_head() -> None:
    model = timm.create_model("hard_mnist_mlp", num_classes=10, in_chans=1, img_size=16)
    assert model.fc1.in_features == 16 * 16
    assert [model.fc1.out_features, model.fc2.out_features, model.fc3.out_features] == [512, 128, 32]
    assert model.head.bias is None and model.head.in_features == 32
    assert all(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in (model.drop1, model.drop2, model.drop3))


def test_wide_mlp_is_the_same_mlp_at_1024_512_128() -> None:
    model, info = create_model("mnist_mlp_wide", num_classes=10, in_chans=1, img_size=28)
    assert info.arch == "hard_mnist_mlp_wide" and model.fc1.in_features == 28 * 28
    assert [model.fc1.out_features, model.fc2.out_features, model.fc3.out_features] == [1024, 512, 128]
    assert model.head.bias is None and model.head.in_features == 128
    assert sum(p.numel() for p in model.parameters()) == 784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 128 + 128 + 1280


def test_vit_shape_uses_standard_head_dim() -> None:
    model = timm.create_model("hard_vit_mnist")
    assert model.embed_dim == 64 and len(model.blocks) == 6
    attn = model.blocks[0].attn
    assert attn.num_heads == 8 and attn.head_dim == 8
    assert model.blocks[0].mlp.fc1.out_features == 128  # mlp_ratio 2
    assert model.patch_embed.patch_size == (7, 7) and model.cls_token is not None
    # 7 does not tile 16x16: patch 4 gives a 4x4 token grid
    small = timm.create_model("hard_vit_mnist", img_size=16)
    assert small.patch_embed.patch_size == (4, 4) and small.patch_embed.num_patches == 16


# --- names ------------------------------------------------------------------------------------------


def test_aliases_resolve_to_timm_models() -> None:
    assert resolve_name("vit_small") == "vit_small_patch16_224"
    assert resolve_name("vit_s14") == "vit_small_patch14_dinov2"
    assert resolve_name("mnist_cnn") == "hard_mnist_cnn"
    assert resolve_name("mlp") == "hard_mnist_mlp"
    assert resolve_name("resnet18.a1_in1k") == "resnet18.a1_in1k"  # pretrained tags pass through
    for alias, target in ALIASES.items():
        assert timm.is_model(target), alias


@pytest.mark.parametrize(("typo", "suggestion"), [("vit_smal", "vit_small"), ("mnist_cnnn", "mnist_cnn")])
def test_typo_suggests_the_right_name(typo: str, suggestion: str) -> None:
    with pytest.raises(ModelError, match="did you mean") as err:
        resolve_name(typo)
    assert repr(suggestion) in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_name_spec_needs_shapes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        load_model("mnist_mlp", in_chans=1, img_size=28)


def test_stats_adapted_from_rgb_to_grey() -> None:
    _, info = create_model("resnet18", num_classes=4, in_chans=1, img_size=32)
    assert info.mean == pytest.approx((sum(IMAGENET_DEFAULT_MEAN) / 3,))
    assert info.std == pytest.approx((sum(IMAGENET_DEFAULT_STD) / 3,))
    _, info3 = create_model("mnist_cnn", num_classes=4, in_chans=3, img_size=16)
    assert info3.mean == (0.0, 0.0, 0.0) and info3.std == (1.0, 1.0, 1.0)


def test_pretrained_offline_is_a_one_line_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so set the parsed constant too; without it
    # the hub retries for about a minute before giving up
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ModelError, match="pretrained weights") as err:
        create_model("resnet18", num_classes=10, in_chans=3, img_size=32, pretrained=True)
    assert "\n" not in str(err.value) and "HF_HUB_OFFLINE is set" in str(err.value)


def test_pretrained_for_a_model_without_weights() -> None:
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model("mnist_cnn", num_classes=10, in_chans=1, img_size=28, pretrained=True)


# --- weights files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_mlp", "mnist_vit"])
def test_save_load_round_trip(tmp_path: Path, name: str) -> None:
    model, info = create_model(name, num_classes=5, in_chans=1, img_size=16)
    path = save_model(model, info, tmp_path / "w.safetensors", extra={"note": "hi"})
    loaded, linfo = load_model(path)
    assert _same_outputs(model, loaded, (1, 16, 16))
    assert (linfo.arch, linfo.num_classes, linfo.in_chans, linfo.img_size) == (info.arch, 5, 1, (16, 16))
    assert (linfo.mean, linfo.std) == (info.mean, info.std)
    assert linfo.source == f"file:{path}"
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "hardctl" and meta["note"] == "hi" and "hardctl_version" in meta
    assert json.loads(meta["img_size"]) == [16, 16]
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left


def test_file_metadata_wins_over_requested_shapes(tmp_path: Path) -> None:
    model, info = create_model("mlp", num_classes=10, in_chans=1, img_size=16)
    path = save_model(model, info, tmp_path / "teacher.safetensors")
    _, linfo = load_model(str(path), num_classes=5, in_chans=1, img_size=16)
    assert linfo.num_classes == 10


def test_metadata_round_trip() -> None:
    info = ModelInfo("hard_mnist_cnn", 10, 3, (16, 16), (0.1, 0.2, 0.3), (1.0, 0.5, 0.25), "timm")
    assert ModelInfo.from_metadata(info.to_metadata()) == info
    assert all(isinstance(v, str) for v in info.to_metadata().values())
    assert describe(info).startswith("hard_mnist_cnn: 10 classes, input 3x16x16")
    assert "\n" not in describe(info)


def test_run_directory(tmp_path: Path) -> None:
    model, info = create_model("cnn", num_classes=3, in_chans=1, img_size=16)
    save_model(model, info, tmp_path / "run" / "model.safetensors")
    loaded, linfo = load_model(tmp_path / "run")
    assert linfo.source == f"run:{tmp_path / 'run'}"
    assert _same_outputs(model, loaded, (1, 16, 16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a hardctl run directory"):
        load_model(tmp_path / "empty")


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        load_model(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="no such model file"):
        load_model("runs/does-not-exist")


def test_truncated_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    model, info = create_model("mlp", num_classes=3, in_chans=1, img_size=16)
    path = save_model(model, info, tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file") as err:
        load_model(path)
    assert err.value.exit_code == 1 and "\n" not in str(err.value)


def test_random_bytes_are_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes())
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_model(path)


def test_foreign_safetensors_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="lacks hardctl metadata"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    model, info = create_model("mlp", num_classes=3, in_chans=1, img_size=16)
    path = tmp_path / "w.safetensors"
    save_model(model, info, path)
    # same metadata, but claim a different architecture: the tensors no longer match
    meta = {**info.to_metadata(), "arch": "hard_mnist_cnn", "format": "hardctl"}
    safetensors.torch.save_file(safetensors.torch.load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="does not match architecture") as err:
        load_model(path)
    assert "\n" not in str(err.value)


# --- input normalisation ----------------------------------------------------------------------------


def test_input_normalize_matches_hand_computation() -> None:
    norm = InputNormalize((0.5, 0.25), (0.5, 2.0))
    x = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    out = norm(x)
    assert torch.allclose(out[0, 0], torch.full((2, 2), 1.0))  # (1 - 0.5) / 0.5
    assert torch.allclose(out[0, 1], torch.full((2, 2), 0.375))  # (1 - 0.25) / 2
    assert norm.mean.shape == (1, 2, 1, 1) and dict(norm.state_dict()) == {}


def test_pretrained_weights_come_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """``--pretrained`` offline: timm finds the weights in an HF cache laid out as the hub writes it."""
    import huggingface_hub.constants as hub_constants

    reference = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    weights = fake_hub_cache(tmp_path / "hub", monkeypatch, torch.randn_like)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # never touch the network

    model, info = create_model("test_resnet.r160_in1k", num_classes=7, in_chans=3, img_size=32, pretrained=True)
    state = model.state_dict()
    head = reference.pretrained_cfg["classifier"]
    body = [k for k in weights if not k.startswith(head + ".")]
    assert len(body) > 10 and all(torch.equal(state[k], weights[k]) for k in body)  # the cached weights
    assert state[f"{head}.weight"].shape[0] == 7  # the head was replaced for the data's classes
    assert info.mean == tuple(reference.pretrained_cfg["mean"])


# --- NAME:FILE: a timm architecture with weights from a user's file ------------------------------------


def _wrapped_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """A training checkpoint as torchvision/ImageNet scripts write it: DataParallel keys under 'state_dict'."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 90, "arch": "x", "state_dict": state, "best_acc1": torch.tensor(76.1)}, path)
    return path


def test_named_file_loads_a_wrapped_checkpoint_strictly(tmp_path: Path) -> None:
    reference = timm.create_model("test_resnet", num_classes=10).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that the buffers are checked too
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = _wrapped_checkpoint(reference, tmp_path / "weights.pth.tar")
    model, info = load_model(f"test_resnet:{path}", num_classes=10, in_chans=3, img_size=32)
    assert info.arch == "test_resnet" and info.source == f"file:{path}" and info.num_classes == 10
    assert info.img_size == (32, 32) and info.mean == tuple(reference.pretrained_cfg["mean"])  # the arch's cfg
    assert _same_outputs(model, reference, (3, 32, 32))


def test_named_file_reads_safetensors_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = timm.create_model("hard_mnist_cnn", num_classes=10)
    safetensors.torch.save_file(reference.state_dict(), str(tmp_path / "cnn.safetensors"))  # no hardctl metadata
    monkeypatch.setenv("HOME", str(tmp_path))
    model, info = load_model("mnist_cnn:~/cnn.safetensors", num_classes=10, in_chans=1, img_size=28)
    assert info.arch == "hard_mnist_cnn"
    assert _same_outputs(model, reference, (1, 28, 28))


def test_torchvision_resnet_keys_load_into_timm_resnets(tmp_path: Path) -> None:
    """torchvision's ImageNet ResNets (the DeepAugment+AugMix ResNet-50 teacher is one) have timm's key names."""
    torchvision = pytest.importorskip("torchvision")
    assert set(torchvision.models.resnet50().state_dict()) == set(timm.create_model("resnet50").state_dict())
    reference = torchvision.models.resnet18(num_classes=10)
    path = _wrapped_checkpoint(reference, tmp_path / "r18.pth.tar")
    model, _ = load_model(f"resnet18:{path}", num_classes=10, in_chans=3, img_size=32)
    reference.eval(), model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_named_file_head_for_other_classes_is_one_clear_line(cli, tmp_path: Path) -> None:
    path = _wrapped_checkpoint(timm.create_model("hard_mnist_cnn", num_classes=5), tmp_path / "t.pth")
    _, info = load_model(f"mnist_cnn:{path}", num_classes=10, in_chans=1, img_size=16)
    assert info.num_classes == 5  # the file's head, for the caller to compare with the data
    result = cli("distill", "--teacher", f"mnist_cnn:{path}", "--student", "mnist_mlp", "--data", "digits",
                 "--augmentor", "none", "--out", tmp_path / "kd")
    assert result.code == 2, result.err
    assert f"teacher mnist_cnn:{path} predicts 5 classes but data 'digits' has 10" in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("spec, error, message", [
    ("mnist_cnn:{tmp}/missing.pth", ModelError, "no such weights file {tmp}/missing.pth"),
    ("mnist_cnnn:{tmp}/w.pth", ModelError, "unknown model 'mnist_cnnn'; did you mean 'mnist_cnn'"),
    ("mnist_mlp:{tmp}/w.pth", ModelError, "does not fit architecture 'hard_mnist_mlp'"),
    ("mnist_cnn:{tmp}/pickled.pth", CheckpointError, "cannot read weights file {tmp}/pickled.pth"),
    ("mnist_cnn:{tmp}/garbage.pth", CheckpointError, "cannot read weights file {tmp}/garbage.pth"),
])
def test_named_file_errors_are_one_line(tmp_path: Path, spec: str, error: type, message: str) -> None:
    model = timm.create_model("hard_mnist_cnn", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    torch.save(model, tmp_path / "pickled.pth")  # a whole pickled module: weights_only refuses it
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(error) as err:
        load_model(spec.format(tmp=tmp_path), num_classes=10, in_chans=1, img_size=28)
    assert message.format(tmp=tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_named_file_and_pretrained_exclude_each_other(tmp_path: Path) -> None:
    torch.save(timm.create_model("hard_mnist_cnn").state_dict(), tmp_path / "w.pth")
    with pytest.raises(UsageError, match="drop --pretrained"):
        load_model(f"mnist_cnn:{tmp_path}/w.pth", num_classes=10, in_chans=1, img_size=28, pretrained=True)
