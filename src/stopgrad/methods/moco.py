"""MoCo v2 and MoCo v3: an online query encoder and a momentum key encoder, InfoNCE between them.

Also the momentum encoder pair and MoCo v2's head, which SiMo (:mod:`.simo`) reuses, and encoding
in "ghost" BatchNorm groups (the one-process shuffle-BN). The statistics every InfoNCE method
reports (``mi_bound``, ``margin``, ``collapse_std``) are defined in :mod:`.common`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed, heads
from ..ema import ema_update, momentum_copy
from ..gsg import select_sources
from ..losses import info_nce, info_nce_in_batch
from .common import contrast_stats, float32_loss, resolve_margin

MOCO_DIM = 128  # MoCo v2's (and SiMo's) output embedding size
QUEUE_DEFAULT = 4096  # K of MoCo v2 when cfg.num_negatives is None (the paper: 65536)
GHOST_GROUP = 64  # images per BatchNorm group of the shuffle-BN substitute (MoCo's CIFAR demo: 512 / 8)


# ----------------------------------------------------------------------------- ghost BatchNorm, heads, encoders
def ghost_groups(batch: int, group: int = GHOST_GROUP) -> int:
    """Number of BatchNorm groups for a batch: ~``group`` images each, at least 2, each of >= 2 images.

    1 (no grouping possible) when ``batch < 4``.
    """
    return max(1, min(max(2, batch // group), batch // 2))


def grouped_encode(encoder: nn.Module, x: torch.Tensor, groups: int, strided: bool = False) -> torch.Tensor:
    """``encoder`` applied to ``groups`` sub-batches of ``x`` separately, outputs in ``x``'s order.

    Each sub-batch is its own BatchNorm batch (a "ghost" batch, like one GPU of a multi-GPU run).
    ``strided=False``: contiguous blocks (rows 0..n-1, n..2n-1, ...); ``strided=True``: rows with
    the same index modulo ``groups`` (0, G, 2G, ... / 1, G+1, ...). A contiguous block and a
    strided group share at most ceil(n / G) rows, n = block size: one row when n <= G.
    """
    if groups <= 1:
        return encoder(x)
    if not strided:
        return torch.cat([encoder(part) for part in x.tensor_split(groups)])
    batch = len(x)
    order = torch.argsort(torch.arange(batch, device=x.device) % groups, stable=True)  # group 0 rows, group 1 rows...
    sizes = [len(range(h, batch, groups)) for h in range(groups)]
    out = torch.cat([encoder(part) for part in x[order].split(sizes)])
    return out[torch.argsort(order)]  # un-permute


@torch.no_grad()
def shuffled_encode(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoder`` on a random shard of the global batch, outputs returned for this process's own rows.

    MoCo's shuffle-BN across processes: the global batch is permuted (one permutation, drawn by
    the main process), each process encodes its shard of the permuted batch (its BatchNorm
    statistics come from other images than its queries'), and the outputs are put back in order.
    """
    everyone = distributed.gather_constant(x)  # (W * b, ...)
    perm = torch.randperm(len(everyone), device=x.device) if distributed.rank() == 0 else \
        torch.empty(len(everyone), dtype=torch.long, device=x.device)
    torch.distributed.broadcast(perm, src=0)
    b, r = len(x), distributed.rank()
    mine = perm[r * b:(r + 1) * b]  # the global rows this process encodes
    out = distributed.gather_constant(encoder(everyone[mine]))  # (W * b, D) in permuted order
    return out[torch.argsort(perm)][r * b:(r + 1) * b]  # unshuffled; this process's rows


def moco_projector(in_dim: int, hidden: list[int], out_dim: int = MOCO_DIM, batch_norm: bool = False) -> nn.Sequential:
    """MoCo v2's MLP head ``in -> hidden... -> out`` with ReLU; ``batch_norm`` adds SiMo's BN to every layer."""
    if batch_norm:
        return heads.mlp([in_dim, *hidden, out_dim], last_bn=True)
    layers: list[nn.Module] = []
    for d_in, d_out in zip([in_dim, *hidden[:-1]], hidden):
        layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden[-1] if hidden else in_dim, out_dim))
    return nn.Sequential(*layers)


class MomentumContrast(nn.Module):
    """Query encoder (backbone + projector [+ predictor]) and its frozen EMA copy, the key encoder."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, temperature: float, eqco_alpha: float | None):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.key_encoder = momentum_copy(nn.Sequential(backbone, projector))  # no parameter requires grad
        self.temperature, self.eqco_alpha = temperature, eqco_alpha

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """key encoder <- momentum * key encoder + (1 - momentum) * (backbone + projector)."""
        ema_update(self.key_encoder, nn.Sequential(self.backbone, self.projector), momentum)


# ----------------------------------------------------------------------------- MoCo v2
class MoCoV2(MomentumContrast):
    """MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved baselines with momentum contrastive learning";
    MoCo: He et al. 2020): a query encoder, a momentum key encoder and a FIFO queue of K keys.

    For each query q (query encoder, one view) the positive is the key k of the image's other view
    (key encoder, no gradient) and the negatives are the K queued keys of earlier batches:
    L = InfoNCE(q, sg k, sg queue) with temperature T. After the loss the batch's keys replace the
    oldest queued keys (registered buffers ``queue`` (K, D) and ``queue_ptr``, so a resumed run
    continues with the same queue). The key encoder is an EMA of backbone + projector, changed
    only by :meth:`update_momentum`.

    Shuffle-BN substitute (one process). MoCo shuffles the keys across GPUs so that a query and its
    positive key get their BatchNorm statistics from different sets of images; otherwise the
    positive is the only key in the logits that shares the query's batch statistics and the
    network can find it by that "signature" rather than by content. Here both encoders run on
    ghost BatchNorm groups of ~64 images (:func:`grouped_encode`): the query encoder on contiguous
    blocks of the batch (like one GPU's slice), the key encoder on strided groups (rows i, i+G,
    i+2G, ..., the keys' "shuffle"), outputs put back in batch order. A query's block and its
    key's group share at most ceil(n/G) of their n images (only the image itself when n <= G; a
    random shuffle, as in MoCo, shares n/G on average), so their statistics are different. The batch order is
    itself a fresh random permutation of the data every epoch, so the groups are random sets.
    Below 4 images per batch no grouping is possible and plain BN is used.

    Deviations from the paper (all documented choices):

    * symmetrised loss: both views are queries and both are keys,
      L = 1/2 [InfoNCE(q1, k2) + InfoNCE(q2, k1)], and all 2B keys are enqueued per step
      (MoCo v2 is asymmetric: q from view 1, k from view 2, B keys enqueued). 2x encoder compute.
    * K = ``cfg.num_negatives``, default 4096 (the paper: 65536). The queue holds the keys of the
      last K / (2B) steps; as K approaches 2 N_train (one epoch of keys) queries increasingly meet
      keys of their own image from the previous epoch as negatives: keep K well below 2 N_train.
    * momentum ``cfg.ema_momentum`` (library default 0.99; MoCo: 0.999), temperature
      ``cfg.temperature`` (0.2, as MoCo v2).
    * head: MoCo v2's MLP (no BatchNorm), hidden sizes from the ``cfg.heads`` preset minus its
      output layer, output 128.
    * BatchNorm groups of ~64 images rather than MoCo's 32 per GPU; running statistics are updated
      once per group.
    * EqCo: ``cfg.eqco_alpha`` > 0 adds the margin T log(alpha / K) (off by default).
    * two views only (``--views 4`` is refused by :func:`build_v2`).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, temperature: float, num_negatives: int,
                 eqco_alpha: float | None, dim: int = MOCO_DIM):
        super().__init__(backbone, projector, temperature, eqco_alpha)
        self.register_buffer("queue", F.normalize(torch.randn(num_negatives, dim), dim=1))  # MoCo: random keys
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        """(2, B, D) L2-normalised float32 keys of both views: key encoder in strided BN groups, or
        under torchrun in shuffled shards of the global batch (MoCo's shuffle-BN)."""
        if distributed.active():
            return torch.stack([F.normalize(shuffled_encode(self.key_encoder, v).float(), dim=1) for v in views])
        groups = ghost_groups(views.shape[1])
        return torch.stack([F.normalize(grouped_encode(self.key_encoder, v, groups, strided=True).float(), dim=1)
                            for v in views])

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (n, D) over the oldest queued keys (FIFO, wrapping) and advance the pointer."""
        size = len(self.queue)
        keys = keys[-size:]  # more keys than the queue holds: the newest fill it
        rows = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def forward(self, views: torch.Tensor, partners: torch.Tensor | None = None,
                generator: torch.Generator | None = None, indices: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetrised MoCo v2 loss of a (2, B, C, H, W) batch; enqueues the keys in training mode.

        ``partners``, ``generator`` and ``indices`` are unused; ``labels`` only reach the statistics.
        """
        if views.shape[0] != 2:
            raise ValueError(f"moco-v2 takes 2 views, got {views.shape[0]}")
        groups = 1 if distributed.active() else ghost_groups(views.shape[1])  # several processes: BN per process
        z = torch.stack([grouped_encode(self.encode, v, groups) for v in views])  # (2, B, D) with gradient
        q = z.float()  # the loss in float32 whatever precision the networks ran in
        k = self.keys(views)  # stop-gradient: computed under no_grad by the momentum encoder
        negatives = self.queue.clone()  # a snapshot: the queue is overwritten in place below
        size, t = len(negatives), self.temperature
        margin = resolve_margin(t, self.eqco_alpha, size)
        with float32_loss(q):
            loss = 0.5 * (info_nce(q[0], k[1], negatives, t, margin) + info_nce(q[1], k[0], negatives, t, margin))
        if self.training:  # after the loss: a batch never meets its own keys as negatives
            self.enqueue(distributed.gather_views(k, constant=True).flatten(0, 1))  # every process's keys
        return loss, contrast_stats(loss, size, margin, t, z.flatten(0, 1), labels)


# ----------------------------------------------------------------------------- MoCo v3
def info_nce_terms(p: torch.Tensor, k: torch.Tensor, temperature: float, margin: float = 0.0) -> torch.Tensor:
    """(2, B) MoCo v3 InfoNCE terms of one image role: row v is query p_v against positive key k_(1-v),
    negatives the other images' k_(1-v) (in-batch). Pure; ``k`` should carry no gradient.

    Args:
        p: (2, B, D) queries (predictions) of views 1 and 2; k: (2, B, D) their momentum keys.
    """
    return torch.stack((info_nce_in_batch(p[0], k[1], temperature, margin, reduction="none"),
                        info_nce_in_batch(p[1], k[0], temperature, margin, reduction="none")))


def policy_terms(terms_a: torch.Tensor, terms_b: torch.Tensor, k_a: torch.Tensor, k_b: torch.Tensor,
                 policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) per-pair InfoNCE of a stop-gradient policy, the way :func:`stopgrad.gsg.pair_loss` weighs
    D(p, sg z) terms: ``symmetric`` 1/4 of all four terms of the pair (a, b); otherwise 1/2 (term of
    a's source view + term of b's source view), sources from :func:`stopgrad.gsg.select_sources`
    on the momentum keys.

    Args:
        terms_a, terms_b: (2, B) :func:`info_nce_terms` of images a and of their partners b
            (row v: view v is the query/source, the other view's key the positive/target).
        k_a, k_b: (2, B, D) momentum keys of a's and b's two views (b already in partner order).
    """
    if policy == "symmetric":
        return 0.25 * (terms_a.sum(0) + terms_b.sum(0))
    src_a, src_b = select_sources(k_a, k_b, policy, generator)
    return 0.5 * (terms_a.gather(0, src_a[None]).squeeze(0) + terms_b.gather(0, src_b[None]).squeeze(0))


class MoCoV3(MomentumContrast):
    """MoCo v3 (Chen, Xie & He 2021, "An empirical study of training self-supervised vision
    transformers"), with the stop-gradient policies of :mod:`stopgrad.gsg`.

    Queries are predictions q = h(f(x)) of the online encoder; keys are projections of the momentum
    encoder (EMA of backbone + projector, stop-gradient); negatives are the other images' keys of
    the batch (no queue). Plain MoCo v3: ctr(q1, k2) + ctr(q2, k1) with
    ctr(q, k) = 2T * CrossEntropy(q k^T / T, identity labels) (the paper's Algorithm 1).

    Stop-gradient policies. MoCo v3 has BYOL's (p, z) structure: the term "query from view v,
    positive key from view 1-v" plays the role of D(p_v, sg z_(1-v)), with view v the *source*
    and view 1-v the *target*. Each image a is paired with its partner b (``partners``); of the
    four terms of the pair (each a per-query in-batch InfoNCE row) the policy keeps the ones
    :func:`stopgrad.gsg.select_sources` chooses on the momentum keys (Euclidean, un-normalised,
    the same targets GSG uses for BYOL): ``guided`` keeps a's term whose query is a's view in the
    closest cross-pair of keys, and b's term whose query is b's view in it; ``reverse`` the far
    views; ``random`` a uniform case per pair; ``symmetric`` all four with weight 1/4. The loss is
    4T x mean over pairs of the kept terms (1/2 each), which for ``symmetric`` with two views is
    exactly ctr(q1, k2) + ctr(q2, k1), plain MoCo v3. The negatives of a term are always the keys of
    the same batch of views (views 1-2 for a's role, views 3-4 for b's with ``--views 4``).

    Views: with 4, each image's views 3 and 4 serve its partner role (their own in-batch InfoNCE
    among views 3-4, the faithful GSG mode); with 2 the partner's own two views are reused.

    Deviations from the paper (documented choices):

    * ``cfg.stopgrad`` is the library's default, ``guided``: plain MoCo v3 is ``--stopgrad symmetric``.
    * temperature ``cfg.temperature`` (0.2; MoCo v3 uses 1.0 for ResNets, 0.2 for ViTs), momentum
      ``cfg.ema_momentum`` / ``cfg.ema_schedule`` (MoCo v3: 0.99 increased to 1 by a cosine: pass
      ``--ema-schedule cosine``).
    * heads: the ``cfg.heads`` preset (as BYOL here) rather than 4096-wide heads and a 256-d output;
      ``cfg.predictor`` False gives h = identity.
    * all views go through each encoder in one call, so BatchNorm statistics are over the V*B
      views (MoCo v3 encodes each view in its own call, with sync BN across GPUs); no shuffle-BN is
      needed since the negatives come from the same batch as the positive.
    * EqCo: ``cfg.eqco_alpha`` > 0 adds the margin T log(alpha / (B - 1)) (off by default);
      ``cfg.num_negatives`` is not read (the negatives are the B - 1 other images).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None, policy: str,
                 temperature: float, eqco_alpha: float | None):
        super().__init__(backbone, projector, temperature, eqco_alpha)
        self.predictor = predictor if predictor is not None else nn.Identity()
        self.policy = policy

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a (V, B, C, H, W) batch, V = 2 or 4; ``generator`` drives the ``random`` policy;
        ``labels`` only reach the statistics."""
        n_views, local = views.shape[:2]
        flat = views.flatten(0, 1)
        z = self.encode(flat)
        # under torchrun the global batch (gradient flowing back to every process's rows), and the
        # partners as global indices: every process computes the global batch's loss
        p = distributed.gather_views(self.predictor(z).float().unflatten(0, (n_views, local)))  # queries, float32
        with torch.no_grad():  # stop-gradient: keys from the momentum encoder
            k = distributed.gather_views(self.key_encoder(flat).float().unflatten(0, (n_views, local)), constant=True)
        batch = p.shape[1]
        if len(partners) != batch:  # partners within each process's batch
            partners = distributed.gather_constant(distributed.offset(partners, local))
        t = self.temperature
        margin = resolve_margin(t, self.eqco_alpha, batch - 1)
        with float32_loss(p):
            terms_a = info_nce_terms(p[:2], k[:2], t, margin)
            if n_views == 4:  # partner role: views 3-4 of every image, their own in-batch contrast
                terms_b, k_b = info_nce_terms(p[2:], k[2:], t, margin)[:, partners], k[2:, partners]
            else:  # equal compute: the partner's own two views
                terms_b, k_b = terms_a[:, partners], k[:2, partners]
            info = policy_terms(terms_a, terms_b, k[:2], k_b, self.policy, generator).mean()
        loss = 4 * t * info  # MoCo v3's 2T scale on a sum of two directions
        return loss, contrast_stats(info, batch - 1, margin, t, z, labels)


# ----------------------------------------------------------------------------- builders
def require_two_views(cfg) -> None:
    if cfg.views != 2:
        from ..config import ConfigError
        raise ConfigError(f"{cfg.method} contrasts the two views of each image; use --views 2 (got {cfg.views})")


def build_v2(cfg, in_channels: int) -> MoCoV2:
    """MoCo v2 from ``cfg`` (reads temperature, num_negatives, eqco_alpha, heads, backbone, width)."""
    from ..backbones import backbone_for
    require_two_views(cfg)
    net = backbone_for(cfg, in_channels)
    proj = moco_projector(net.feature_dim, heads.HEAD_PRESETS[cfg.heads]["projector"][:-1])
    return MoCoV2(net, proj, cfg.temperature, cfg.num_negatives or QUEUE_DEFAULT, cfg.eqco_alpha)


def build_v3(cfg, in_channels: int) -> MoCoV3:
    """MoCo v3 from ``cfg`` (reads stopgrad, predictor, temperature, eqco_alpha, heads, backbone, width)."""
    from . import backbone_and_heads
    net, proj, pred = backbone_and_heads(cfg, in_channels, cfg.predictor)
    return MoCoV3(net, proj, pred, cfg.stopgrad, cfg.temperature, cfg.eqco_alpha)
