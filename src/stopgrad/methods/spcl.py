"""SPCL (Mo, Sun and Li, "Siamese Prototypical Contrastive Learning", BMVC 2021).

Every epoch starts with :meth:`SPCL.begin_epoch` (called by the training loop):

1. **Clustering.** The training set is embedded, one augmented view per image (the run's recipe),
   in no-grad eval-mode passes of the backbone; the L2-normalised *representations* h are
   clustered by k-means (faiss, :func:`kmeans`: ``KMEANS_ITERATIONS`` iterations, seeded by
   (seed, epoch); the GPU build on CUDA runs when faiss has GPUs) into P = ``cfg.spcl_prototypes``
   prototypes. The paper clusters the "embedded features" and applies the projection head only
   for the contrastive loss, so h, the space the metric and prototype heads read, is clustered.
   Cluster ids are arbitrary, so each epoch's clusters are matched to the previous epoch's by the
   Hungarian algorithm on their overlap (:func:`match_to_previous`): prototype k stays prototype k
   and the prototype head keeps its meaning. The pseudo-labels live in the ``pseudo_labels``
   buffer (saved in checkpoints: a resumed run matches to the same labels).
   ``cfg.spcl_targets: labels`` uses the ground-truth classes instead (the paper's GT ablation row).
2. **Batches** (:func:`prototype_batches`): each batch draws an anchor prototype (probability
   proportional to its size, among prototypes with two members or more), takes
   round(``cfg.spcl_anchor_fraction`` * B) of its members (all of them if it has fewer) and fills
   the rest with images of the other prototypes. The paper leaves the share open.

Loss, on views 0 and 1 of a batch: λ_c NT-Xent (SimCLR, on the projection, temperature
``cfg.temperature``) + λ_m metric + λ_p prototypical cross-entropy, (λ_c, λ_m, λ_p) =
``cfg.spcl_weights``; a zero weight skips its term (and its head is not built; with λ_c = 0 the
projector is kept, frozen, for the TP/FN statistics only).

* Metric loss (:func:`stopgrad.losses.siamese_metric`): **our reconstruction**, the paper's
  equation is missing from its text. Each image of the anchor prototype is paired, in each
  view, with the other view of a positive (another image of its prototype in the batch) and of a
  negative (an image of another prototype), drawn at random within the batch; a linear head on
  |u - v| of the L2-normalised representations scores a pair (Koch et al. 2015: a weighted L1
  distance into a sigmoid), trained by binary cross-entropy with same prototype = 1.
* Prototypical loss: a linear head on the representation h predicts each view's prototype,
  cross-entropy; ``cfg.spcl_symmetric_ce`` = (α, β) replaces it by the symmetric cross-entropy
  of Wang et al. 2019 (:func:`stopgrad.losses.symmetric_ce`, log 0 clipped to -4).

Statistics: the label similarities of :func:`~stopgrad.methods.common.embedding_stats` in the
projection space (measured on SPCL's prototype batches), the unweighted ``contrastive_loss``,
``metric_loss``, ``prototype_loss``; per epoch ``embed_seconds``, ``cluster_seconds`` (k-means and
matching), ``num_prototypes`` (non-empty), ``cluster_nmi`` (against the labels, for monitoring
only) and ``cluster_agreement`` (share of images that kept their prototype).

Deviations from the paper: SGD with the run's schedule rather than LARS; small CPU heads by
default; an epoch is ``steps`` sampled prototype batches, so an image is seen about once per epoch
on average rather than exactly once; two views only.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..losses import nt_xent, siamese_metric, symmetric_ce
from .common import embedding_stats, float32_loss, two_views_only

KMEANS_ITERATIONS = 20  # PCL's setting (Li et al. 2021), also faiss k-means' usual order of magnitude
EMBED_BATCH = 1024  # images per no-grad pass when embedding the training set


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = KMEANS_ITERATIONS, gpu: bool = False) -> np.ndarray:
    """(N,) int64 k-means assignments of the (N, D) float32 points ``x`` (faiss; L2 distance).

    Seeded (faiss draws the initial centroids and its training subsample, at most 256 points per
    centroid, from ``seed``); ``gpu`` uses faiss' GPU build where it has GPUs, the CPU otherwise.
    On the CPU it runs with torch's thread count, so a run's ``threads`` setting holds for it too.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    gpu = gpu and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        # min_points_per_centroid=1: small data sets are fine, no warning printed for them
        km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed % 2 ** 31, gpu=gpu, min_points_per_centroid=1)
        km.train(x)
        _, assign = km.assign(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return assign.astype(np.int64)


def match_to_previous(new: torch.Tensor, old: torch.Tensor, k: int) -> tuple[torch.Tensor, float | None]:
    """Relabel the (N,) assignments ``new`` so that they agree most with ``old`` (-1: none yet).

    The (k, k) overlap counts n[a, b] = #{i: new_i = a, old_i = b} define a one-to-one map
    a -> b of maximal total overlap (Hungarian algorithm, scipy's ``linear_sum_assignment``).
    Returns the relabelled assignments and the share of images whose label did not change (None
    when ``old`` has no labels).
    """
    from scipy.optimize import linear_sum_assignment

    known = old >= 0
    if not bool(known.any()):
        return new, None
    overlap = torch.bincount(new[known] * k + old[known], minlength=k * k).view(k, k)
    rows, cols = linear_sum_assignment(overlap.cpu().numpy(), maximize=True)
    mapping = torch.empty(k, dtype=torch.long)
    mapping[torch.from_numpy(rows)] = torch.from_numpy(cols)
    new = mapping.to(new.device)[new]
    return new, (new[known] == old[known]).float().mean().item()


def prototype_batches(labels: torch.Tensor, num_prototypes: int, steps: int, batch: int, anchor_fraction: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(steps * batch,) training-set indices: ``steps`` consecutive batches built around prototypes.

    Batch s draws an anchor prototype c_s with probability proportional to its size (among the
    prototypes with at least two members, so that an anchor image has a positive), then takes
    m_s = min(|c_s|, clamp(round(anchor_fraction * batch), 2, batch - 1)) distinct members of c_s
    (slots 0..m_s-1: slot 0 is always an anchor image) and fills slots m_s..batch-1 with distinct
    images of the other prototypes. Both parts are stratified samples: with the images listed
    prototype by prototype, in random order within each, slot j takes a uniformly random image of
    the j-th of equal strata of its part, so the fill's prototypes are in proportion to their
    sizes. Everything is drawn from ``generator`` (on ``labels``' device), without host loops.

    Args:
        labels: (N,) prototype of every image, in [0, num_prototypes).
        num_prototypes: P.
        steps, batch: number and size of the batches.
        anchor_fraction: share of a batch taken from its anchor prototype.
    """
    device, n = labels.device, len(labels)
    size = torch.bincount(labels, minlength=num_prototypes)  # (P,)
    start = size.cumsum(0) - size
    shuffled = torch.randperm(n, generator=generator, device=device)
    members = shuffled[torch.argsort(labels[shuffled], stable=True)]  # prototype-major, random within
    weight = (size * (size >= 2)).float()
    weight = torch.where(weight.sum() > 0, weight, size.float())  # every prototype a singleton: no pairs anyway
    anchor = torch.multinomial(weight, steps, replacement=True, generator=generator)  # (steps,)
    want = min(max(round(anchor_fraction * batch), 2), batch - 1)
    a_size, a_start = size[anchor][:, None], start[anchor][:, None]  # (steps, 1)
    count = a_size.clamp(max=want)  # anchor images per batch
    rest = n - a_size  # images of the other prototypes
    slot = torch.arange(batch, device=device)[None]  # (1, B)
    u = torch.rand(steps, batch, generator=generator, device=device)

    def stratum(j: torch.Tensor, strata: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """A random position in [lo, hi), the j-th of ``strata`` parts of [0, length) (integer bounds:
        float rounding of u near 1 must not reach the next part)."""
        j = j.clamp(min=0)
        lo, hi = j * length // strata, (j + 1) * length // strata
        return torch.minimum(lo + (u * (hi - lo)).long(), (hi - 1).clamp(min=lo))  # hi == lo: length < strata

    in_anchor = a_start + stratum(slot, count, a_size)
    fill = stratum(slot - count, batch - count, rest)
    fill = torch.where(fill < a_start, fill, fill + a_size)  # skip the anchor prototype's block
    # one prototype holds every image: nothing else to draw, fill from it too
    fill = torch.where(rest > 0, fill, a_start + stratum(slot - count, batch - count, a_size))
    return members[torch.where(slot < count, in_anchor, fill)].flatten()


class SPCL(nn.Module):
    """Backbone + projector (NT-Xent) + metric head + prototype head, and the per-image pseudo-labels."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, num_prototypes: int,
                 weights: tuple[float, float, float], temperature: float, targets: str = "kmeans",
                 anchor_fraction: float = 0.25, symmetric_ce: tuple[float, float] | None = None):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.weights = tuple(float(w) for w in weights)
        wc, wm, wp = self.weights
        if not wc:  # kept for the TP/FN statistics in the projection space, never trained
            projector.requires_grad_(False)
        # heads of zero-weight terms are not built: no parameter without a gradient
        self.metric_head = nn.Linear(backbone.feature_dim, 1) if wm else None
        self.prototype_head = nn.Linear(backbone.feature_dim, num_prototypes) if wp else None
        self.num_prototypes, self.temperature, self.targets = num_prototypes, temperature, targets
        self.anchor_fraction, self.symmetric_ce = anchor_fraction, symmetric_ce
        # (N,) prototype of every training image, -1 before the first clustering
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))

    # ------------------------------------------------------------------ per-epoch state
    def set_num_images(self, n: int) -> None:
        """Size the pseudo-labels for ``n`` training images (all -1 until the first epoch clusters)."""
        from ..config import ConfigError
        if self.num_prototypes >= n:
            raise ConfigError(f"spcl_prototypes {self.num_prototypes} must be below the {n} training images; "
                              "lower --spcl-prototypes")
        if len(self.pseudo_labels) != n:
            self.pseudo_labels = torch.full((n,), -1, dtype=torch.long, device=self.pseudo_labels.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "pseudo_labels")  # an unsized model takes the checkpoint's size
        if saved is not None and len(self.pseudo_labels) == 0:
            self.pseudo_labels = torch.empty_like(saved, device=self.pseudo_labels.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def embed_training_set(self, ctx) -> torch.Tensor:
        """(N, F) L2-normalised float32 representations of one augmented view of every training image,
        in eval mode (the train/eval mode is restored)."""
        was_training = self.training
        self.eval()
        out = []
        try:
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
                for x in ctx.batches(EMBED_BATCH):
                    out.append(F.normalize(self.backbone(ctx.make_view(x)).float(), dim=1))
        finally:
            self.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def begin_epoch(self, ctx, order: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Re-cluster the training set and build the epoch's prototype batches (see the module docstring).

        ``ctx`` is the training loop's :class:`~stopgrad.train.EpochContext`; ``order`` (the loop's
        random order) is replaced. Returns the (steps * B,) order and the epoch's statistics.
        """
        from ..config import ConfigError
        if len(self.pseudo_labels) != len(ctx.labels):
            self.set_num_images(len(ctx.labels))
        stats: dict[str, float] = {}
        if self.targets == "labels":
            new = ctx.labels.long()
            if int(new.max()) >= self.num_prototypes:
                raise ConfigError(f"spcl_targets labels: the {int(new.max()) + 1} classes are the prototypes; "
                                  f"set --spcl-prototypes {int(new.max()) + 1}")
            stats["cluster_seconds"] = 0.0
        else:
            t0 = time.perf_counter()
            features = self.embed_training_set(ctx).cpu().numpy()  # the epoch's one host copy
            t1 = time.perf_counter()
            seed = ctx.seed * 1_000_003 + ctx.epoch
            assign = kmeans(features, self.num_prototypes, seed, gpu=ctx.device.type == "cuda")
            new, agreement = match_to_previous(torch.from_numpy(assign).to(ctx.device), self.pseudo_labels,
                                               self.num_prototypes)
            stats.update(embed_seconds=round(t1 - t0, 3), cluster_seconds=round(time.perf_counter() - t1, 3))
            from sklearn.metrics import normalized_mutual_info_score  # monitoring only: no loss sees labels
            stats["cluster_nmi"] = float(normalized_mutual_info_score(ctx.labels.cpu().numpy(), assign))
            if agreement is not None:
                stats["cluster_agreement"] = agreement
        self.pseudo_labels.copy_(new)
        stats["num_prototypes"] = float((torch.bincount(new, minlength=self.num_prototypes) > 0).sum())
        order = prototype_batches(new, self.num_prototypes, ctx.steps, ctx.batch_size, self.anchor_fraction,
                                  ctx.generator)
        return order, stats

    # ------------------------------------------------------------------ the step
    def metric_loss(self, h: torch.Tensor, prototypes: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Mean metric loss of the anchor prototype's images, both views ((2B, F) representations h,
        view-major; (B,) prototypes of the images, -1 unknown)."""
        b = len(prototypes)
        u = F.normalize(h, dim=1)
        u1, u2 = u[:b], u[b:]
        known = prototypes >= 0
        anchor = known & (prototypes == prototypes[0])  # slot 0 holds an anchor image (prototype_batches)
        eye = torch.eye(b, dtype=torch.bool, device=h.device)
        can_pos = anchor[None, :] & ~eye  # (B, B): j is a positive for row i
        can_neg = known[None, :] & (prototypes[None, :] != prototypes[:, None])
        scores = torch.rand(2, b, b, generator=generator, device=h.device)  # a random candidate of each kind
        pos = scores[0].masked_fill(~can_pos, -1).argmax(1)
        neg = scores[1].masked_fill(~can_neg, -1).argmax(1)
        valid = (anchor & can_pos.any(1) & can_neg.any(1)).repeat(2).float()  # (2B,)
        per = siamese_metric(torch.cat((u1, u2)), torch.cat((u2[pos], u1[pos])), torch.cat((u2[neg], u1[neg])),
                             self.metric_head, reduction="none")
        return (per * valid).sum() / valid.sum().clamp(min=1)  # 0 when the batch has no triplet

    def prototype_loss(self, h: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Mean (symmetric) cross-entropy of both views' prototype logits ((2B, F) h; (B,) prototypes)."""
        target = prototypes.repeat(2)
        logits = self.prototype_head(h)  # (2B, P)
        if self.symmetric_ce is None:
            per = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
        else:
            per = symmetric_ce(logits, target.clamp(min=0), *self.symmetric_ce, reduction="none")
        known = (target >= 0).float()
        return (per * known).sum() / known.sum().clamp(min=1)

    def forward(self, views: torch.Tensor, partners: torch.Tensor, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SPCL's loss of views 0 and 1 ((2, B, C, H, W)) of a batch from :func:`prototype_batches`.

        ``indices`` (B,) are the images' training-set positions (their prototypes); ``generator``
        draws the metric loss's positives and negatives; ``partners`` is unused; ``labels`` reach
        the statistics only.
        """
        if indices is None:
            raise ValueError("spcl reads each image's prototype from its training-set index: pass indices")
        local = views.shape[1]
        h = self.backbone(views[:2].flatten(0, 1))  # (2B, F), one encoder call for both views
        wc, wm, wp = self.weights
        with torch.set_grad_enabled(torch.is_grad_enabled() and wc > 0):
            z = self.projector(h)  # (2B, D)
        stats = embedding_stats(z, labels)
        # under torchrun the batch is the global one (its composition around the anchor prototype is
        # global): every process's rows, gathered with their gradient, view-major as before
        h = distributed.gather_views(h.unflatten(0, (2, local))).flatten(0, 1)
        z = distributed.gather_views(z.unflatten(0, (2, local)), constant=not z.requires_grad).flatten(0, 1)
        b = h.shape[0] // 2
        prototypes = self.pseudo_labels[distributed.gather_constant(indices)]
        with float32_loss(h):
            h32 = h.float()
            terms = {}
            if wc:
                terms["contrastive_loss"] = (wc, nt_xent(z[:b].float(), z[b:].float(), self.temperature))
            if wm:
                terms["metric_loss"] = (wm, self.metric_loss(h32, prototypes, generator))
            if wp:
                terms["prototype_loss"] = (wp, self.prototype_loss(h32, prototypes))
            loss = sum(w * term for w, term in terms.values())
        stats.update({name: term.detach() for name, (_, term) in terms.items()})
        return loss, stats

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """No momentum copy: nothing to do."""


def build(cfg, in_channels: int) -> SPCL:
    from ..config import ConfigError
    from . import backbone_and_heads
    two_views_only(cfg)
    take = round(cfg.spcl_anchor_fraction * cfg.batch_size)
    if not 2 <= take <= cfg.batch_size - 1:
        raise ConfigError(f"spcl_anchor_fraction {cfg.spcl_anchor_fraction} takes {take} of a batch of "
                          f"{cfg.batch_size} from the anchor prototype; the metric loss needs 2 to "
                          f"{cfg.batch_size - 1}: change --spcl-anchor-fraction or --batch-size")
    net, proj, _ = backbone_and_heads(cfg, in_channels, predictor=False)
    return SPCL(net, proj, cfg.spcl_prototypes, cfg.spcl_weights, cfg.temperature, cfg.spcl_targets,
                cfg.spcl_anchor_fraction, cfg.spcl_symmetric_ce)
