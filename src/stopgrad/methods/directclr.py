"""DirectCLR (Jing et al., "Understanding Dimensional Collapse in Contrastive Self-supervised
Learning", ICLR 2022).

No projector: the loss reads the first d0 = ``cfg.directclr_dim`` dimensions of the backbone
representation r itself, z = r[:, :d0]; the whole r is what is evaluated. The loss, as in the
authors' code, is the symmetrised cross-view InfoNCE: ½ InfoNCE(z1 -> z2) + ½ InfoNCE(z2 -> z1),
each query's positive the other view of its image and its negatives the other images' other view
(K = B - 1), not SimCLR's 2B - 2. Nothing is detached. Temperature ``cfg.temperature`` (the
authors use 0.1; set it with ``--temperature 0.1``).

EqCo: with a positive ``cfg.eqco_alpha`` the positive similarity is lowered by
m = T log(alpha / (B - 1)); ``stats["mi_bound"]`` = log K + m/T - L.

Deviations: the authors' code also trains a linear classifier on the detached r with labels, for
monitoring only (it cannot change the backbone); we have no labels in training and omit it.
DirectCLR's argument relies on the residual connection of a ResNet; ``small-cnn`` has none (use a
ResNet backbone to test that). For ``small-cnn`` r is the flattened (8w, 2, 2) pooled map, so the
first d0 dimensions are the first d0/4 channels at the four positions. Views beyond the first two
are not encoded.
"""
from __future__ import annotations

import torch
from torch import nn

from ..backbones import backbone_for
from ..losses import info_nce_in_batch
from .common import InBatchContrastive


class DirectCLR(InBatchContrastive):
    def __init__(self, backbone: nn.Module, dim: int, temperature: float, eqco_alpha: float | None):
        if not 1 <= dim <= backbone.feature_dim:
            from ..config import ConfigError
            raise ConfigError(f"directclr_dim {dim} must be between 1 and the backbone's {backbone.feature_dim} "
                              "feature dimensions")
        super().__init__(backbone, nn.Identity(), temperature, eqco_alpha)  # no projector
        self.dim = dim

    def embed(self, views: torch.Tensor, n_views: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """The sub-vectors r[:, :d0] of the views (the rest of r gets no direct gradient), and of the raw output."""
        r, raw = super().embed(views, n_views)
        return r[..., :self.dim], raw[:, :self.dim]

    def negatives(self, batch: int) -> int:
        return batch - 1

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
        """Symmetric InfoNCE on r[:, :d0] of views 0 and 1."""
        return 0.5 * (info_nce_in_batch(z1, z2, self.temperature, margin)
                      + info_nce_in_batch(z2, z1, self.temperature, margin))


def build(cfg, in_channels: int) -> DirectCLR:
    return DirectCLR(backbone_for(cfg, in_channels), cfg.directclr_dim, cfg.temperature,
                     cfg.eqco_alpha)
