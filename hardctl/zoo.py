"""The paper's small MNIST and CIFAR models, registered in timm's model registry.

Importing this module registers these architectures so that ``timm.create_model`` and
``timm.list_models('hard_*')`` know them exactly like timm's own models:

* ``hard_mnist_cnn``: the MNIST teacher CNN of the orbit-transfer recipes HARD reuses
  (three unpadded 3x3 convolutions, global average pooling, one linear layer; no batch norm).
* ``hard_mnist_mlp``: the MLP student (512/128/32 hidden units, bias-free output layer).
* ``hard_mnist_mlp_wide``: the same MLP at 1024/512/128 hidden units, a student with room for augmented
  images next to clean ones (the Fashion-MNIST transfer study's student).
* ``hard_vit_mnist``: a small ViT for 28x28 digits, built from timm's ``VisionTransformer``.
* ``hard_resnet18_cifar``: ResNet-18 for 32x32 images (3x3 stride-1 stem, no max-pool), timm's ``ResNet``.
* ``hard_vit_cifar``: the paper's CIFAR ViT (6 layers, 8 heads, width 512), timm's ``VisionTransformer``.

The ImageNet models of the paper (ResNet-18/50, ViT-S/14) are timm's own; see ``hardctl.models.ALIASES``.

Every entrypoint follows timm's conventions: it takes ``pretrained``, ``num_classes``, ``in_chans`` and
``img_size``, goes through ``build_model_with_cfg`` (which attaches ``pretrained_cfg``/``default_cfg``)
and has a default cfg made by ``generate_default_cfgs``. No weights are published for these models,
so their cfgs carry neither ``url`` nor ``hf_hub_id`` and ``timm.is_model_pretrained`` is False.

The MNIST models' default normalisation is mean 0 / std 1: the paper feeds raw ``ToTensor`` pixels in
[0, 1]. The CIFAR models normalise with the CIFAR-10 training-set channel statistics.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CifarResNet", "MnistCNN", "MnistMLP", "vit_mnist_patch_size"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel mean and standard deviation of the CIFAR-10 training images in [0, 1]."""


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``28`` or ``(28, 28)`` -> ``(28, 28)``, the way timm accepts image sizes."""
    if isinstance(size, int):
        return size, size
    h, w = tuple(size)[-2:]
    return int(h), int(w)


class _SafeMaxPool2d(nn.MaxPool2d):
    """``MaxPool2d(k)`` that passes inputs smaller than ``k`` through unchanged.

    The original teacher has ``MaxPool(3)`` after its third convolution (10x10 -> 3x3 on MNIST). On
    16x16 inputs that layer sees 4x4 maps (-> 1x1, fine) but on anything below 3 pixels a plain
    max-pool fails. Since global average pooling follows, skipping the pool on tiny maps changes no
    shape downstream, and the check at run time keeps one set of weights usable at any input size.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size if isinstance(self.kernel_size, int) else min(self.kernel_size)
        if min(x.shape[-2:]) < k:
            return x
        return super().forward(x)


class MnistCNN(nn.Module):
    """HARD's MNIST teacher: 3 unpadded 3x3 convs (128, 64, 64 channels), avg-pool, linear head.

    Shapes on 28x28: 28 -conv-> 26 -conv-> 24 -pool2-> 12 -conv-> 10 -pool3-> 3 -avg-> 1. The
    original's ``MaxPool(1)`` after the first conv is the identity and is left out; the ``MaxPool(3)``
    after the third conv is kept but skipped on maps smaller than 3x3 (see :class:`_SafeMaxPool2d`).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | Sequence[int] = 28,
        drop_rate: float = 0.1,
        global_pool: str = "avg",
        **_: Any,
    ) -> None:
        super().__init__()
        h, w = _pair(img_size)
        # three unpadded 3x3 convs and a /2 pool: the third conv needs floor((s - 4) / 2) >= 3, s >= 10
        if min(h, w) < 10:
            raise ValueError(f"hard_mnist_cnn needs images of at least 10x10 pixels, got {h}x{w}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = 64
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, 128, kernel_size=3)
        self.act1 = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(128, 64, kernel_size=3)
        self.act2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.drop2 = nn.Dropout(drop_rate)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.act3 = nn.ReLU(inplace=True)
        self.pool3 = _SafeMaxPool2d(3)
        self.drop3 = nn.Dropout(drop_rate)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool = global_pool if global_pool is not None else "avg"
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act1(self.conv1(x)))
        x = self.drop2(self.pool2(self.act2(self.conv2(x))))
        return self.drop3(self.pool3(self.act3(self.conv3(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MnistMLP(nn.Module):
    """HARD's MNIST student: Flatten, then Linear+ReLU+Dropout to 512, 128 and 32 units.

    The output layer has no bias, as in the original. The input width is ``in_chans * H * W``, so the
    model is tied to the ``img_size`` it was built for (its cfg says ``fixed_input_size``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | Sequence[int] = 28,
        widths: Sequence[int] = (512, 128, 32),
        drop_rate: float = 0.1,
        **_: Any,
    ) -> None:
        super().__init__()
        h, w = _pair(img_size)
        if len(widths) != 3:
            raise ValueError(f"hard_mnist_mlp has 3 hidden layers, got widths {tuple(widths)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = (h, w)
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(in_chans * h * w, widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(widths[0], widths[1])
        self.act2 = nn.ReLU(inplace=True)
        self.drop2 = nn.Dropout(drop_rate)
        self.fc3 = nn.Linear(widths[1], widths[2])
        self.act3 = nn.ReLU(inplace=True)
        self.drop3 = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        # timm convention: num_classes=0 turns the model into a feature extractor
        return nn.Linear(self.num_features, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        # global_pool is accepted for timm API compatibility; an MLP has nothing to pool
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act1(self.fc1(self.flatten(x))))
        x = self.drop2(self.act2(self.fc2(x)))
        return self.drop3(self.act3(self.fc3(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def vit_mnist_patch_size(img_size: int | Sequence[int]) -> int:
    """Patch size for ``hard_vit_mnist`` at ``img_size``: 7 (the paper's, 4x4 tokens on 28x28) when it
    divides both sides, else 4 (4x4 tokens on 16x16), else the largest size below 7 that divides both.

    timm's patch embedding needs the patch to tile the image exactly; choosing it from the size keeps
    the architecture a pure function of ``img_size``, so saved weights rebuild to the same shapes.
    """
    h, w = _pair(img_size)
    for p in (7, 4, 6, 5, 3, 2, 1):
        if h % p == 0 and w % p == 0:
            return p
    raise AssertionError("unreachable: patch size 1 divides every size")


class CifarResNet(ResNet):
    """timm's :class:`~timm.models.resnet.ResNet` with the CIFAR stem of the paper's code.

    The ImageNet stem (7x7 stride-2 convolution and a stride-2 max-pool, /4 in all) would leave 8x8 maps
    after it on 32x32 images; the CIFAR variant (``nntransfer/models/resnet.py``) keeps full resolution:
    one 3x3 convolution with stride 1 and padding 1, no max-pool. Everything after the stem is timm's
    (stages of :class:`~timm.models.resnet.BasicBlock`/``Bottleneck``, global average pooling, ``fc``), so
    the feature strides are 1, 1, 2, 4 and 8 (``feature_info``). The original pooled with ``AvgPool2d(4)``,
    which equals global pooling on 32x32 inputs; global pooling also works at other sizes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inplanes = self.conv1.out_channels
        self.conv1 = nn.Conv2d(self.conv1.in_channels, inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as ResNet.init_weights
        self.maxpool = nn.Identity()
        # timm's stage reductions assume the /4 stem; this stem has stride 1
        self.feature_info = [dict(num_chs=inplanes, reduction=1, module="act1")] + [
            {**info, "reduction": info["reduction"] // 4} for info in self.feature_info[1:]
        ]


VIT_CIFAR_PATCH = 4


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Default cfg shared by the MNIST models: 1x28x28 raw pixels in [0, 1], 10 classes, no weights."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.0,),
        "std": (1.0,),
        "license": "mit",
        **kwargs,
    }


# ``register_model`` looks up ``default_cfgs`` in this module, so it must exist before the entrypoints.
default_cfgs = generate_default_cfgs(
    {
        "hard_mnist_cnn": _cfg(first_conv="conv1", classifier="fc"),
        # first_conv=None: the first layer is a Linear over flattened pixels, and timm must not try to
        # adapt it as a convolution stem when in_chans changes
        "hard_mnist_mlp": _cfg(first_conv=None, classifier="head", fixed_input_size=True),
        "hard_mnist_mlp_wide": _cfg(first_conv=None, classifier="head", fixed_input_size=True),
        # position embeddings tie a ViT to its grid size, hence fixed_input_size
        "hard_vit_mnist": _cfg(first_conv="patch_embed.proj", classifier="head", fixed_input_size=True),
        "hard_resnet18_cifar": _cfg(input_size=(3, 32, 32), pool_size=(4, 4), mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                    first_conv="conv1", classifier="fc"),
        "hard_vit_cifar": _cfg(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD,
                               first_conv="patch_embed.proj", classifier="head", fixed_input_size=True),
    }
)


@register_model
def hard_mnist_cnn(pretrained: bool = False, **kwargs: Any) -> MnistCNN:
    """MNIST teacher CNN (conv 128-64-64, avg-pool, linear)."""
    return build_model_with_cfg(MnistCNN, "hard_mnist_cnn", pretrained, **kwargs)


@register_model
def hard_mnist_mlp(pretrained: bool = False, **kwargs: Any) -> MnistMLP:
    """MNIST student MLP (512-128-32, bias-free output layer)."""
    return build_model_with_cfg(MnistMLP, "hard_mnist_mlp", pretrained, **kwargs)


@register_model
def hard_mnist_mlp_wide(pretrained: bool = False, **kwargs: Any) -> MnistMLP:
    """The MNIST student MLP at 1024-512-128: the paper's 32-unit bottleneck leaves little room for augmented images."""
    kwargs.setdefault("widths", (1024, 512, 128))
    return build_model_with_cfg(MnistMLP, "hard_mnist_mlp_wide", pretrained, **kwargs)


@register_model
def hard_vit_mnist(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Small ViT for 28x28 digits: patch 7, dim 64, depth 6, 8 heads of 8 dims, MLP ratio 2, class token.

    Differences from the orbit-transfer ViT, on purpose: heads use the standard ``dim / heads`` width
    (the original's ``dim_head = dim`` made attention 8x wider than the residual stream), and the head
    is timm's single linear layer instead of Linear-GELU-Linear.
    """
    # the patch size depends on the image size, so the size must be known before building
    img_size = _pair(kwargs.pop("img_size", 28))
    model_args: dict[str, Any] = dict(
        patch_size=vit_mnist_patch_size(img_size),
        embed_dim=64,
        depth=6,
        num_heads=8,
        mlp_ratio=2.0,
        class_token=True,
        global_pool="token",
    )
    model_args.update(kwargs)
    return build_model_with_cfg(
        VisionTransformer,
        "hard_vit_mnist",
        pretrained,
        img_size=img_size,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **model_args,
    )


@register_model
def hard_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 for 32x32 images: BasicBlock [2, 2, 2, 2], 3x3 stride-1 stem, no max-pool, global average pool.

    The paper's CIFAR-10 teacher/student (Table 2) and its MNIST ResNet18 teacher (with ``in_chans=1``).
    """
    model_args: dict[str, Any] = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    model_args.update(kwargs)
    return build_model_with_cfg(CifarResNet, "hard_resnet18_cifar", pretrained, **model_args)


@register_model
def hard_vit_cifar(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The paper's CIFAR-10 ViT (appendix A.1): 6 layers, 8 heads, width 512 everywhere, dropout 0.1.

    "Six layers and eight attention heads throughout the network. The dropout rate is set to 0.1 and the
    hidden dimension is chosen as 512 in all places": embedding width 512 and MLP hidden width 512
    (``mlp_ratio=1``); dropout 0.1 after the embedding, on the attention weights and after the attention
    and MLP projections (as vit-pytorch, which the authors' code used, applies it); no head dropout.

    Not in the paper, chosen here: patch size 4 (8x8 = 64 tokens at 32 px; it must tile the image), a class
    token read by timm's single linear head, and heads of the standard ``512 / 8 = 64`` dims (a ViT built
    with the orbit-transfer class would have had ``dim_head = dim``, an 8x wider attention).
    """
    img_size = _pair(kwargs.pop("img_size", 32))
    patch = kwargs.pop("patch_size", VIT_CIFAR_PATCH)
    if img_size[0] % patch or img_size[1] % patch:
        raise ValueError(f"hard_vit_cifar's {patch}x{patch} patches do not tile {img_size[0]}x{img_size[1]} images")
    model_args: dict[str, Any] = dict(
        patch_size=patch,
        embed_dim=512,
        depth=6,
        num_heads=8,
        mlp_ratio=1.0,
        class_token=True,
        global_pool="token",
        pos_drop_rate=0.1,
        attn_drop_rate=0.1,
        proj_drop_rate=0.1,
    )
    model_args.update(kwargs)
    return build_model_with_cfg(
        VisionTransformer,
        "hard_vit_cifar",
        pretrained,
        img_size=img_size,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **model_args,
    )
