"""Methods: compositions of backbone, heads, loss and (optionally) a momentum copy."""
from __future__ import annotations

from .. import heads
from ..backbones import build_backbone
from .siamese import Siamese

METHODS = ("simsiam", "byol")


def build_method(name: str, *, backbone: str, in_channels: int, width: int, head_preset: str,
                 policy: str, predictor: bool = True):
    """Build a method by name; ``predictor=False`` is the no-predictor ablation."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    net = build_backbone(backbone, in_channels, width)
    shape = heads.HEAD_PRESETS[head_preset]
    proj = heads.projector(net.feature_dim, shape["projector"])
    pred = heads.predictor(shape["projector"][-1], shape["predictor"]) if predictor else None
    return Siamese(net, proj, pred, policy, momentum_target=(name == "byol"))


__all__ = ["METHODS", "Siamese", "build_method"]
