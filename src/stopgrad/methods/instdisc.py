"""InstDisc: instance discrimination with a memory bank (Wu, Xiong, Yu & Lin 2018, "Unsupervised
feature learning via non-parametric instance discrimination").

Every training image i owns a row v_i of a memory bank: an L2-normalised embedding from an earlier
step. A view's embedding f(x_i) is the query, the bank row v_i its positive and K rows of other
images, drawn uniformly, its negatives; the bank gives targets without gradient (the stop-gradient
of this method: the bank is a buffer, never differentiated). After the loss, the rows of the
batch move toward the new embeddings: v_i <- normalise(m v_i + (1 - m) f_i), m = ``cfg.bank_momentum``.

The number of training images N sizes the bank, a registered buffer ``bank`` (N, D) saved and
resumed with the model. :func:`build` takes it from ``num_images`` or ``cfg.train_subset``; when
neither is known the bank is built empty and the training loop must call
``model.set_num_images(len(train_x))`` before the first step (a checkpoint loaded into an empty
bank resizes it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..losses import info_nce
from .common import contrast_stats, float32_loss, resolve_margin

EMBED_DIM = 128  # the paper's embedding size
NEGATIVES_DEFAULT = 4096  # the paper's K


def random_unit_rows(n: int, dim: int, device=None) -> torch.Tensor:
    """(n, dim) random L2-normalised rows: the bank before any image was seen (the paper: random)."""
    return F.normalize(torch.randn(n, dim, device=device), dim=1)


def sample_negatives(n_rows: int, k: int, exclude: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """(k,) distinct bank rows drawn uniformly from the rows not in ``exclude`` (no host sync)."""
    weights = torch.ones(n_rows, device=exclude.device)
    weights[exclude] = 0.0
    return torch.multinomial(weights, k, replacement=False, generator=generator)


class InstDisc(nn.Module):
    """Backbone, a linear 128-d embedding and a memory bank of one embedding per training image.

    Loss: InfoNCE(f(x), sg bank[i], sg bank[negatives]) with temperature ``cfg.temperature``,
    averaged over every view of every image.

    Deviations from the paper (documented choices):

    * InfoNCE (a softmax over the positive and K negatives) instead of the paper's NCE
      approximation of the non-parametric softmax; no proximal regularisation term.
    * every view is a query (the loop makes ``cfg.views`` >= 2 views; the paper uses one view per
      image per step); the bank row moves toward the normalised mean of the batch's normalised
      view embeddings.
    * K = ``cfg.num_negatives`` (default 4096, as the paper), one draw of K distinct rows per step
      shared by the whole batch, uniform over the rows of images *not* in the batch (so no query
      meets its own row as a negative); K is capped at N - B. The paper samples per query, with
      replacement.
    * temperature ``cfg.temperature`` (library default 0.2; the paper: 0.07); bank momentum
      ``cfg.bank_momentum`` (0.5, as the paper).
    * EqCo: ``cfg.eqco_alpha`` > 0 adds the margin T log(alpha / K) (off by default).
    * the bank changes only in training mode (``model.train()``), in :meth:`forward` after the
      loss; :meth:`update_momentum` is a no-op (no momentum encoder).
    """

    def __init__(self, backbone: nn.Module, num_images: int | None, temperature: float, num_negatives: int,
                 bank_momentum: float, eqco_alpha: float | None, dim: int = EMBED_DIM):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Linear(backbone.feature_dim, dim)  # the paper's linear embedding
        self.temperature, self.num_negatives = temperature, num_negatives
        self.bank_momentum, self.eqco_alpha = bank_momentum, eqco_alpha
        self.register_buffer("bank", random_unit_rows(num_images or 0, dim))

    @property
    def num_images(self) -> int:
        return self.bank.shape[0]

    def set_num_images(self, n: int) -> None:
        """Size the bank for ``n`` training images (fresh random rows unless it already has ``n``)."""
        if n != self.num_images:
            self.bank = random_unit_rows(n, self.bank.shape[1], device=self.bank.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # an empty (unsized) bank takes the checkpoint's size; a sized one must match it
        saved = state_dict.get(prefix + "bank")
        if saved is not None and self.num_images == 0 and saved.shape[0] > 0:
            self.bank = torch.empty(saved.shape, dtype=self.bank.dtype, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def update_momentum(self, momentum: float) -> None:
        """No momentum encoder: the bank is updated in :meth:`forward`."""

    @torch.no_grad()
    def update_bank(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """bank[i] <- normalise(m bank[i] + (1 - m) e_i), e_i = normalised mean of image i's
        normalised view embeddings ``embeddings`` (V, B, D)."""
        new = F.normalize(F.normalize(embeddings.float(), dim=-1).mean(0), dim=1)
        m = self.bank_momentum
        self.bank.index_copy_(0, indices, F.normalize(m * self.bank[indices] + (1 - m) * new, dim=1))

    def forward(self, views: torch.Tensor, partners: torch.Tensor | None = None,
                generator: torch.Generator | None = None, indices: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a (V, B, C, H, W) batch whose images sit at ``indices`` (B,) of the training set.

        ``generator`` drives the negatives' draw; ``partners`` is unused; ``labels`` only reach the
        statistics.
        """
        if indices is None:
            raise ValueError("instdisc needs the batch's training-set indices (its memory bank is per image)")
        n_rows, (n_views, batch) = self.num_images, views.shape[:2]
        if n_rows == 0:
            raise RuntimeError("instdisc's memory bank has no rows: call model.set_num_images(len(train_x)) "
                               "before training (or build with num_images / cfg.train_subset)")
        k = min(self.num_negatives, n_rows - batch * distributed.world())
        if k < 1:
            raise ValueError(f"instdisc needs more training images than the batch size ({n_rows} <= {batch})")
        z = self.encode(views.flatten(0, 1))  # (V*B, D), view-major
        everyone = distributed.gather_constant(indices)  # the global batch: no process's images are negatives
        with torch.no_grad():  # stop-gradient: positives and negatives are bank rows (copies)
            positives = self.bank[indices].repeat(n_views, 1)
            negatives = self.bank[sample_negatives(n_rows, k, everyone, generator)]
        margin = resolve_margin(self.temperature, self.eqco_alpha, k)
        with float32_loss(z):
            loss = info_nce(z.float(), positives, negatives, self.temperature, margin)
        if self.training:  # after the loss (which holds copies of the rows it read); every process the same rows
            views_z = distributed.gather_views(z.detach().unflatten(0, (n_views, batch)), constant=True)
            self.update_bank(everyone, views_z)
        return loss, contrast_stats(loss, k, margin, self.temperature, z, labels)


def build(cfg, in_channels: int, num_images: int | None = None) -> InstDisc:
    """InstDisc from ``cfg`` (reads temperature, num_negatives, bank_momentum, eqco_alpha, backbone, width).

    ``num_images``: training images (bank rows); default ``cfg.train_subset``, else the bank is
    empty until ``set_num_images``.
    """
    from ..backbones import backbone_for
    net = backbone_for(cfg, in_channels)
    return InstDisc(net, num_images if num_images is not None else cfg.train_subset, cfg.temperature,
                    cfg.num_negatives or NEGATIVES_DEFAULT, cfg.bank_momentum, cfg.eqco_alpha)
