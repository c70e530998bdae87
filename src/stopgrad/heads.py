"""Projector and predictor heads, all from one MLP builder."""
from __future__ import annotations

from torch import nn


def mlp(dims: list[int] | tuple[int, ...], last_bn: bool = False, last_bn_affine: bool = True) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Every hidden layer is Linear (no bias) + BatchNorm + ReLU; the output layer is Linear, followed
    by a BatchNorm when ``last_bn`` (its bias is then redundant and dropped).

    Args:
        dims: layer sizes, input first; at least two.
        last_bn: a BatchNorm after the output layer.
        last_bn_affine: whether that BatchNorm has a learnable scale and shift.
    Returns:
        an ``nn.Sequential`` mapping (N, dims[0]) to (N, dims[-1]).

    >>> net = sg.mlp([8, 16, 4], last_bn=True)
    >>> [type(layer).__name__ for layer in net]
    ['Linear', 'BatchNorm1d', 'ReLU', 'Linear', 'BatchNorm1d']
    >>> net(torch.randn(5, 8)).shape
    torch.Size([5, 4])
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {list(dims)}")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_bn_affine))
    return nn.Sequential(*layers)


# Head shapes per recipe: hidden sizes of the projector and predictor; the projector input is the
# backbone's feature size. The CIFAR recipe is the paper's App. C.2 (projector 512->2048->2048,
# predictor 2048->512->2048), the ImageNet recipe is three 2048 layers and a 512 bottleneck.
HEAD_PRESETS = {
    "cifar": {"projector": [2048, 2048], "predictor": [512, 2048]},
    "imagenet": {"projector": [2048, 2048, 2048], "predictor": [512, 2048]},
    # small heads for the small CPU backbone: the heads are half the step time at the paper's sizes
    "small": {"projector": [512, 512], "predictor": [128, 512]},
    # BYOL's shape (wide hidden layers, a narrow output) at the small CNN's scale
    "small-wide": {"projector": [1024, 256], "predictor": [1024, 256]},
    # the papers' ImageNet heads (configs/paper/): BYOL's projector and predictor 4096-256; SimCLR's
    # projector 2048-128; MoCo v3's (ResNet) 3-layer projector 4096-4096-256 and predictor 4096-256
    "byol": {"projector": [4096, 256], "predictor": [4096, 256]},
    "simclr": {"projector": [2048, 128], "predictor": [512, 128]},
    "moco-v3": {"projector": [4096, 4096, 256], "predictor": [4096, 256]},
    # Barlow Twins' projector = VICReg's expander: three layers of 8192 (both papers, ImageNet);
    # the predictor is only for methods that have one
    "barlow-twins": {"projector": [8192, 8192, 8192], "predictor": [512, 8192]},
    "vicreg": {"projector": [8192, 8192, 8192], "predictor": [512, 8192]},
}
# Barlow Twins and VICReg with the ``small`` preset: three layers like the papers', at the small width
SMALL_EXPANDER = [512, 512, 512]


def projector(in_dim: int, hidden: list[int]) -> nn.Sequential:
    """Backbone features -> projection z; output BatchNorm as in SimSiam / the GSG code.

    Args:
        in_dim: F, the backbone's ``feature_dim``.
        hidden: the layer sizes after the input; the last is the projection size D.
    Returns:
        an ``nn.Sequential`` mapping (N, F) features to (N, D) projections.

    >>> proj = sg.projector(128, sg.HEAD_PRESETS["small"]["projector"])  # 128 -> 512 -> 512
    >>> proj(torch.randn(4, 128)).shape
    torch.Size([4, 512])
    """
    return mlp([in_dim, *hidden], last_bn=True)


def predictor(dim: int, hidden: list[int]) -> nn.Sequential:
    """Projection z -> prediction p (bottleneck MLP, plain linear output).

    Args:
        dim: D, the projection size.
        hidden: the layer sizes after the input; the last must be D.
    Returns:
        an ``nn.Sequential`` mapping (N, D) projections to (N, D) predictions.

    >>> pred = sg.predictor(512, [128, 512])  # 512 -> 128 -> 512
    >>> pred(torch.randn(4, 512)).shape
    torch.Size([4, 512])
    >>> sg.predictor(512, [128, 256])
    Traceback (most recent call last):
    ...
    ValueError: the predictor must output the projection size 512, got 256
    """
    if hidden[-1] != dim:
        raise ValueError(f"the predictor must output the projection size {dim}, got {hidden[-1]}")
    return mlp([dim, *hidden], last_bn=False)


def expander(in_dim: int, hidden: list[int]) -> nn.Sequential:
    """Barlow Twins' projector / VICReg's expander: Linear-BN-ReLU hidden layers, then a plain Linear
    without bias (both authors' code; their losses standardise or centre each dimension, so an output
    bias would receive no gradient).

    Args:
        in_dim: F, the backbone's ``feature_dim``.
        hidden: the layer sizes after the input; the last is the embedding size D.
    Returns:
        an ``nn.Sequential`` mapping (N, F) features to (N, D) embeddings.

    >>> net = sg.expander(128, [64, 64, 32])
    >>> net(torch.randn(4, 128)).shape, net[-1].bias is None
    (torch.Size([4, 32]), True)
    """
    net = mlp([in_dim, *hidden])
    last = net[-1]
    net[-1] = nn.Linear(last.in_features, last.out_features, bias=False)
    return net


def expander_sizes(preset: str) -> list[int]:
    """The expander's layer sizes for a head preset: the preset's projector sizes, except ``small``,
    which gets :data:`SMALL_EXPANDER` (three layers, as in both papers)."""
    return list(SMALL_EXPANDER) if preset == "small" else list(HEAD_PRESETS[preset]["projector"])
