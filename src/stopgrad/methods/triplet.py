"""Truncated triplet (Wang et al., "Solving Inefficiency of Self-supervised Representation
Learning", ICCV 2021).

A triplet loss whose negative is not the hardest one (rank 1, which over-clusters, pushing apart
images of one class) but a "deputy": the rank-k closest negative, k = ``cfg.triplet_rank``, or
with ``cfg.triplet_smoothed`` the mean of ranks 2..2k+1. On L2-normalised projections, with
d = squared Euclidean distance:
L = max(0, d(a, p) - d(a, deputy) + ``cfg.triplet_margin``) (:func:`stopgrad.losses.truncated_triplet`).
Anchor view 0, positive the same image's view 1, negatives the other images' view-1 embeddings
(K = B - 1); symmetrised over the two views (½ each), as the authors' code does. Nothing is
detached.

Deviations from the authors' code, which builds the loss into BYOL: there, anchors are online
*predictions* and positives/negatives come from a momentum target network (no gradient), the
distance is -2 cos (= d - 2, the same differences), and the loss is γ·d(a, p) - d(a, deputy) + 100
with γ = 2 and a hinge that never acts (the smoothed rank there: ranks 2..10). Here the loss stands
alone on one encoder with gradient through every embedding, γ = 1, and a margin of 0.2 by default
(a margin >= 4 makes the hinge inactive, the code's linear loss). The rank must fit the batch:
k <= B - 1 (smoothed: 2k + 1 <= B - 1). Small CPU heads; views beyond the first two are not encoded.
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import truncated_triplet
from .common import InBatchContrastive, embedding_stats, float32_loss


class TruncatedTriplet(InBatchContrastive):
    def __init__(self, backbone: nn.Module, projector: nn.Module, rank: int, smoothed: bool, margin: float):
        super().__init__(backbone, projector)
        self.rank, self.smoothed, self.margin = rank, smoothed, margin

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric truncated triplet of views 0 and 1; the other arguments are unused."""
        (z1, z2), raw = self.embed(views)
        with float32_loss(z1):
            loss = 0.5 * (truncated_triplet(z1, z2, self.rank, self.smoothed, self.margin)
                          + truncated_triplet(z2, z1, self.rank, self.smoothed, self.margin))
        return loss, embedding_stats(raw, labels)


def build(cfg, in_channels: int) -> TruncatedTriplet:
    from ..config import ConfigError
    from . import backbone_and_heads
    last = 2 * cfg.triplet_rank + 1 if cfg.triplet_smoothed else cfg.triplet_rank
    if last > cfg.batch_size - 1:
        raise ConfigError(f"triplet_rank {cfg.triplet_rank}{' smoothed' if cfg.triplet_smoothed else ''} needs "
                          f"{last} negatives per anchor, a batch of {cfg.batch_size} has {cfg.batch_size - 1}")
    return TruncatedTriplet(*backbone_and_heads(cfg, in_channels, predictor=False)[:2], cfg.triplet_rank,
                            cfg.triplet_smoothed, cfg.triplet_margin)
