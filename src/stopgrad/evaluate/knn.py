"""Weighted k-nearest-neighbour classification on L2-normalised backbone features (InstDisc).

Each query votes with its k most cosine-similar bank images, weight exp(sim / T) per neighbour;
k = 1 is the plain nearest neighbour. Several k are evaluated in one pass: the neighbours are
found once for the largest k, sorted, and every smaller k reads a prefix of them.

The search is chunked both ways: query chunks against bank chunks, keeping a running top-k per
query, so the (chunk, bank) similarity block is bounded whatever the bank's size. The bank may
stay in host memory while the search runs on a GPU (chunks are copied as they are needed).
"""
from __future__ import annotations

import torch
from torch import nn

from .features import embed

DEFAULT_KS = (1, 200)


@torch.no_grad()
def nearest(bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024, bank_chunk: int = 65536,
            device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (Q, k), of the k most similar bank rows per query, sorted descending.

    ``bank`` (N, F) and ``queries`` (Q, F) are normalised features; the search runs on ``device``
    (default: the queries') in blocks of ``chunk`` queries x ``bank_chunk`` bank rows. Each bank
    block is copied to the device once; a running top-k per query merges the blocks.
    """
    device = torch.device(device) if device is not None else queries.device
    k = min(k, len(bank))
    queries = queries.to(device)
    best_s = torch.full((len(queries), k), float("-inf"), device=device)
    best_i = torch.zeros((len(queries), k), dtype=torch.long, device=device)
    # one similarity buffer for every block: a fresh (chunk, N) allocation per chunk costs ~10% on CPU
    buffer = torch.empty(min(chunk, len(queries)), min(bank_chunk, len(bank)), device=device, dtype=queries.dtype)
    for j in range(0, len(bank), bank_chunk):
        b = bank[j:j + bank_chunk].to(device, non_blocking=True)
        for i in range(0, len(queries), chunk):
            q = queries[i:i + chunk]
            out = buffer[:len(q)] if len(b) == buffer.shape[1] else None  # the last, shorter block allocates
            s, idx = torch.mm(q, b.T, out=out).topk(min(k, len(b)), dim=1)  # (q, k) within this block
            if j > 0:  # merge with the running top-k of the earlier blocks
                s, pos = torch.cat((best_s[i:i + chunk], s), 1).topk(k, dim=1)
                idx = torch.cat((best_i[i:i + chunk], idx + j), 1).gather(1, pos)
            best_s[i:i + chunk], best_i[i:i + chunk] = s, idx
    return best_s, best_i


@torch.no_grad()
def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
               ks=DEFAULT_KS, temperature: float = 0.1, num_classes: int | None = None, chunk: int = 1024,
               device=None) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (fractions) of weighted kNN for every k in ``ks``, in one search.

    Returns ``{k: {"top1": ..., "top5": ...}}``: top-5 counts a query when its class is among the
    five classes with the most votes and received a vote; it is None for k < 5 (fewer than five
    classes can receive votes). ``num_classes`` defaults to the largest label + 1.

    Args:
        bank: (N, F) L2-normalised features of the labelled images.
        bank_labels: (N,) int64.
        queries: (Q, F) L2-normalised features to classify.
        query_labels: (Q,) int64, their true classes.
        ks: the k to evaluate; temperature: T of the vote weights exp(sim / T).

    Query 0 is a copy of the bank image of its class; query 1 (class 3) is closest to the image of
    class 2 and second-closest to that of class 3, which is among the top five once k = 5 vote:

    >>> bank, bank_labels = torch.eye(6), torch.arange(6)  # (N, F) = (6, 6), (N,)
    >>> queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0.5, 0, 0]]))
    >>> sg.knn_scores(bank, bank_labels, queries, torch.tensor([0, 3]), ks=(1, 5))  # queries (Q, F) = (2, 6)
    {1: {'top1': 0.5, 'top5': None}, 5: {'top1': 0.5, 'top5': 1.0}}
    """
    if temperature <= 0 or not ks or min(ks) < 1:
        raise ValueError(f"kNN needs k >= 1 and a positive temperature (got ks={ks}, T={temperature})")
    device = torch.device(device) if device is not None else queries.device
    num_classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    bank_labels, query_labels = bank_labels.to(device), query_labels.to(device)
    correct = {k: torch.zeros(2, device=device) for k in ks}
    sims, idxs = nearest(bank, queries, max(ks), chunk, device=device)
    for i in range(0, len(queries), chunk):
        sim, idx = sims[i:i + chunk], idxs[i:i + chunk]
        weight, neighbour_labels = (sim / temperature).exp(), bank_labels[idx]  # (q, kmax)
        truth = query_labels[i:i + chunk, None]
        for k in ks:
            votes = torch.zeros(len(sim), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weight[:, :k])
            top_votes, top = votes.topk(min(5, num_classes), dim=1)  # (q, 5), best first
            correct[k][0] += (top[:, 0:1] == truth).sum()
            correct[k][1] += ((top == truth) & (top_votes > 0)).any(1).sum()  # a class without votes is no guess
    n = len(queries)
    return {k: {"top1": c[0].item() / n, "top5": c[1].item() / n if k >= 5 else None} for k, c in correct.items()}


@torch.no_grad()
def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 200,
                 temperature: float = 0.1, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (Q,) for normalised ``queries`` (Q, F) against ``bank`` (N, F)."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    bank_labels = bank_labels.to(queries.device)
    sims, idxs = nearest(bank, queries, k, chunk)
    preds = []
    for sim, idx in zip(sims.split(chunk), idxs.split(chunk)):  # (chunk, classes) votes at a time
        votes = torch.zeros(len(sim), num_classes, device=queries.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_evaluate(backbone: nn.Module, train_x, train_y, test_x, test_y, mean, std, size: int | None = None,
                 ks=DEFAULT_KS, temperature: float = 0.1) -> dict[int, dict[str, float]]:
    """:func:`knn_scores` of a frozen backbone: bank = train images, queries = test images, un-augmented.

    Args:
        backbone: (N, C, H, W) images -> (N, F) features; run in eval mode, left unchanged.
        train_x, train_y: the bank's (N, C, H, W) uint8 images and (N,) labels.
        test_x, test_y: the queries' (Q, C, H, W) uint8 images and (Q,) labels.
        mean, std, size: the backbone's input normalisation and side (default: the images').
    Returns:
        ``{k: {"top1": fraction, "top5": fraction or None}}`` as :func:`knn_scores`.

    >>> _ = torch.manual_seed(0)
    >>> data = sg.load_dataset("digits")
    >>> net = sg.build_backbone("small-cnn", 1, width=4)  # untrained
    >>> scores = sg.knn_evaluate(net, data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std,
    ...                          ks=(1, 20))
    >>> sorted(scores), sorted(scores[20]), scores[1]["top5"]
    ([1, 20], ['top1', 'top5'], None)
    >>> 0 <= scores[20]["top1"] <= scores[20]["top5"] <= 1
    True
    """
    bank = embed(backbone, train_x, mean, std, size)
    queries = embed(backbone, test_x, mean, std, size)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return knn_scores(bank, train_y, queries, test_y, ks, temperature, num_classes)


def knn_top1(backbone: nn.Module, train_x, train_y, test_x, test_y, mean, std, size: int | None = None,
             k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (a fraction) of weighted kNN with one k.

    Takes the images as :func:`knn_evaluate` does: (N, C, H, W) uint8 bank and (Q, C, H, W) query
    images with (N,) and (Q,) labels.

    >>> _ = torch.manual_seed(0)
    >>> data = sg.load_dataset("digits")
    >>> net = sg.build_backbone("small-cnn", 1, width=4)
    >>> args = (net, data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std)
    >>> top1 = sg.knn_top1(*args, k=20)
    >>> isinstance(top1, float), top1 == sg.knn_evaluate(*args, ks=(20,))[20]["top1"]
    (True, True)
    """
    return knn_evaluate(backbone, train_x, train_y, test_x, test_y, mean, std, size, (k,), temperature)[k]["top1"]
