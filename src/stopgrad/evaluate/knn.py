"""Weighted k-nearest-neighbour classification on L2-normalised backbone features (InstDisc).

Each query votes with its k most cosine-similar bank images, weight exp(sim / T) per neighbour;
k = 1 is the plain nearest neighbour.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import prepare
from ..data.stream import iter_batches


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, mean, std, size: int | None = None,
          batch_size: int = 1024, device=None, amp: bool | None = None) -> torch.Tensor:
    """(N, F) L2-normalised float32 features of un-augmented images, with the backbone in eval mode.

    ``images`` is a uint8 tensor on any device or a streamed ``FolderImages``.

    ``amp`` runs the backbone under bfloat16 autocast (default: on CUDA only). The backbone's
    train/eval mode is restored afterwards and its weights are untouched.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    amp = device.type == "cuda" if amp is None else amp
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            on = images.device if isinstance(images, torch.Tensor) else device
            order = torch.arange(len(images), device=on)
            for x in iter_batches(images, order, batch_size, on, drop_last=False):
                x = prepare(x.to(device, non_blocking=True), mean, std, size)
                out.append(F.normalize(backbone(x).float(), dim=1))
    finally:
        backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 200,
                 temperature: float = 0.1, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (Q,) for normalised ``queries`` (Q, F) against ``bank`` (N, F)."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    k = min(k, len(bank))
    bank_labels = bank_labels.to(bank.device)
    preds = []
    # one similarity buffer for every chunk: a fresh (chunk, N) allocation per chunk costs ~10% on CPU
    buffer = torch.empty(min(chunk, len(queries)), len(bank), device=bank.device, dtype=bank.dtype)
    for i in range(0, len(queries), chunk):
        q = queries[i:i + chunk]
        sim, idx = torch.mm(q, bank.T, out=buffer[:len(q)]).topk(k, dim=1, sorted=False)  # (q, k)
        votes = torch.zeros(len(sim), num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_top1(backbone: nn.Module, train_x, train_y, test_x, test_y, mean, std, size: int | None = None,
             k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (a fraction) of weighted kNN: bank = train images, queries = test images."""
    bank = embed(backbone, train_x, mean, std, size)
    queries = embed(backbone, test_x, mean, std, size)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_classify(bank, train_y, queries, k, temperature, num_classes)
    return (pred.cpu() == test_y.cpu()).float().mean().item()
