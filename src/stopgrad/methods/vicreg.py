"""VICReg (Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022).

Loss (:func:`stopgrad.losses.vicreg`) on the two views' expander outputs Z1, Z2 (B x D):
lambda * s(Z1, Z2) + mu * 1/2 [v(Z1) + v(Z2)] + nu * [c(Z1) + c(Z2)], with s the mean squared
difference, v the hinge max(0, gamma - sqrt(Var + eps)) per dimension, c the squared off-diagonal
covariances / D; (lambda, mu, nu) = ``cfg.vicreg_weights`` (the paper's 25, 25, 1), gamma = 1,
eps = 1e-4. The variance term averages the two branches, as the authors' code does (the paper's
formula sums them); the statistics ``invariance``, ``variance``, ``covariance`` are the unweighted
terms (``variance`` > 0 means some dimension's std is below gamma: the collapse the term prevents).

Expander (:func:`stopgrad.heads.expander`): Linear-BN-ReLU, Linear-BN-ReLU, Linear without bias, as
in the authors' code; ``--heads vicreg`` gives the paper's 8192-8192-8192, the default ``small``
preset 512-512-512.

Optimiser: the paper's by default (:data:`stopgrad.optim.METHOD_DEFAULTS`): LARS with biases and
norm parameters excluded from adaptation and weight decay, base lr 0.2 x batch / 256
(``lr_scaling: linear``), weight decay 1e-6; the run's schedule (cosine by default; the paper warms
up for 10 of 1000 epochs, ``--warmup-epochs``). With ``--optimizer sgd`` the default lr is 0.05:
with plain SGD at 0.2 the unnormalised expander output grows, the covariance term (fourth power of
that scale) explodes and the run diverges within a few dozen steps on Fashion-MNIST; LARS's
per-layer step bound prevents this. Deviation: two views only.
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import vicreg_terms
from .common import InBatchContrastive, embedding_stats, float32_loss, two_views_only


class VICReg(InBatchContrastive):
    def __init__(self, backbone: nn.Module, expander: nn.Module, weights: tuple[float, float, float]):
        super().__init__(backbone, expander)
        self.weights = tuple(weights)

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """VICReg loss of views 0 and 1 ((2, B, C, H, W)); ``partners``, ``generator`` and
        ``indices`` are unused, ``labels`` reach the statistics only."""
        (z1, z2), raw = self.embed(views)
        with float32_loss(z1):
            terms = vicreg_terms(z1, z2)  # the loss's own gamma = 1, eps = 1e-4
            loss = sum(w * t for w, t in zip(self.weights, terms))
        stats = embedding_stats(raw, labels)
        stats.update({name: t.detach() for name, t in zip(("invariance", "variance", "covariance"), terms)})
        return loss, stats


def build(cfg, in_channels: int) -> VICReg:
    from .. import heads
    from ..backbones import backbone_for
    two_views_only(cfg)
    net = backbone_for(cfg, in_channels)
    return VICReg(net, heads.expander(net.feature_dim, heads.expander_sizes(cfg.heads)), cfg.vicreg_weights)
