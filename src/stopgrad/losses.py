"""Loss functions: pure functions of tensors.

They know nothing about devices, processes or optimisers, and they never detach:
where a stop-gradient belongs, the caller (see :mod:`stopgrad.gsg`) writes it.
"""
from __future__ import annotations

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
