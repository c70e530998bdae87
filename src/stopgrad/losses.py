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

    >>> p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (B, D) = (2, 2)
    >>> sg.negative_cosine(p, torch.tensor([[3.0, 0.0], [0.0, -1.0]]))  # parallel, opposite
    tensor([-1.,  1.])
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

    Each query is its own positive (similarity 1) and its negatives are orthogonal to it
    (similarity 0), so with T = 1 the loss is log(1 + K / e):

    >>> q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # (B, D) = (2, 3)
    >>> k_neg = torch.tensor([[0.0, 0.0, 1.0]])  # (K, D) = (1, 3), shared by both queries
    >>> loss = sg.info_nce(q, q, k_neg, temperature=1.0)
    >>> loss.shape, round(loss.item(), 3)  # log(1 + 1/e)
    (torch.Size([]), 0.313)
    >>> round(sg.info_nce(q, q, k_neg.expand(2, 4, 3), temperature=1.0).item(), 3)  # (B, K, D): log(1 + 4/e)
    0.905
    """
    q, k_pos, k_neg = F.normalize(q, dim=-1), F.normalize(k_pos, dim=-1), F.normalize(k_neg, dim=-1)
    pos = (q * k_pos).sum(-1, keepdim=True) - margin  # (B, 1)
    neg = q @ k_neg.T if k_neg.dim() == 2 else torch.einsum("bd,bkd->bk", q, k_neg)  # (B, K)
    logits = torch.cat((pos, neg), dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def eqco_margin(temperature: float, alpha: float, k: int) -> float:
    """EqCo's equivalent-rule margin m = T log(alpha / K): K physical negatives act as alpha of them.

    With it, InfoNCE's mutual-information bound log K + m/T - L becomes log alpha - L.

    Args:
        temperature: T > 0.
        alpha: the number of negatives the K physical ones should act as.
        k: K, the physical negatives per query.
    Returns:
        the margin m (a float; negative when alpha < K).

    >>> round(sg.eqco_margin(0.2, alpha=256, k=65536), 3)  # 0.2 * log(1 / 256)
    -1.109
    >>> sg.eqco_margin(0.2, alpha=256, k=256)
    0.0
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
    Returns:
        scalar mean over the 2B anchors.

    Both views of an image agree (similarity 1) and the images are orthogonal (similarity 0), so
    with T = 1 every anchor's loss is log(1 + (2B - 2) / e):

    >>> z = torch.eye(2)  # (B, D) = (2, 2)
    >>> loss = sg.nt_xent(z, z, temperature=1.0)
    >>> loss.shape, round(loss.item(), 3)  # log(1 + 2/e)
    (torch.Size([]), 0.551)
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
    Returns:
        scalar, or (B,) with ``reduction="none"``.

    Each query is its own key (similarity 1) and orthogonal to the other keys (similarity 0), so
    with T = 1 a query with K negatives has the loss log(1 + K / e):

    >>> q = torch.eye(3)  # (B, D) = (3, 3)
    >>> sg.info_nce_in_batch(q, q, temperature=1.0, reduction="none").shape
    torch.Size([3])
    >>> round(sg.info_nce_in_batch(q, q, temperature=1.0).item(), 3)  # K = 2: log(1 + 2/e)
    0.551
    >>> negatives = torch.tensor([[1], [2], [0]])  # (B, K) = (3, 1): one chosen negative each
    >>> round(sg.info_nce_in_batch(q, q, temperature=1.0, negatives=negatives).item(), 3)  # log(1 + 1/e)
    0.313
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

    With the views of :func:`nt_xent`'s example and m = 1 the positive's logit drops from 1 to 0,
    level with the two negatives' (T = 1), so every anchor's loss is log 3:

    >>> z = torch.eye(2)  # (B, D) = (2, 2)
    >>> round(sg.nt_xent_margin(z, z, temperature=1.0, margin=1.0).item(), 3)
    1.099
    >>> torch.equal(sg.nt_xent_margin(z, z, 0.5), sg.nt_xent(z, z, 0.5))  # margin 0
    True
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

    >>> z1 = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])  # (B, D) = (3, 2): images 0 and 1 look alike
    >>> z2 = torch.tensor([[1.0, -0.2], [1.0, 0.3], [0.1, 1.0]])  # their second views
    >>> support = z1[None]  # (S, B, D) = (1, 3, 2): one support view per image
    >>> mask = sg.fnc_false_negatives(z1, z2, support, top_k=1)
    >>> mask.shape, mask.dtype
    (torch.Size([6, 6]), torch.bool)
    >>> mask.nonzero().tolist()  # [anchor, candidate]: rows i and B + i pick the same candidate
    [[0, 1], [1, 0], [2, 4], [3, 1], [4, 0], [5, 4]]
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

    With the embeddings of :func:`fnc_false_negatives`' example, where images 0 and 1 look alike:

    >>> z1 = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])  # (B, D) = (3, 2): images 0 and 1 look alike
    >>> z2 = torch.tensor([[1.0, -0.2], [1.0, 0.3], [0.1, 1.0]])  # their second views
    >>> support = z1[None]  # (S, B, D) = (1, 3, 2): one support view per image
    >>> loss = sg.fnc_loss(z1, z2, support, temperature=0.5, top_k=1)
    >>> loss.shape, bool(loss < sg.nt_xent(z1, z2, 0.5))  # fewer negatives in the denominators
    (torch.Size([]), True)
    >>> sg.fnc_loss(z1, z2, support, temperature=0.5, top_k=1, mode="attraction").shape
    torch.Size([])
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

    >>> dist_neg = torch.tensor([[0.1, 0.4, 0.2, 0.8, 0.3]])  # (B, K) = (1, 5)
    >>> sg.deputy_distance(dist_neg, rank=2)  # the second-closest negative
    tensor([0.2000])
    >>> sg.deputy_distance(dist_neg, rank=1, smoothed=True)  # the mean of ranks 2 and 3
    tensor([0.2500])
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

    Anchors equal to their keys (d = 0) and orthogonal to the other keys (d = 2):

    >>> x = torch.eye(4)  # (B, D) = (4, 4)
    >>> loss = sg.truncated_triplet(x, x, rank=2)  # max(0, 0 - 2 + 0.2)
    >>> loss.shape, loss.item()
    (torch.Size([]), 0.0)
    >>> sg.truncated_triplet(x, x, rank=1, smoothed=True, margin=4.0).item()  # max(0, 0 - 2 + 4)
    2.0
    """
    a, k = F.normalize(anchor, dim=-1), F.normalize(keys, dim=-1)
    dist = 2 - 2 * (a @ k.T)  # (B, B) squared Euclidean distances of unit vectors
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    _deputy_last(rank, smoothed, len(a) - 1)  # the diagonal is not a negative
    d_pos = dist.diagonal()
    d_deputy = deputy_distance(dist.masked_fill(eye, float("inf")), rank, smoothed)
    return F.relu(d_pos - d_deputy + margin).mean()


# ------------------------------------------------------- redundancy reduction and class distributions
# Like the in-batch losses above, these compute in the input dtype: pass float32 and disable
# autocast around them (methods.common.float32_loss).


def _check_pair(name: str, z1: torch.Tensor, z2: torch.Tensor) -> None:
    """Two (B, D) embeddings of the same B images, B >= 2 (both losses read batch statistics)."""
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"{name} takes two (B, D) embeddings of the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if len(z1) < 2:
        raise ValueError(f"{name} standardises over the batch and needs at least 2 images, got a batch of "
                         f"{len(z1)}; use --batch-size 2 or more")


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The D(D - 1) off-diagonal entries of a (D, D) matrix, flattened."""
    return m.masked_select(~torch.eye(len(m), dtype=torch.bool, device=m.device))


BARLOW_TWINS_EPS = 1e-5  # the epsilon of the authors' affine-free BatchNorm1d (PyTorch's default)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML 2021, Eqs. 1-2).

    Each embedding dimension is standardised over the batch as the authors' code does (BatchNorm
    without affine parameters: biased variance, epsilon 1e-5): z~ = (z - mean_b z) / sqrt(var_b z + eps).
    With the (D, D) cross-correlation C = z~1^T z~2 / B,

        L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

    The standardisation makes L invariant (up to eps) to a per-dimension affine change of either
    embedding with positive scales.

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of each is image i; B >= 2.
        lambd: weight of the redundancy (off-diagonal) term; the paper's 5e-3.
    Returns:
        scalar loss (a sum over dimensions, not a mean: its scale grows with D, as in the paper).

    Dimensions that are standardised and uncorrelated already give C = I (up to eps):

    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # (B, D) = (4, 2)
    >>> loss = sg.barlow_twins(z, 3 * z + 1)  # invariant to a positive affine change per dimension
    >>> loss.shape, round(loss.item(), 3)
    (torch.Size([]), 0.0)
    >>> round(sg.barlow_twins(z, -z).item(), 3)  # C = -I: sum_i (1 - (-1))^2
    8.0
    """
    _check_pair("barlow_twins", z1, z2)

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / (z.var(0, unbiased=False) + BARLOW_TWINS_EPS).sqrt()

    c = standardise(z1).T @ standardise(z2) / len(z1)  # (D, D)
    return (1 - c.diagonal()).pow(2).sum() + lambd * _off_diagonal(c).pow(2).sum()


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's three terms, unweighted (Bardes et al., ICLR 2022, Eqs. 1-4); see :func:`vicreg`.

    Returns:
        (invariance, variance, covariance) scalars:
        s = mean over the B x D entries of (z1 - z2)^2;
        v = 1/2 [v(Z1) + v(Z2)], v(Z) = mean_j max(0, gamma - sqrt(Var z_j + eps));
        c = c(Z1) + c(Z2), c(Z) = (1/D) sum_{i != j} Cov(Z)_ij^2;
        Var and Cov unbiased (divided by B - 1).

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of each is image i; B >= 2.
        gamma: target standard deviation per dimension.
        eps: numerical floor inside the square root.

    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # (B, D) = (4, 2)
    >>> [round(t.item(), 3) for t in sg.vicreg_terms(z, z + 1)]  # std 1.15 > gamma, uncorrelated
    [1.0, 0.0, 0.0]
    >>> [round(t.item(), 3) for t in sg.vicreg_terms(torch.zeros(4, 2), torch.zeros(4, 2))]  # collapse
    [0.0, 0.99, 0.0]
    """
    _check_pair("vicreg", z1, z2)
    invariance = F.mse_loss(z1, z2)

    def variance(z: torch.Tensor) -> torch.Tensor:
        return F.relu(gamma - (z.var(0) + eps).sqrt()).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(0)
        cov = z.T @ z / (len(z) - 1)  # (D, D)
        return _off_diagonal(cov).pow(2).sum() / z.shape[1]

    return invariance, 0.5 * (variance(z1) + variance(z2)), covariance(z1) + covariance(z2)


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
           cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg: variance-invariance-covariance regularisation (Bardes et al., ICLR 2022).

        L = lambda * s(Z1, Z2) + mu * 1/2 [v(Z1) + v(Z2)] + nu * [c(Z1) + c(Z2)]

    with the terms of :func:`vicreg_terms`: s the mean squared difference of the two views, v the
    hinge on each dimension's standard deviation sqrt(Var + eps) below gamma, c the sum of squared
    off-diagonal covariances over D; variance and covariance unbiased.

    Two choices follow the authors' code rather than the paper's equations (they are what the
    published numbers used): the variance term is the *mean* of the two branches' (the paper's
    Eq. 6 sums them), and the invariance term is F.mse_loss, a mean over dimensions too (the
    paper's s sums over dimensions).

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of each is image i; B >= 2.
        sim_weight, var_weight, cov_weight: lambda, mu, nu (the paper's 25, 25, 1).
        gamma: target standard deviation per dimension (1).
        eps: numerical floor inside the square root (1e-4).
    Returns:
        scalar loss.

    With the terms of :func:`vicreg_terms`' example:

    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # (B, D) = (4, 2)
    >>> loss = sg.vicreg(z, z + 1)  # 25 * invariance 1
    >>> loss.shape, round(loss.item(), 3)
    (torch.Size([]), 25.0)
    >>> round(sg.vicreg(torch.zeros(4, 2), torch.zeros(4, 2)).item(), 3)  # 25 * variance 0.99
    24.75
    """
    invariance, variance, covariance = vicreg_terms(z1, z2, gamma, eps)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def twist_terms(logits1: torch.Tensor, logits2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TWIST's three terms (Wang et al., "Self-Supervised Learning by Estimating Twin Class
    Distributions", 2021); see :func:`twist`.

    Returns:
        (consistency, sharpness, diversity) scalars, with P^v = softmax(logits_v) row-wise:
        consistency = 1/2 [mean_i KL(P^1_i || P^2_i) + mean_i KL(P^2_i || P^1_i)];
        sharpness = 1/2 [mean_i H(P^1_i) + mean_i H(P^2_i)] (mean row entropy);
        diversity = 1/2 [H(mean_i P^1_i) + H(mean_i P^2_i)] (entropy of the mean row).

    Args:
        logits1, logits2: (B, C) class logits of the two views; row i of each is image i; C >= 2.

    >>> uniform = torch.zeros(4, 3)  # (B, C) = (4, 3): every image spread over all classes
    >>> [round(t.item(), 3) for t in sg.twist_terms(uniform, uniform)]  # 0, log 3, log 3
    [0.0, 1.099, 1.099]
    >>> sharp = 20 * torch.eye(3)  # (B, C) = (3, 3): image i sure of class i
    >>> [round(t.item(), 3) for t in sg.twist_terms(sharp, sharp)]
    [0.0, 0.0, 1.099]
    """
    if logits1.dim() != 2 or logits1.shape != logits2.shape or logits1.shape[1] < 2:
        raise ValueError(f"twist takes two (B, C) logits of the same shape with C >= 2 classes, got "
                         f"{tuple(logits1.shape)} and {tuple(logits2.shape)}")
    logp1, logp2 = logits1.log_softmax(1), logits2.log_softmax(1)
    p1, p2 = logp1.exp(), logp2.exp()
    kl12 = (p1 * (logp1 - logp2)).sum(1).mean()
    kl21 = (p2 * (logp2 - logp1)).sum(1).mean()
    sharpness = -0.5 * ((p1 * logp1).sum(1).mean() + (p2 * logp2).sum(1).mean())

    def entropy_of_mean(p: torch.Tensor) -> torch.Tensor:
        mean = p.mean(0)
        return -(mean * mean.clamp_min(torch.finfo(mean.dtype).tiny).log()).sum()

    return 0.5 * (kl12 + kl21), sharpness, 0.5 * (entropy_of_mean(p1) + entropy_of_mean(p2))


def twist(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """TWIST: twin class distributions of two views (Wang et al. 2021, Eq. 5).

        L = consistency + sharpness - diversity

    (:func:`twist_terms`): the symmetric KL divergence between the two views' class distributions
    P^1, P^2 (softmax over C classes of each row), plus the mean entropy of the rows (each image's
    distribution should be sharp), minus the entropy of the batch-mean distribution (the classes
    should all be used). Every term is the mean of the two views', as in the authors' code (with
    its defaults lambda1 = 0, lambda2 = 1, tau = 1). The code adds eps = 1e-5 inside every log;
    here the logs are exact (log_softmax), and only the entropy of the mean is floored at the
    smallest positive float.

    Args:
        logits1, logits2: (B, C) class logits of the two views; row i of each is image i.
    Returns:
        scalar loss, in [-log C, log C + max KL].

    >>> sharp = 20 * torch.eye(3)  # (B, C) = (3, 3): confident, consistent, every class used
    >>> loss = sg.twist(sharp, sharp)
    >>> loss.shape, round(loss.item(), 3)  # the minimum, -log 3
    (torch.Size([]), -1.099)
    >>> round(sg.twist(torch.zeros(4, 3), torch.zeros(4, 3)).item(), 3)  # uniform: log 3 - log 3
    0.0
    """
    consistency, sharpness, diversity = twist_terms(logits1, logits2)
    return consistency + sharpness - diversity


# ---------------------------------------------------------------- SPCL's prototype losses


def siamese_metric(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, head,
                   reduction: str = "mean") -> torch.Tensor:
    """SPCL's Siamese-style metric loss, as we reconstruct it (Mo et al., "Siamese Prototypical
    Contrastive Learning", BMVC 2021, Sec. 3.4).

    The paper's equation (its Eq. 3) is missing from the text we have; it says a head "predicts the
    distance between the pairs", anchor-positive from the anchor's prototype and anchor-negative
    from another one, citing Koch et al. (2015). This is Koch et al.'s Siamese verification loss:
    a pair (u, v) is scored by the head from the element-wise distance, s(u, v) = head(|u - v|)
    (a logit; Koch: a learned weighted L1 distance through a sigmoid), and trained with binary
    cross-entropy, same prototype = 1:

        L_i = 1/2 [ BCE(sigmoid(s(a_i, p_i)), 1) + BCE(sigmoid(s(a_i, n_i)), 0) ]
            = 1/2 [ softplus(-s(a_i, p_i)) + softplus(s(a_i, n_i)) ].

    Args:
        anchor, positive, negative: (M, D) embeddings; row i is one triplet.
        head: maps (M, D) element-wise distances to (M,) or (M, 1) logits (e.g. ``nn.Linear(D, 1)``).
        reduction: ``"mean"`` over the M triplets, or ``"none"`` for the (M,) per-triplet losses.
    Returns:
        scalar, or (M,).

    A head scoring a pair by its negative L1 distance; the positive equals the anchor (logit 0:
    softplus(0) = log 2) and the negative is far (logit -10: softplus(-10) ~ 0):

    >>> head = lambda d: -d.sum(1)  # (M, D) distances -> (M,) logits
    >>> anchor = torch.zeros(2, 4)  # (M, D) = (2, 4)
    >>> negative = torch.full((2, 4), 2.5)
    >>> loss = sg.siamese_metric(anchor, anchor, negative, head)
    >>> loss.shape, round(loss.item(), 3)  # (log 2 + softplus(-10)) / 2
    (torch.Size([]), 0.347)
    >>> sg.siamese_metric(anchor, anchor, negative, head, reduction="none").shape
    torch.Size([2])
    """
    if anchor.dim() != 2 or not anchor.shape == positive.shape == negative.shape:
        raise ValueError(f"siamese_metric takes three (M, D) embeddings of one shape, got {tuple(anchor.shape)}, "
                         f"{tuple(positive.shape)}, {tuple(negative.shape)}")
    same = head((anchor - positive).abs()).reshape(len(anchor))
    other = head((anchor - negative).abs()).reshape(len(anchor))
    loss = 0.5 * (F.softplus(-same) + F.softplus(other))
    return loss.mean() if reduction == "mean" else loss


def symmetric_ce(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
                 log_zero: float = -4.0, reduction: str = "mean") -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy
    Labels", ICCV 2019, Eqs. 5-7), SPCL's option for noisy prototypes (its Sec. 4.3.1).

    With p = softmax(logits) and q the one-hot target y:

        SCE = alpha * CE + beta * RCE,  CE = -log p_y,  RCE = -sum_k p_k log q_k = -A (1 - p_y),

    where log 0 in the reverse term is clipped to A = ``log_zero`` (the paper's -4; the authors'
    code clamps q at 1e-4, i.e. A = log 1e-4 = -9.2). The defaults alpha = 0.1, beta = 1 are the
    paper's CIFAR-10 setting.

    Args:
        logits: (N, K) class logits.
        target: (N,) class indices in [0, K).
        alpha, beta: weights of the cross-entropy and the reverse cross-entropy.
        log_zero: A < 0.
        reduction: ``"mean"`` over the N rows, or ``"none"`` for (N,).
    Returns:
        scalar, or (N,).

    Uniform predictions over K = 4 classes: p_y = 1/4, so SCE = 0.1 log 4 + 4 (1 - 1/4):

    >>> logits, target = torch.zeros(2, 4), torch.tensor([0, 3])  # (N, K) = (2, 4), (N,)
    >>> loss = sg.symmetric_ce(logits, target)
    >>> loss.shape, round(loss.item(), 3)
    (torch.Size([]), 3.139)
    >>> sg.symmetric_ce(logits, target, reduction="none").shape
    torch.Size([2])
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"symmetric_ce takes (N, K) logits and (N,) targets, got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    logp = logits.log_softmax(1)
    logp_y = logp.gather(1, target[:, None]).squeeze(1)
    loss = alpha * -logp_y + beta * -log_zero * (1 - logp_y.exp())
    return loss.mean() if reduction == "mean" else loss
