"""Barlow Twins (Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021).

Loss (:func:`stopgrad.losses.barlow_twins`): each dimension of the two views' projections is
standardised over the batch (affine-free batch norm, biased variance), C = z~1^T z~2 / B is their
cross-correlation, and L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 with lambda =
``cfg.bt_lambda`` (the paper's 5e-3). No negatives, no predictor, no momentum copy and no
stop-gradient: the loss cannot be minimised by a collapsed (constant) embedding.

Projector (:func:`stopgrad.heads.expander`): Linear-BN-ReLU, Linear-BN-ReLU, Linear without bias,
as in the authors' code. ``--heads barlow-twins`` gives the paper's 8192-8192-8192; the default
``small`` preset gives 512-512-512 (:data:`stopgrad.heads.SMALL_EXPANDER`); another preset gives
its projector sizes.

Deviations from the paper: SGD with the run's schedule rather than LARS (lr 0.2, cosine, by
default; the authors' separate learning rate for biases and BN parameters is not used); two views
only (``--views 4`` is an error). The loss is not rescaled (the authors' early code multiplied it
by 1/32 along with a larger learning rate; the paper's loss has no such factor).
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import barlow_twins
from .common import InBatchContrastive, embedding_stats, float32_loss, two_views_only


class BarlowTwins(InBatchContrastive):
    def __init__(self, backbone: nn.Module, projector: nn.Module, lambd: float):
        super().__init__(backbone, projector)
        self.lambd = lambd

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Barlow Twins loss of views 0 and 1 ((2, B, C, H, W)); ``partners``, ``generator`` and
        ``indices`` are unused, ``labels`` reach the statistics only."""
        (z1, z2), raw = self.embed(views)
        with float32_loss(z1):
            loss = barlow_twins(z1, z2, self.lambd)
        return loss, embedding_stats(raw, labels)


def build(cfg, in_channels: int) -> BarlowTwins:
    from .. import heads
    from ..backbones import backbone_for
    two_views_only(cfg)
    net = backbone_for(cfg, in_channels)
    return BarlowTwins(net, heads.expander(net.feature_dim, heads.expander_sizes(cfg.heads)), cfg.bt_lambda)
