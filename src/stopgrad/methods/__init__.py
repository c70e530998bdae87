"""Methods: compositions of backbone, heads, loss and (optionally) a momentum copy or memory.

Every method is an ``nn.Module`` with the same interface, so the one training loop runs them all:

* ``backbone`` — the encoder whose features are evaluated and saved;
* ``forward(views, partners, generator=None, indices=None, labels=None) -> (loss, stats)`` —
  ``views`` is (V, B, C, H, W), ``partners`` (B,) a derangement (used by the stop-gradient
  policies), ``indices`` (B,) the images' positions in the training set (used by memory banks),
  ``labels`` (B,) their labels when the data set has them, read only by the statistics
  (:func:`~stopgrad.methods.common.embedding_stats`: TP / FN similarity); ``stats`` is a dict of
  scalar tensors left on the device (the loop averages them per epoch, skipping NaN), always
  holding ``collapse_std``;
* ``update_momentum(momentum)`` — called after every optimiser step (a no-op without a momentum
  copy). State that must survive a resume (queues, memory banks) lives in registered buffers;
* optionally ``set_num_images(n)`` — called once with the training-set size (memory banks);
* optionally ``begin_epoch(ctx, order) -> (order, stats)`` — called at the start of every epoch
  with a :class:`~stopgrad.train.EpochContext` and the epoch's random order; returns the order
  the epoch's batches are sliced from and a dict of floats for the epoch's metrics (SPCL's
  clustering and prototype batches).

Builders take the run's :class:`~stopgrad.config.Config` and the number of image channels.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from torch import nn

from .. import heads
from ..backbones import build_backbone
from .siamese import Siamese

if TYPE_CHECKING:
    from ..config import Config

# name -> "module:builder" inside stopgrad.methods, imported when the method is built
_BUILDERS = {
    "simsiam": "siamese:build",
    "byol": "siamese:build",
    "instdisc": "instdisc:build",
    "moco-v2": "moco:build_v2",
    "moco-v3": "moco:build_v3",
    "simo": "simo:build",
    "simclr": "simclr:build",
    "end-to-end": "end_to_end:build",
    "directclr": "directclr:build",
    "fnc": "fnc:build",
    "triplet": "triplet:build",
    "barlow-twins": "barlow_twins:build",
    "vicreg": "vicreg:build",
    "twist": "twist:build",
    "spcl": "spcl:build",
}
METHODS = tuple(_BUILDERS)


def build_method(cfg: "Config", in_channels: int) -> nn.Module:
    """The method ``cfg.method`` with the backbone, heads and options of ``cfg``."""
    if cfg.method not in _BUILDERS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    module, func = _BUILDERS[cfg.method].split(":")
    return getattr(import_module(f".{module}", __name__), func)(cfg, in_channels)


def backbone_and_heads(cfg: "Config", in_channels: int, predictor: bool = True):
    """(backbone, projector, predictor or None) of ``cfg``'s backbone and head preset."""
    net = build_backbone(cfg.backbone, in_channels, cfg.width)
    shape = heads.HEAD_PRESETS[cfg.heads]
    proj = heads.projector(net.feature_dim, shape["projector"])
    pred = heads.predictor(shape["projector"][-1], shape["predictor"]) if predictor else None
    return net, proj, pred


__all__ = ["METHODS", "Siamese", "build_method", "backbone_and_heads"]
