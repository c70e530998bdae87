"""Backbones: a small CNN for CPUs, a CIFAR ResNet-18 and a torchvision ResNet-50.

Every backbone maps (N, C, H, W) images to (N, F) features and has ``feature_dim``.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models

BACKBONES = ("small-cnn", "resnet18-cifar", "resnet50")


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """Four 3x3 conv-BN-ReLU blocks (widths w, 2w, 4w, 8w), then average pooling to a
    ``pool`` x ``pool`` grid, flattened: ``feature_dim = 8w * pool**2``.

    The first block has stride 2, so a 28x28 image reaches the last block at 4x4. Pooling to 2x2
    rather than 1x1 keeps the coarse layout (where the sleeves, the sole, the handle are) that
    Fashion-MNIST classes differ by; see docs/recipes.md, "The default recipe, measured".

    Args:
        in_channels: C of the input images.
        width: w, the first block's channels.
        pool: side of the pooled grid.
    Input (N, C, H, W) float images; output (N, feature_dim) features.

    >>> net = sg.SmallCNN(in_channels=3, width=4, pool=1)  # feature_dim = 8 * 4 * 1**2
    >>> net.feature_dim, net(torch.rand(2, 3, 32, 32)).shape
    (32, torch.Size([2, 32]))
    """

    def __init__(self, in_channels: int = 1, width: int = 32, pool: int = 2):
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers = _conv_bn_relu(in_channels, widths[0], stride=2)
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], (1, 2, 2)):
            layers += _conv_bn_relu(c_in, c_out, stride)
        super().__init__(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.feature_dim = widths[-1] * pool * pool


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    net = getattr(models, name)(weights=None)
    if cifar_stem:  # 3x3 stride-1 stem, no max-pool: the standard CIFAR variant
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # features, not logits; load with `model.fc = nn.Identity()`
    return net


def build_backbone(name: str, in_channels: int = 3, width: int = 32) -> nn.Module:
    """The backbone ``name`` (one of :data:`BACKBONES`), with freshly initialised weights.

    ``width`` applies to ``small-cnn`` only. The ResNets' classifier is replaced by ``nn.Identity``.

    Args:
        name: ``"small-cnn"``, ``"resnet18-cifar"`` or ``"resnet50"``.
        in_channels: C of the input images.
        width: the small CNN's first-block width.
    Returns:
        an ``nn.Module`` mapping (N, C, H, W) float images to (N, F) features, F = its ``feature_dim``.

    >>> _ = torch.manual_seed(0)
    >>> net = sg.build_backbone("small-cnn", 1, width=4)  # feature_dim = 8 * 4 * 2**2
    >>> net.feature_dim, net(torch.randn(2, 1, 28, 28)).shape
    (128, torch.Size([2, 128]))
    >>> sg.build_backbone("vit")
    Traceback (most recent call last):
    ...
    ValueError: unknown backbone 'vit'; choose one of small-cnn, resnet18-cifar, resnet50
    """
    if name == "small-cnn":
        return SmallCNN(in_channels, width)
    if name == "resnet18-cifar":
        return _torchvision_resnet("resnet18", in_channels, cifar_stem=True)
    if name == "resnet50":
        return _torchvision_resnet("resnet50", in_channels, cifar_stem=False)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


