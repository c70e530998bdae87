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
    b = len(z1)
    z = F.normalize(torch.cat((z1, z2)), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat((torch.arange(b, 2 * b), torch.arange(b))).to(z.device)
    return F.cross_entropy(sim, target)
