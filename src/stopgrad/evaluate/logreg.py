"""Multinomial logistic regression on fixed features, fitted with full-batch L-BFGS.

The objective is scikit-learn's ``LogisticRegression(C=1/wd)`` divided by the number of samples n:

    J(W, b) = (1/n) sum_i CE(W x_i + b, y_i) + wd / (2 n) ||W||^2       (the bias is not penalised)

so a weight decay ``wd`` here means what it means in Ericsson et al.'s transfer protocol (which
passes C = 1/wd to scikit-learn). It is minimised with ``torch.optim.LBFGS`` (strong-Wolfe line
search) on whatever device holds the features, and a sweep over weight decays warm-starts each
fit from the previous solution. ``benchmarks/logreg.py`` compares it with scikit-learn's solver on
the same features (time, objective, accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LinearClassifier:
    """A fitted linear classifier: logits = x @ weight.T + bias (after ``(x - shift) / scale``)."""
    weight: torch.Tensor  # (C, F)
    bias: torch.Tensor  # (C,)
    shift: torch.Tensor | None = None  # (F,) feature standardisation, when fitted with it
    scale: torch.Tensor | None = None
    iterations: int = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift is not None:
            x = (x - self.shift) / self.scale
        return x @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)


def objective(clf: LinearClassifier, x: torch.Tensor, y: torch.Tensor, wd: float) -> float:
    """J(W, b) of the module docstring on (already standardised, if the classifier is) features."""
    with torch.no_grad():
        logits = x @ clf.weight.T + clf.bias
        return (F.cross_entropy(logits, y) + wd / (2 * len(x)) * clf.weight.pow(2).sum()).item()


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per feature of ``x``; constant features get std 1 (they stay constant, centred)."""
    std = x.std(0)
    return x.mean(0), torch.where(std > 1e-8, std, torch.ones_like(std))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, wd: float, max_iter: int = 1000,
                 tol: float = 1e-6, init: LinearClassifier | None = None) -> LinearClassifier:
    """Minimise J(W, b) on features ``x`` (N, F) with labels ``y`` (N,) in [0, num_classes).

    ``max_iter`` bounds the L-BFGS iterations; it stops earlier when the gradient's largest entry
    falls below ``tol`` or the loss stops changing. ``init`` warm-starts from another fit.
    """
    if wd <= 0:
        raise ValueError(f"weight decay must be positive, got {wd}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"features and labels must be non-empty and of equal length, got {len(x)} and {len(y)}")
    x = x.float()
    y = y.to(x.device)
    weight = (init.weight.clone() if init is not None else torch.zeros(num_classes, x.shape[1], device=x.device))
    bias = init.bias.clone() if init is not None else torch.zeros(num_classes, device=x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    penalty = wd / (2 * len(x))
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(x @ weight.T + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    iterations = opt.state[opt._params[0]].get("n_iter", 0)
    return LinearClassifier(weight.detach(), bias.detach(), iterations=iterations)


def accuracy(pred: torch.Tensor, y: torch.Tensor, metric: str = "top1", num_classes: int | None = None) -> float:
    """Top-1 accuracy, or the mean over classes of the per-class accuracy (``metric="per-class"``)."""
    pred, y = pred.cpu(), y.cpu()
    if metric == "top1":
        return (pred == y).float().mean().item()
    if metric == "per-class":
        classes = y.unique()
        return torch.stack([(pred[y == c] == c).float().mean() for c in classes]).mean().item()
    raise ValueError(f"unknown metric {metric!r}; choose top1 or per-class")


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 5) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y.to(logits.device)[:, None]).any(1).float().mean().item()


def sweep_weight_decay(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                       num_classes: int, wds, metric: str = "top1", max_iter: int = 1000,
                       log=None, ascending: bool = False) -> tuple[float, list[dict]]:
    """Fit on train for every weight decay and score on val; returns (best wd, per-wd records).

    Each fit is warm-started from the previous one: from the strongest regularisation to the
    weakest (the usual regularisation path), or with ``ascending`` from the weakest up (Ericsson
    et al.'s order). The best is the highest validation score; a tie goes to the smallest weight
    decay (their loop keeps the first of equal scores in increasing wd).
    """
    records, init = [], None
    for wd in sorted((float(w) for w in wds), reverse=not ascending):
        init = fit_logistic(x_train, y_train, num_classes, wd, max_iter, init=init)
        score = accuracy(init.predict(x_val), y_val, metric)
        records.append({"wd": wd, "val_score": score, "iterations": init.iterations})
        if log is not None:
            log(f"wd {wd:.3g}: validation {metric} {score:.4f} ({init.iterations} L-BFGS iterations)")
    records.sort(key=lambda r: r["wd"])
    best = max(records, key=lambda r: r["val_score"])  # max keeps the first of equals: the smallest wd
    return best["wd"], records
