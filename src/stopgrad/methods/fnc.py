"""SimCLR with false-negative cancellation (Huynh et al., "Boosting Contrastive Self-Supervised
Learning with False Negative Cancellation", WACV 2022).

Loss: SimCLR's NT-Xent over the 2B embeddings of views 0 and 1 (temperature ``cfg.temperature``),
except that each image's likely false negatives are cancelled (:func:`stopgrad.losses.fnc_loss`):

* finding them: each image scores every candidate (the 2B embeddings but its own two) by the
  maximum, over its support views, of the cosine similarity; the top ``cfg.fnc_top_k`` are its
  false negatives, for both of its anchors. The selection is discrete and runs without gradient
  (``torch.no_grad`` in :func:`stopgrad.losses.fnc_false_negatives`); the loss terms themselves
  keep theirs.
* ``cfg.fnc_mode``: ``elimination`` drops them from the denominator; ``attraction`` counts them as
  extra positives: -1/(1+k) times the sum of their log-probabilities and the positive's.

Support views: the authors' code takes the maximum over *all* views of the anchor image, its two
main views and its S extra "support" views. With ``--views 4`` we do the same with views 2 and 3 as
the support views (S = 2): the maximum over views 0-3. With ``--views 2`` there are no extra views
and the two views themselves are the support set (the authors' S = 0).

EqCo: with a positive ``cfg.eqco_alpha`` the image's own positive similarity is lowered by
m = T log(alpha / K) with the physical negatives in its denominator, K = 2B - 2 - k (elimination)
or 2B - 2 (attraction: the attracted ones stay in the denominator). ``stats["mi_bound"]`` =
log K + m/T - L_pos, with L_pos the InfoNCE term of the image's own positive (the whole loss in
elimination mode; in attraction mode NT-Xent with the margin, which has the same denominator).

Deviations from the paper / code: the support views only find false negatives; the authors' code
also makes them anchors and positives (a multi-view SimCLR). No similarity threshold (the code
also has ``fn_threshold`` combined with top-k; only top-k here). The loss is the mean over the 2B
anchors (the code sums the views' means). Small CPU heads by default, SGD rather than LARS.
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import fnc_loss, nt_xent_margin
from .common import InBatchContrastive, contrast_stats, float32_loss, resolve_margin


class FNC(InBatchContrastive):
    def __init__(self, backbone: nn.Module, projector: nn.Module, temperature: float, eqco_alpha: float | None,
                 mode: str, top_k: int):
        super().__init__(backbone, projector, temperature, eqco_alpha)
        self.mode, self.top_k = mode, top_k

    def negatives(self, batch: int) -> int:
        return 2 * batch - 2 - (self.top_k if self.mode == "elimination" else 0)  # attraction keeps them all

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NT-Xent of views 0 and 1 with false negatives found from views 0-3 (or 0-1 with two views);
        ``partners``, ``generator``, ``indices`` unused; ``labels`` only reach the statistics."""
        z, raw = self.embed(views, n_views=4)  # one encoder call for every view
        z1, z2 = z[0], z[1]
        support = z.detach()  # only for finding false negatives: a discrete choice, no gradient
        negatives = self.negatives(len(z1))
        margin = resolve_margin(self.temperature, self.eqco_alpha, negatives)
        with float32_loss(z1):
            loss = fnc_loss(z1, z2, support, self.temperature, self.top_k, self.mode, margin)
            if self.mode == "elimination":
                positive_term = loss.detach()
            else:
                with torch.no_grad():
                    positive_term = nt_xent_margin(z1, z2, self.temperature, margin)
        return loss, contrast_stats(positive_term, negatives, margin, self.temperature, raw, labels)


def build(cfg, in_channels: int) -> FNC:
    from ..config import ConfigError
    from . import backbone_and_heads
    if cfg.fnc_top_k >= 2 * cfg.batch_size - 2:
        raise ConfigError(f"fnc_top_k {cfg.fnc_top_k} must be below 2 * batch_size - 2 = {2 * cfg.batch_size - 2}, "
                          "the negatives per anchor")
    return FNC(*backbone_and_heads(cfg, in_channels, predictor=False)[:2], cfg.temperature, cfg.eqco_alpha,
               cfg.fnc_mode, cfg.fnc_top_k)
