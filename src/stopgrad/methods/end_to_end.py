"""The end-to-end baseline of MoCo (He et al., "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, Fig. 2a / Fig. 3).

The dictionary is the current mini-batch: queries q = f(view 0), keys k = f(view 1) from the SAME
encoder, with gradient (no momentum copy, no detach: back-propagating through the keys is what
"end-to-end" means and why K is tied to the batch size). InfoNCE per query: positive its own
image's key, negatives the other images' keys, K = B - 1. Temperature ``cfg.temperature``.

The loss is asymmetric, one direction per image (q from view 0, k from view 1), as in MoCo v1,
whose loss the end-to-end baseline shares; the symmetrised loss came later (MoCo v3).

EqCo: with a positive ``cfg.eqco_alpha`` the positive similarity is lowered by
m = T log(alpha / (B - 1)); ``stats["mi_bound"]`` = log K + m/T - L.

Deviations: the small CPU heads by default (MoCo v1 has a linear 128-d head); our SGD settings;
views beyond the first two are not encoded.
"""
from __future__ import annotations

import torch

from ..losses import info_nce_in_batch
from .common import InBatchContrastive


class EndToEnd(InBatchContrastive):
    def negatives(self, batch: int) -> int:
        return batch - 1

    def contrast(self, q: torch.Tensor, k: torch.Tensor, margin: float) -> torch.Tensor:
        """InfoNCE of view-0 queries against the batch's view-1 keys; the keys keep their gradient
        (same encoder, no stop-gradient)."""
        return info_nce_in_batch(q, k, self.temperature, margin)


def build(cfg, in_channels: int) -> EndToEnd:
    from . import backbone_and_heads
    return EndToEnd(*backbone_and_heads(cfg, in_channels, predictor=False)[:2], cfg.temperature, cfg.eqco_alpha)
