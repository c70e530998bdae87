"""SimSiam and BYOL, each with a choice of stop-gradient policy (see :mod:`stopgrad.gsg`).

One composition covers both: an online encoder (backbone + projector), a predictor, and a source
of targets. SimSiam's targets are the online projections (stop-gradient inside the loss); BYOL's
come from a momentum copy of backbone + projector that only :meth:`update_momentum` changes.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..ema import ema_update, momentum_copy
from ..gsg import pair_loss
from .common import embedding_stats


class Siamese(nn.Module):
    """Two-branch predictor/stop-gradient learner.

    Args:
        backbone: images -> features (has ``feature_dim``).
        projector: features -> projections z.
        predictor: z -> p; ``None`` for the no-predictor ablation (h = identity).
        policy: stop-gradient policy, one of :data:`stopgrad.gsg.POLICIES`.
        momentum_target: BYOL when True (targets from an EMA copy), SimSiam when False.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None,
                 policy: str, momentum_target: bool):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.predictor = predictor if predictor is not None else nn.Identity()
        self.policy = policy
        self.target = momentum_copy(nn.Sequential(backbone, projector)) if momentum_target else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        if self.target is not None:
            ema_update(self.target, nn.Sequential(self.backbone, self.projector), momentum)

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for one batch.

        Args:
            views: (V, B, C, H, W) augmented views, V = 2 or 4. With 4 views the partner role of
                each image uses its views 3 and 4 (the faithful mode); with 2 views its own two
                views are reused for the partner role (the equal-compute mode).
            partners: (B,) index of each image's partner, a derangement; under torchrun with
                ``gsg_partners: global``, (W * B,) partners within the global batch.
            generator: drives the ``random`` policy.
            indices: unused (the images' training-set positions, for methods with a memory).
            labels: (B,) the images' labels, or None; read only by the statistics.
        Returns:
            (scalar loss, statistics): ``collapse_std`` (and the label similarities of
            :func:`~stopgrad.methods.common.embedding_stats`), still on the device.
        """
        n_views, batch = views.shape[:2]
        flat = views.flatten(0, 1)  # (V*B, C, H, W): one encoder call for every view
        z = self.encode(flat)
        # the loss in float32 whatever precision the networks ran in (bfloat16 under autocast)
        p = self.predictor(z).float().unflatten(0, (n_views, batch))  # (V, B, D)
        if self.target is None:
            targets = z.float().unflatten(0, (n_views, batch))
        else:
            with torch.no_grad():
                targets = self.target(flat).float().unflatten(0, (n_views, batch))
        if len(partners) != batch:  # global partners (torchrun, gsg_partners: global): the global batch's loss
            p, targets = distributed.gather_views(p), distributed.gather_views(targets, constant=True)
        role_b = slice(2, 4) if n_views == 4 else slice(0, 2)
        loss = pair_loss(p[:2], targets[:2], p[role_b][:, partners], targets[role_b][:, partners],
                         self.policy, generator)
        return loss, embedding_stats(z, labels)  # collapse_std: ~1/sqrt(D) when healthy, 0 when collapsed


def build(cfg, in_channels: int) -> Siamese:
    """SimSiam (``cfg.method == "simsiam"``) or BYOL, with ``cfg.stopgrad`` and ``cfg.predictor``."""
    from . import backbone_and_heads
    net, proj, pred = backbone_and_heads(cfg, in_channels, cfg.predictor)
    return Siamese(net, proj, pred, cfg.stopgrad, momentum_target=(cfg.method == "byol"))
