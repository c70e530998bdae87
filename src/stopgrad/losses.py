"""Loss functions: pure functions of tensors.

They know nothing about devices, processes or optimisers, and they never detach:
where a stop-gradient belongs, the caller (see :mod:`stopgrad.gsg`) writes it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z) for each row.

    Args:
        p: (..., D) predictions.
        z: (..., D) targets, same shape.
    Returns:
        (...) per-row negative cosine similarity in [-1, 1].
    """
    return -F.cosine_similarity(p, z, dim=-1)


def info_nce(q: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor, temperature: float,
             margin: float = 0.0) -> torch.Tensor:
    """InfoNCE with an optional margin on the positive (EqCo), averaged over the queries.

    L = -log( e^{(q.k+ - m)/T} / (e^{(q.k+ - m)/T} + sum_i e^{q.k_i/T}) ), all vectors L2-normalised.

    Args:
        q: (B, D) queries.
        k_pos: (B, D) each query's positive key.
        k_neg: (B, K, D) negatives per query, or (K, D) negatives shared by every query.
        temperature: T > 0.
        margin: m, subtracted from the positive similarity (see :func:`eqco_margin`).
    Returns:
        scalar mean loss.
    """
    q, k_pos, k_neg = F.normalize(q, dim=-1), F.normalize(k_pos, dim=-1), F.normalize(k_neg, dim=-1)
    pos = (q * k_pos).sum(-1, keepdim=True) - margin  # (B, 1)
    neg = q @ k_neg.T if k_neg.dim() == 2 else torch.einsum("bd,bkd->bk", q, k_neg)  # (B, K)
    logits = torch.cat((pos, neg), dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def eqco_margin(temperature: float, alpha: float, k: int) -> float:
    """EqCo's equivalent-rule margin m = T log(alpha / K): K physical negatives act as alpha of them.

    With it, InfoNCE's mutual-information bound log K + m/T - L becomes log alpha - L.
    """
    if alpha <= 0 or k <= 0:
        raise ValueError(f"alpha and K must be positive, got alpha={alpha}, K={k}")
    return temperature * math.log(alpha / k)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent, averaged over all 2B anchors.

    Each of the 2B L2-normalised embeddings is an anchor whose positive is the other view of its
    image and whose negatives are the remaining 2B - 2 embeddings.

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of each is image i.
        temperature: T > 0.
    """
    return nt_xent_margin(z1, z2, temperature)


# ---------------------------------------------------------------- in-batch contrastive losses
# The losses below take embeddings of any scale and L2-normalise them; they compute in the input
# dtype, so a caller under autocast should pass float32 and disable autocast around them (a matmul
# under autocast runs in bfloat16 whatever its inputs).


def info_nce_in_batch(q: torch.Tensor, k: torch.Tensor, temperature: float, margin: float = 0.0,
                      negatives: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """InfoNCE whose negatives are other queries' keys, with an optional EqCo margin.

    Row i: query q_i, positive k_i, negatives k_j for j in N(i): every j != i (K = B - 1 per
    query) by default, or the columns ``negatives[i]``. This is :func:`info_nce` with
    ``k_neg[i] = k[N(i)]`` computed from one (B, B) matrix instead of gathering (B, K, D)
    negatives: MoCo's end-to-end baseline, DirectCLR's loss, MoCo v3's and SiMo's.

    Args:
        q: (B, D) queries.
        k: (B, D) keys; row i is query i's positive.
        temperature: T > 0.
        margin: m, subtracted from the positive similarity (see :func:`eqco_margin`).
        negatives: None for every other key, or (B, K) column indices into ``k`` of each query's
            negatives (none of them its own).
        reduction: ``"mean"`` over the B queries, or ``"none"`` for the (B,) per-query losses.
    """
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    sim = q @ k.T  # (B, B): one matrix product gives every positive and every negative
    if negatives is None:
        logits = sim - margin * torch.eye(len(q), dtype=sim.dtype, device=q.device)
        target = torch.arange(len(q), device=q.device)
    else:
        logits = torch.cat((sim.diagonal()[:, None] - margin, sim.gather(1, negatives)), dim=1)
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, target, reduction=reduction)


def _two_view_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float, margin: float):
    """NT-Xent's pieces for the 2B anchors ``cat(z1, z2)``: the (2B, 2B) cosine similarities / T
    with the margin off each anchor's positive, the positive's column per anchor (2B,), and the
    (2B, 2B) boolean masks of the positives [a, (a + B) mod 2B] and of the anchors themselves."""
    b = len(z1)
    z = F.normalize(torch.cat((z1, z2)), dim=1)
    target = torch.cat((torch.arange(b, 2 * b), torch.arange(b))).to(z.device)
    own = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    positive = own.roll(b, dims=1)
    return (z @ z.T - margin * positive.to(z.dtype)) / temperature, target, positive, own


def nt_xent_margin(z1: torch.Tensor, z2: torch.Tensor, temperature: float, margin: float = 0.0) -> torch.Tensor:
    """:func:`nt_xent` with an EqCo margin m subtracted from each anchor's positive similarity.

    Each of the 2B anchors has one positive (the other view of its image) and K = 2B - 2
    negatives; ``margin=0`` is exactly :func:`nt_xent`.

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of each is image i.
        temperature: T > 0.
        margin: m (see :func:`eqco_margin` with K = 2B - 2).
    Returns:
        scalar mean over the 2B anchors.
    """
    sim, target, _, own = _two_view_logits(z1, z2, temperature, margin)
    return F.cross_entropy(sim.masked_fill(own, float("-inf")), target)


@torch.no_grad()
def fnc_false_negatives(z1: torch.Tensor, z2: torch.Tensor, support: torch.Tensor, top_k: int) -> torch.Tensor:
    """FNC's false-negative estimate (Huynh et al., WACV 2022): a (2B, 2B) boolean mask.

    Candidates are the 2B embeddings ``cat(z1, z2)`` except the two views of the anchor's own image.
    Each image i scores candidate n by aggregating, over its support views s, the cosine similarity
    cos(support[s, i], candidate n), with the maximum (as the authors' code does); the ``top_k``
    best-scoring candidates are its false negatives. Both anchors of image i (rows i and B + i)
    get the same set. Selection is discrete, so nothing here carries a gradient.

    Args:
        z1, z2: (B, D) embeddings of the two views (the NT-Xent anchors and candidates).
        support: (S, B, D) support views of every image.
        top_k: false negatives per image, 1 <= top_k <= 2B - 2.
    Returns:
        (2B, 2B) bool, True at [anchor, candidate] for the cancelled candidates.
    """
    b = len(z1)
    if not 1 <= top_k <= 2 * b - 2:
        raise ValueError(f"fnc top_k must be in [1, 2B - 2] = [1, {2 * b - 2}], got {top_k}")
    candidates = F.normalize(torch.cat((z1, z2)), dim=-1)  # (2B, D)
    scores = torch.einsum("sbd,nd->sbn", F.normalize(support, dim=-1), candidates).amax(dim=0)  # (B, 2B)
    own = torch.eye(b, dtype=torch.bool, device=z1.device).repeat(1, 2)  # image i's two views
    scores = scores.masked_fill(own, float("-inf"))
    picked = torch.zeros_like(own).scatter_(1, scores.topk(top_k, dim=1).indices, True)
    return picked.repeat(2, 1)


def fnc_loss(z1: torch.Tensor, z2: torch.Tensor, support: torch.Tensor, temperature: float, top_k: int,
             mode: str = "elimination", margin: float = 0.0) -> torch.Tensor:
    """SimCLR's NT-Xent with false-negative cancellation (FNC, Huynh et al., WACV 2022).

    The false negatives F_a of anchor a come from :func:`fnc_false_negatives`. With s = cos/T,
    p = the anchor's positive (other view of its image, its similarity lowered by the EqCo margin
    ``margin``) and N_a = all 2B - 1 other embeddings:

    * ``elimination``: L_a = -log( e^{s_ap} / sum_{n in N_a, n not in F_a} e^{s_an} );
    * ``attraction``:  L_a = -1/(1 + |F_a|) * sum_{f in {p} + F_a} log( e^{s_af} / sum_{n in N_a} e^{s_an} ),
      the false negatives count as extra positives (the form of the authors' code).

    The margin applies to the image's own positive only (also where it sits in a denominator).

    Args:
        z1, z2: (B, D) embeddings of the two views.
        support: (S, B, D) support views used to find the false negatives.
        temperature: T > 0.
        top_k: false negatives per image.
        mode: ``elimination`` or ``attraction``.
        margin: m on the positive (see :func:`eqco_margin`).
    Returns:
        scalar mean over the 2B anchors.
    """
    if mode not in ("elimination", "attraction"):
        raise ValueError(f"invalid fnc mode {mode!r}; choose elimination or attraction")
    false_neg = fnc_false_negatives(z1, z2, support, top_k)
    sim, target, positive, drop = _two_view_logits(z1, z2, temperature, margin)
    if mode == "elimination":
        drop = drop | false_neg
    log_prob = sim.masked_fill(drop, float("-inf")).log_softmax(dim=1)
    if mode == "elimination":
        return -log_prob.gather(1, target[:, None]).mean()
    attract = positive | false_neg
    per_anchor = log_prob.masked_fill(~attract, 0.0).sum(1) / attract.sum(1)
    return -per_anchor.mean()


def deputy_distance(dist_neg: torch.Tensor, rank: int, smoothed: bool = False) -> torch.Tensor:
    """The truncated triplet's "deputy" negative distance, per anchor.

    Ranks count from the closest (hardest) negative, rank 1. Plain: the rank-k distance.
    Smoothed: the mean of the distances of ranks 2 .. 2k+1 (2k negatives).

    Args:
        dist_neg: (B, K) distances to each anchor's negatives; ``inf`` entries (non-negatives)
            sort last, so they are never chosen while the rank fits the finite ones.
        rank: k >= 1, with k <= K (plain) or 2k + 1 <= K (smoothed).
        smoothed: the smoothed variant.
    Returns:
        (B,) deputy distances.
    """
    last = _deputy_last(rank, smoothed, dist_neg.shape[1])
    nearest = dist_neg.topk(last, dim=1, largest=False).values  # ascending
    return nearest[:, 1:].mean(1) if smoothed else nearest[:, rank - 1]


def _deputy_last(rank: int, smoothed: bool, negatives: int) -> int:
    """The largest rank the deputy reads; checked against the negatives per anchor (from shapes only)."""
    last = 2 * rank + 1 if smoothed else rank
    if rank < 1 or last > negatives:
        raise ValueError(f"truncated triplet rank {rank}{' smoothed (ranks 2..2k+1)' if smoothed else ''} "
                         f"needs {last} negatives per anchor, only {negatives} available")
    return last


def truncated_triplet(anchor: torch.Tensor, keys: torch.Tensor, rank: int, smoothed: bool = False,
                      margin: float = 0.2) -> torch.Tensor:
    """Truncated triplet loss (Wang et al., "Solving Inefficiency of Self-supervised Representation
    Learning", ICCV 2021), in-batch.

    Anchor i's positive is ``keys[i]``, its negatives ``keys[j]`` for j != i (K = B - 1). On
    L2-normalised embeddings, d(a, b) = ||a - b||^2 = 2 - 2 cos(a, b), and
    L_i = max(0, d(a_i, k_i) - d(a_i, deputy_i) + margin) with the deputy of :func:`deputy_distance`
    (rank k, or the mean of ranks 2..2k+1), instead of the hardest negative (rank 1).

    Args:
        anchor: (B, D) anchors.
        keys: (B, D) keys; row i is anchor i's positive.
        rank: k.
        smoothed: the smoothed-rank-k variant.
        margin: the triplet margin (>= 4 makes the hinge always active: a linear loss).
    Returns:
        scalar mean over the B anchors.
    """
    a, k = F.normalize(anchor, dim=-1), F.normalize(keys, dim=-1)
    dist = 2 - 2 * (a @ k.T)  # (B, B) squared Euclidean distances of unit vectors
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    _deputy_last(rank, smoothed, len(a) - 1)  # the diagonal is not a negative
    d_pos = dist.diagonal()
    d_deputy = deputy_distance(dist.masked_fill(eye, float("inf")), rank, smoothed)
    return F.relu(d_pos - d_deputy + margin).mean()
