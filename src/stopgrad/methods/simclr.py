"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020).

Loss: NT-Xent over the 2B embeddings of views 0 and 1 (each anchor: one positive, the other view
of its image; K = 2B - 2 negatives, every other embedding), temperature ``cfg.temperature``.
Nothing is detached: both views are queries and keys, with gradient.

EqCo (Zhu et al., "EqCo: Equivalent Rules for Self-supervised Contrastive Learning"): when
``cfg.eqco_alpha`` is a positive number the positive similarity is lowered by
m = T log(alpha / K) with the physical K = 2B - 2 (the paper applies EqCo to SimCLR too);
``None`` or 0 leaves it off. ``stats["mi_bound"]`` = log K + m/T - L, EqCo's mutual-information
lower bound (log alpha - L under the rule).

Deviations from the paper: the small CPU heads by default (``cfg.heads``; the paper's projector
is 2048 -> 2048 -> 128 with ReLU); SGD rather than LARS; the loss is the mean over the 2B anchors
(the reference code sums the two views' means, a factor 2 on the learning rate); views beyond
the first two (``--views 4``) are not encoded.
"""
from __future__ import annotations

import torch

from ..losses import nt_xent_margin
from .common import InBatchContrastive


class SimCLR(InBatchContrastive):
    def negatives(self, batch: int) -> int:
        return 2 * batch - 2  # every other embedding but the anchor's positive

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
        """NT-Xent of views 0 and 1."""
        return nt_xent_margin(z1, z2, self.temperature, margin)


def build(cfg, in_channels: int) -> SimCLR:
    from . import backbone_and_heads
    return SimCLR(*backbone_and_heads(cfg, in_channels, predictor=False)[:2], cfg.temperature, cfg.eqco_alpha)
