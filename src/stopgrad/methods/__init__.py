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
from ..backbones import backbone_for
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

# name -> (one line on what it is, its paper); `stopgrad list` prints them
METHOD_INFO = {
    "simsiam": ("Siamese network, predictor and stop-gradient; --stopgrad picks GSG's policy",
                "Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021"),
    "byol": ("SimSiam's loss with a momentum (EMA) target network; --stopgrad picks GSG's policy",
             "Grill et al., Bootstrap Your Own Latent, NeurIPS 2020"),
    "instdisc": ("instance discrimination against a memory bank of per-image embeddings",
                 "Wu et al., Unsupervised Feature Learning via Non-Parametric Instance Discrimination, CVPR 2018"),
    "moco-v2": ("momentum key encoder and a queue of negatives, shuffle-BN",
                "Chen et al., Improved Baselines with Momentum Contrastive Learning, 2020"),
    "moco-v3": ("momentum keys, predictor, in-batch negatives; --stopgrad applies",
                "Chen, Xie & He, An Empirical Study of Training Self-Supervised Vision Transformers, ICCV 2021"),
    "simo": ("MoCo without a queue, negatives sampled from the batch, EqCo margin",
             "Zhu et al., EqCo: Equivalent Rules for Self-supervised Contrastive Learning, 2020"),
    "simclr": ("NT-Xent over the two views of the batch",
               "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020"),
    "end-to-end": ("InfoNCE with in-batch keys from the same encoder (MoCo's baseline)",
                   "He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020"),
    "directclr": ("InfoNCE on the first dimensions of the representation, no projector",
                  "Jing et al., Understanding Dimensional Collapse in Contrastive SSL, ICLR 2022"),
    "fnc": ("SimCLR with false-negative cancellation (elimination or attraction)",
            "Huynh et al., Boosting Contrastive SSL with False Negative Cancellation, WACV 2022"),
    "triplet": ("truncated triplet: a rank-k 'deputy' negative instead of the hardest",
                "Wang et al., Solving Inefficiency of Self-supervised Representation Learning, ICCV 2021"),
    "barlow-twins": ("cross-correlation of the two views driven to the identity",
                     "Zbontar et al., Barlow Twins, ICML 2021"),
    "vicreg": ("variance, invariance and covariance regularisation",
               "Bardes, Ponce & LeCun, VICReg, ICLR 2022"),
    "twist": ("twin class distributions: consistency, sharpness, diversity",
              "Wang et al., Self-Supervised Learning by Estimating Twin Class Distributions, 2021"),
    "spcl": ("SimCLR plus prototypes from k-means, a Siamese metric loss and prototypical cross-entropy",
             "Mo, Sun & Li, Siamese Prototypical Contrastive Learning, BMVC 2021"),
}


def build_method(cfg: "Config", in_channels: int) -> nn.Module:
    """The method ``cfg.method`` with the backbone, heads and options of ``cfg``.

    Args:
        cfg: the run's configuration (:func:`~stopgrad.config.build_config`); ``method`` is one of
            :data:`METHODS`.
        in_channels: C of the images.
    Returns:
        an ``nn.Module`` with ``backbone`` and ``forward(views, partners) -> (loss, stats)``: views
        (V, B, C, H, W), partners (B,) int64 (a :func:`~stopgrad.gsg.derangement`), loss a scalar,
        stats a dict of scalars (see the module docstring).

    >>> _ = torch.manual_seed(0)
    >>> model = sg.build_method(sg.build_config(overrides={"method": "byol", "width": 4}), in_channels=1)
    >>> model.backbone.feature_dim  # small-cnn-grid: 8w channels x the last 4x4 map
    512
    >>> views = torch.randn(2, 8, 1, 28, 28)  # (V, B, C, H, W): two views of 8 images
    >>> loss, stats = model(views, sg.derangement(8))
    >>> loss.shape, sorted(stats)
    (torch.Size([]), ['collapse_std'])
    >>> loss.backward()  # then an optimiser step, then the momentum copy follows:
    >>> model.update_momentum(0.99)
    >>> sg.build_method(sg.Config(method="swav"), in_channels=1)  # Config() itself does not validate
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'swav'; choose one of simsiam, byol, ...
    """
    if cfg.method not in _BUILDERS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    module, func = _BUILDERS[cfg.method].split(":")
    return getattr(import_module(f".{module}", __name__), func)(cfg, in_channels)


def backbone_and_heads(cfg: "Config", in_channels: int, predictor: bool = True):
    """(backbone, projector, predictor or None) of ``cfg``'s backbone and head preset."""
    net = backbone_for(cfg, in_channels)
    shape = heads.HEAD_PRESETS[cfg.heads]
    proj = heads.projector(net.feature_dim, shape["projector"])
    pred = heads.predictor(shape["projector"][-1], shape["predictor"]) if predictor else None
    return net, proj, pred


__all__ = ["METHODS", "METHOD_INFO", "Siamese", "build_method", "backbone_and_heads"]
