"""SiMo: "simplified MoCo" (Zhu et al. 2020, "EqCo: Equivalent rules for self-supervised contrastive
learning", Sec. 3), MoCo v2 without the queue, with EqCo's margin.

The momentum key encoder embeds the positives *and* the negatives from the current batch: query
q_i (online encoder, view 1) has positive k_i (key encoder, view 2) and K negatives k_j, j != i,
the other images' keys of the same view (stop-gradient: keys are computed under no_grad). With K
physical negatives the EqCo margin m = T log(alpha / K) makes them count as alpha.

Defaults (``cfg`` keys): K = ``num_negatives``, default all B - 1 other images (the paper: 16 per
query with 256 queries); when K < B - 1 each query draws its own K negatives without replacement
(``generator`` when given). ``eqco_alpha``: None means 256, 0 turns EqCo off. The paper's
default alpha for SiMo is 256: Sec. 3 (Fig. 4) keeps the accuracy of the large-K baseline at very
small K "by setting [alpha] to 256" (the symbol is garbled in the paper's text, the value legible), and
256 is the first and reference column of its alpha ablation (Table 3: alpha = 256 ... 65536 gives
68.0 ... 68.5 %; 65536 is best, 256 is the setting the method is introduced with).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import distributed, heads
from ..losses import info_nce_in_batch
from .common import contrast_stats, float32_loss, resolve_margin
from .moco import MomentumContrast, moco_projector

ALPHA_DEFAULT = 256.0


def sample_in_batch_negatives(batch: int, k: int, generator: torch.Generator | None = None,
                              device=None) -> torch.Tensor:
    """(B, k) indices of k distinct negatives per query among the other B - 1 images, uniformly."""
    scores = torch.rand(batch, batch - 1, generator=generator, device=device)
    idx = scores.argsort(dim=1)[:, :k]  # k distinct positions among the B - 1 others
    return idx + (idx >= torch.arange(batch, device=device)[:, None]).long()  # skip the query's own column


class SiMo(MomentumContrast):
    """SiMo: query encoder (backbone + projector with BN on every layer), momentum key encoder,
    in-batch negatives, EqCo margin.

    Deviations from the paper (documented choices):

    * symmetrised loss, as :class:`~stopgrad.methods.moco.MoCoV2` here:
      L = 1/2 [InfoNCE(q1; k2) + InfoNCE(q2; k1)] (SiMo, like MoCo v2, is asymmetric); negatives
      of a query come from the key view of its positive.
    * "sync BN" in one process is plain BatchNorm over the batch (both views in one encoder call);
      no shuffle-BN, as in the paper: positives and negatives share the batch's statistics.
    * K default B - 1 (the paper: 16); larger ``num_negatives`` are capped at B - 1.
    * head: MoCo v2's MLP with BN after every linear layer, hidden sizes from the ``cfg.heads``
      preset minus its output layer, output 128.
    * momentum ``cfg.ema_momentum`` (library default 0.99; the paper: 0.999); temperature
      ``cfg.temperature`` (0.2, as MoCo v2); no warm-up unless ``cfg.warmup_epochs``.
    * two views only (``--views 4`` is refused by :func:`build`).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, temperature: float,
                 num_negatives: int | None, eqco_alpha: float | None):
        super().__init__(backbone, projector, temperature, eqco_alpha)
        self.num_negatives = num_negatives

    def forward(self, views: torch.Tensor, partners: torch.Tensor | None = None,
                generator: torch.Generator | None = None, indices: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetrised SiMo loss of a (2, B, C, H, W) batch; ``generator`` drives the negatives' draw;
        ``labels`` only reach the statistics."""
        if views.shape[0] != 2:
            raise ValueError(f"simo takes 2 views, got {views.shape[0]}")
        local = views.shape[1]
        flat = views.flatten(0, 1)
        z = self.encode(flat)
        q = distributed.gather_views(z.float().unflatten(0, (2, local)))  # under torchrun: the global batch
        with torch.no_grad():  # stop-gradient: positives and negatives from the momentum encoder
            k = distributed.gather_views(self.key_encoder(flat).float().unflatten(0, (2, local)), constant=True)
        batch = q.shape[1]
        n_neg = batch - 1 if self.num_negatives is None else min(self.num_negatives, batch - 1)
        negatives = [None, None] if n_neg == batch - 1 else \
            [sample_in_batch_negatives(batch, n_neg, generator, q.device) for _ in range(2)]
        t = self.temperature
        margin = resolve_margin(t, self.eqco_alpha, n_neg, ALPHA_DEFAULT)
        with float32_loss(q):
            loss = 0.5 * (info_nce_in_batch(q[0], k[1], t, margin, negatives[0])
                          + info_nce_in_batch(q[1], k[0], t, margin, negatives[1]))
        return loss, contrast_stats(loss, n_neg, margin, t, z, labels)


def build(cfg, in_channels: int) -> SiMo:
    """SiMo from ``cfg`` (reads temperature, num_negatives, eqco_alpha, heads, backbone, width)."""
    from ..backbones import backbone_for
    from .moco import require_two_views
    require_two_views(cfg)
    net = backbone_for(cfg, in_channels)
    proj = moco_projector(net.feature_dim, heads.HEAD_PRESETS[cfg.heads]["projector"][:-1], batch_norm=True)
    return SiMo(net, proj, cfg.temperature, cfg.num_negatives, cfg.eqco_alpha)
