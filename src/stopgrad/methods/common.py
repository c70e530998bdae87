"""What the methods share: the EqCo margin of a run, the statistics they report, the float32 context
of a loss, and the encoder of the in-batch contrastive methods.

Statistics (scalar tensors left on the device; the training loop averages them per epoch):

* ``collapse_std`` (every method): the mean over dimensions of the per-dimension standard
  deviation of the L2-normalised online embeddings of all views: ~1/sqrt(D) healthy, 0 collapsed.
* ``mi_bound`` (the InfoNCE methods) = log K + m/T - L: EqCo's empirical lower bound on the mutual
  information between the two views (Zhu et al. 2020, Eq. 6), with K the method's physical number
  of negatives per query, m its EqCo margin (0 when EqCo is off), T the temperature and L the
  batch's mean per-query InfoNCE loss (the plain cross-entropy, before any method-specific scale
  such as MoCo v3's 2T). With EqCo's rule m = T log(alpha / K) it reads log alpha - L.
* ``margin`` (the InfoNCE methods): m.
* ``tp_similarity``, ``fn_similarity``, ``tn_similarity`` (every method, when the training loop
  passes the batch's labels): mean cosine similarity, in the projection space, of an anchor (view
  1 of an image) and its true positive (view 2 of the same image); of the anchor and view 2 of the
  other images of the batch that share its label (the "false negatives" a contrastive loss pushes
  away, SPCL's Table 2); and of the anchor and view 2 of the images with another label. NaN for a
  batch that has no such pair (the loop averages over the batches that have one). Labels are read
  only here, for monitoring: no loss sees them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_views
from ..losses import eqco_margin


def resolve_margin(temperature: float, alpha: float | None, k: int, default_alpha: float | None = None) -> float:
    """The EqCo margin m = T log(alpha / K) of a run with K physical negatives per query, or 0 when EqCo is off.

    ``alpha`` is ``cfg.eqco_alpha``: None means the method's ``default_alpha`` (None: off), 0 means off.
    """
    alpha = default_alpha if alpha is None else alpha
    return eqco_margin(temperature, alpha, k) if alpha else 0.0


@torch.no_grad()
def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """``collapse_std`` of the (N, D) online embeddings ``z`` (see the module docstring)."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


@torch.no_grad()
def view_similarities(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``tp_similarity``, ``fn_similarity``, ``tn_similarity`` of two (B, D) views of B images with
    labels (B,) (see the module docstring); computed on the device, NaN where a batch has no pair."""
    sim = F.normalize(z1.detach().float(), dim=1) @ F.normalize(z2.detach().float(), dim=1).T  # (B, B)
    own = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    same = labels[:, None] == labels[None, :]

    def mean_over(mask: torch.Tensor) -> torch.Tensor:
        return (sim * mask).sum() / mask.sum()  # 0 / 0 = NaN when the batch has no such pair

    return {"tp_similarity": sim.diagonal().mean(), "fn_similarity": mean_over(same & ~own),
            "tn_similarity": mean_over(~same)}


@torch.no_grad()
def embedding_stats(z: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Statistics of the (V*B, D) view-major online embeddings ``z`` of a batch: ``collapse_std``
    and, with the batch's (B,) ``labels``, the similarities of :func:`view_similarities` between
    views 1 and 2 (rows 0..B-1 and B..2B-1)."""
    stats = {"collapse_std": collapse_std(z)}
    if labels is not None:
        b = len(labels)
        stats.update(view_similarities(z[:b], z[b:2 * b], labels))
    return stats


@torch.no_grad()
def contrast_stats(loss: torch.Tensor, k: int, margin: float, temperature: float,
                   online: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``mi_bound``, ``margin`` and :func:`embedding_stats` of an InfoNCE method (see the module docstring).

    ``loss``: L, the mean per-query InfoNCE; ``online``: the (V*B, D) view-major online embeddings.
    """
    mi_bound = math.log(k) + margin / temperature - loss.detach()
    return {"mi_bound": mi_bound, "margin": torch.full_like(mi_bound, margin), **embedding_stats(online, labels)}


def float32_loss(x: torch.Tensor):
    """Autocast off on ``x``'s device around a loss: its matmuls in float32 (autocast would redo them
    in bfloat16 whatever the inputs' dtype)."""
    return torch.autocast(x.device.type, enabled=False)


class InBatchContrastive(nn.Module):
    """Backbone + head (``nn.Identity`` for none); no momentum copy, no memory.

    :meth:`forward` is the in-batch InfoNCE step of views 0 and 1 of a subclass that defines
    :meth:`negatives` (K per query) and :meth:`contrast` (the loss, with gradient through every
    embedding); a method with another step overrides :meth:`forward`.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, temperature: float | None = None,
                 eqco_alpha: float | None = None):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.temperature, self.eqco_alpha = temperature, eqco_alpha

    def embed(self, views: torch.Tensor, n_views: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_views, B, D) float32 embeddings of the first ``n_views`` views, from one encoder
        call, and the raw (n_views * b, D) output of this process's b images for the statistics.

        Under torchrun B is the global batch: every process's rows, gathered with their gradient
        (:func:`stopgrad.distributed.gather_views`), so the loss's negatives span the global batch.
        """
        n_views = min(n_views, views.shape[0])
        z = self.projector(self.backbone(views[:n_views].flatten(0, 1)))
        # the loss in float32 whatever precision the networks ran in (bfloat16 under autocast)
        return gather_views(z.float().unflatten(0, (n_views, views.shape[1]))), z

    def negatives(self, batch: int) -> int:
        """K, the physical negatives per query of a batch of ``batch`` images."""
        raise NotImplementedError

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
        """The loss of the (B, D) float32 embeddings of views 0 and 1 with EqCo margin ``margin``."""
        raise NotImplementedError

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`contrast` of views 0 and 1 ((V, B, C, H, W)); ``partners``, ``generator``, ``indices`` unused,
        ``labels`` for the statistics only."""
        (z1, z2), raw = self.embed(views)
        k = self.negatives(len(z1))
        margin = resolve_margin(self.temperature, self.eqco_alpha, k)
        with float32_loss(z1):
            loss = self.contrast(z1, z2, margin)
        return loss, contrast_stats(loss, k, margin, self.temperature, raw, labels)

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """No momentum copy: nothing to do."""


def two_views_only(cfg) -> None:
    """A ConfigError for ``--views 4`` with a method that encodes exactly two views per image."""
    from ..config import ConfigError
    if cfg.views != 2:
        raise ConfigError(f"{cfg.method} trains on two views of each image; drop --views {cfg.views}")
