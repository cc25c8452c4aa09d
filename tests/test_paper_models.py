"""The paper's CIFAR-10 and ImageNet architectures (appendix A.1, A.2): shapes, sizes, aliases, one forward."""

from __future__ import annotations

import pytest
import timm
import torch

from hardctl.errors import ModelError
from hardctl.models import ALIASES, create_model, resolve_name
from hardctl.zoo import CIFAR10_MEAN, CIFAR10_STD


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- ResNet-18 for 32x32 images ------------------------------------------------------------------------------


def test_resnet18_cifar_has_a_full_resolution_stem_and_no_max_pool() -> None:
    model = timm.create_model("hard_resnet18_cifar", num_classes=10).eval()
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3, 64, (3, 3), (1, 1), (1, 1))
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2, 2, 2, 2]
    assert type(model.layer1[0]).__name__ == "BasicBlock"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        stem = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        assert stem.shape == (2, 64, 32, 32)  # the ImageNet stem would give 8x8
        assert model.forward_features(x).shape == (2, 512, 4, 4)  # strides 1, 2, 4, 8
        assert model(x).shape == (2, 10)
    assert [f["reduction"] for f in model.feature_info] == [1, 1, 2, 4, 8]
    # the usual CIFAR ResNet-18 count: 11,173,962 = 11,168,832 in the body + 512·10 + 10 in the head
    assert _params(model) == 11_173_962
    assert _params(model) - _params(timm.create_model("resnet18", num_classes=10)) == 3 * 64 * (9 - 49)


def test_resnet18_cifar_features_and_grey_input() -> None:
    feats = timm.create_model("hard_resnet18_cifar", features_only=True, out_indices=(1, 4)).eval()
    with torch.no_grad():
        shapes = [t.shape for t in feats(torch.rand(1, 3, 32, 32))]
    assert shapes == [(1, 64, 32, 32), (1, 512, 4, 4)]
    model, info = create_model("resnet18_cifar", num_classes=10, in_chans=1, img_size=28)  # the MNIST teacher
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert info.arch == "hard_resnet18_cifar" and info.mean == (sum(CIFAR10_MEAN) / 3,)


# --- the CIFAR ViT ---------------------------------------------------------------------------------------------


def test_vit_cifar_is_six_layers_eight_heads_width_512() -> None:
    model = timm.create_model("hard_vit_cifar", num_classes=10).eval()
    assert model.embed_dim == 512 and len(model.blocks) == 6
    for block in model.blocks:
        assert block.attn.num_heads == 8 and block.attn.head_dim == 64
        assert (block.mlp.fc1.in_features, block.mlp.fc1.out_features, block.mlp.fc2.out_features) == (512, 512, 512)
        assert block.attn.attn_drop.p == block.attn.proj_drop.p == 0.1
        assert block.mlp.drop1.p == block.mlp.drop2.p == 0.1
    assert model.pos_drop.p == 0.1
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.grid_size == (8, 8)
    assert model.cls_token is not None and model.pos_embed.shape == (1, 65, 512)
    # per block: 2 LayerNorms 2·1024, qkv 512·1536 + 1536, proj / fc1 / fc2 3·(512·512 + 512)
    block = 2 * 1024 + 512 * 1536 + 1536 + 3 * (512 * 512 + 512)
    rest = (3 * 16 * 512 + 512) + 512 + 65 * 512 + 1024 + (512 * 10 + 10)  # patch embed, cls, pos, norm, head
    assert _params(model) == 6 * block + rest == 9_532_938
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_vit_cifar_needs_a_size_its_patches_tile() -> None:
    with pytest.raises(ModelError, match="4x4 patches do not tile 30x30"):
        create_model("vit_cifar", num_classes=10, in_chans=3, img_size=30)
    model, _ = create_model("vit_cifar", num_classes=10, in_chans=1, img_size=28)
    assert model.patch_embed.grid_size == (7, 7)


@pytest.mark.parametrize("name", ["hard_resnet18_cifar", "hard_vit_cifar"])
def test_cifar_models_default_cfg(name: str) -> None:
    cfg = timm.create_model(name).pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 10
    assert cfg["mean"] == CIFAR10_MEAN and cfg["std"] == CIFAR10_STD
    assert not timm.is_model_pretrained(name)
    _, info = create_model(name, num_classes=10, in_chans=3, img_size=32)
    assert info.mean == CIFAR10_MEAN and info.std == CIFAR10_STD


# --- ImageNet: ViT-S/14 and the ResNets --------------------------------------------------------------------------


def test_vit_s14_builds_from_scratch_at_224() -> None:
    model, info = create_model("vit_s14", num_classes=10, in_chans=3, img_size=224)
    assert info.arch == "vit_small_patch14_dinov2" and info.img_size == (224, 224)
    assert model.patch_embed.patch_size == (14, 14) and model.patch_embed.grid_size == (16, 16)
    assert model.embed_dim == 384 and len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 6
    assert model.pos_embed.shape[1] == 16 * 16 + 1  # class token, no register tokens
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 10)


def test_paper_aliases_resolve() -> None:
    expected = {
        "resnet18": "resnet18", "resnet50": "resnet50", "resnet101": "resnet101",
        "vit_small": "vit_small_patch16_224", "vit_s14": "vit_small_patch14_dinov2",
        "resnet18_cifar": "hard_resnet18_cifar", "vit_cifar": "hard_vit_cifar",
    }
    for alias, target in expected.items():
        assert ALIASES[alias] == target and resolve_name(alias) == target and timm.is_model(target)
    assert {"hard_resnet18_cifar", "hard_vit_cifar"} <= set(timm.list_models("hard_*"))
