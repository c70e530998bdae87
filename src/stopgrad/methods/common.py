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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
def contrast_stats(loss: torch.Tensor, k: int, margin: float, temperature: float,
                   online: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mi_bound``, ``margin`` and ``collapse_std`` of an InfoNCE method (see the module docstring).

    ``loss``: L, the mean per-query InfoNCE; ``online``: the (N, D) online embeddings of all views.
    """
    mi_bound = math.log(k) + margin / temperature - loss.detach()
    return {"mi_bound": mi_bound, "margin": torch.full_like(mi_bound, margin), "collapse_std": collapse_std(online)}


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
        call, and the raw (n_views * B, D) output for the statistics."""
        n_views = min(n_views, views.shape[0])
        z = self.projector(self.backbone(views[:n_views].flatten(0, 1)))
        # the loss in float32 whatever precision the networks ran in (bfloat16 under autocast)
        return z.float().unflatten(0, (n_views, views.shape[1])), z

    def negatives(self, batch: int) -> int:
        """K, the physical negatives per query of a batch of ``batch`` images."""
        raise NotImplementedError

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
        """The loss of the (B, D) float32 embeddings of views 0 and 1 with EqCo margin ``margin``."""
        raise NotImplementedError

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`contrast` of views 0 and 1 ((V, B, C, H, W)); ``partners``, ``generator``, ``indices`` unused."""
        (z1, z2), raw = self.embed(views)
        k = self.negatives(len(z1))
        margin = resolve_margin(self.temperature, self.eqco_alpha, k)
        with float32_loss(z1):
            loss = self.contrast(z1, z2, margin)
        return loss, contrast_stats(loss, k, margin, self.temperature, raw)

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """No momentum copy: nothing to do."""
