"""TWIST (Wang, Lin, Chen, Xie and Wang, "Self-Supervised Learning by Estimating Twin Class
Distributions", 2021).

A head maps each view's representation to C = ``cfg.twist_classes`` logits; P^1, P^2 are their
row-wise softmax. Loss (:func:`stopgrad.losses.twist`): consistency (the symmetric KL divergence
of the twin distributions) + sharpness (mean row entropy) - diversity (entropy of the batch-mean
distribution), each averaged over the two views as in the authors' code. Nothing is detached;
no predictor, no momentum copy. The statistics ``consistency``, ``sharpness``, ``diversity`` are
the three terms (diversity near log C with sharpness near 0: every class used, each image
confident; both near 0: collapse to one class).

Head, as in the authors' ``ProjectionHead``: Linear-BN-ReLU layers of the head preset's projector
sizes (``small``: 512, 512), a Linear to C, and an affine-free BatchNorm on the logits (the
authors' ``lbn_type bn``, their default). TP/FN similarity is measured on these normalised logits.

Deviations from the authors' code: C = 128 by default (they use 4096 on ImageNet; 128 suits the
small data sets and batch 128 here); no multi-crop, no momentum encoder, no self-labelling
stage; SGD with the run's schedule rather than LARS; exact logs instead of log(p + 1e-5); two
views only.
"""
from __future__ import annotations

import torch

from ..losses import twist_terms
from .common import InBatchContrastive, embedding_stats, float32_loss, two_views_only


class TWIST(InBatchContrastive):
    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TWIST loss of the class logits of views 0 and 1 ((2, B, C, H, W)); ``partners``,
        ``generator`` and ``indices`` are unused, ``labels`` reach the statistics only."""
        (l1, l2), raw = self.embed(views)
        with float32_loss(l1):
            consistency, sharpness, diversity = twist_terms(l1, l2)
            loss = consistency + sharpness - diversity
        stats = embedding_stats(raw, labels)
        stats.update(consistency=consistency.detach(), sharpness=sharpness.detach(), diversity=diversity.detach())
        return loss, stats


def build(cfg, in_channels: int) -> TWIST:
    from .. import heads
    from ..backbones import backbone_for
    two_views_only(cfg)
    net = backbone_for(cfg, in_channels)
    hidden = heads.HEAD_PRESETS[cfg.heads]["projector"]
    head = heads.mlp([net.feature_dim, *hidden, cfg.twist_classes], last_bn=True, last_bn_affine=False)
    return TWIST(net, head)
