"""Geometry of a representation: is it collapsing, and how?

Pure metrics of an (N, D) embedding matrix (rows are L2-normalised first, so every number is
free of the embedding's scale):

* ``collapse_std`` — the mean over dimensions of the per-dimension standard deviation: ~1/sqrt(D)
  for embeddings spread over the sphere, 0 when every row is the same point (complete collapse).
* ``spectrum`` — the eigenvalues of the embeddings' covariance matrix, largest first (DirectCLR's
  "dimensional collapse" view, Jing et al. 2022: a collapsed dimension has eigenvalue ~0).
* ``effective_rank`` — exp of the entropy of the normalised singular values of the embedding
  matrix (Roy & Vetterli 2007, as RankMe uses it): 1 for a collapsed set, up to D when every
  direction is used equally.
* ``alignment`` — E ||f(x) - f(x')||^2 over the two views of an image (Wang & Isola 2020): 0 when
  the views coincide.
* ``uniformity`` — log E exp(-2 ||f(x) - f(y)||^2) over pairs of different images (Wang & Isola
  2020): 0 for a collapsed set, about -4 + 8/D for points uniform on the sphere.
* TP / FN / TN similarity of two views with labels (:func:`stopgrad.methods.common.view_similarities`).

:func:`geometry` evaluates all of them for a method's representation (backbone output) and its
projection (projector output), on test images.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import AugmentRecipe
from ..methods.common import collapse_std as _collapse_std
from ..methods.common import view_similarities
from .features import embed, eval_mode, projection_module


def collapse_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised rows of ``z`` (N, D).

    Returns a float: 1/sqrt(D) for D orthogonal directions, 0 when every row is the same point.

    >>> round(sg.collapse_std(torch.eye(4)), 3)  # (N, D) = (4, 4): 1/sqrt(4)
    0.5
    >>> sg.collapse_std(torch.ones(8, 4))  # complete collapse
    0.0
    """
    return _collapse_std(z).item()


def spectrum(z: torch.Tensor) -> torch.Tensor:
    """(D,) eigenvalues of the covariance of the L2-normalised rows of ``z``, descending (float64, CPU).

    ``z`` is (N, D). The rows of the identity span all but the direction of their mean:

    >>> values = sg.spectrum(torch.eye(4))  # (N, D) = (4, 4)
    >>> values.shape, values.dtype, [round(v, 3) for v in values.tolist()]
    (torch.Size([4]), torch.float64, [0.333, 0.333, 0.333, 0.0])
    """
    z = F.normalize(z.detach().double().cpu(), dim=1)
    cov = torch.cov(z.T)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)


def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(entropy of p), p_k = s_k / sum(s): singular values s of the L2-normalised rows of ``z``.

    ``z`` is (N, D); returns a float in [1, min(N, D)].

    >>> round(sg.effective_rank(torch.eye(4)), 3), round(sg.effective_rank(torch.ones(8, 4)), 3)
    (4.0, 1.0)
    """
    s = torch.linalg.svdvals(F.normalize(z.detach().double().cpu(), dim=1))
    p = s / s.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x')||^alpha over row pairs of two views (L2-normalised rows).

    ``z1`` and ``z2`` are (N, D), row i of each a view of image i; returns a float in [0, 2^alpha].

    >>> z = torch.eye(3)  # (N, D) = (3, 3)
    >>> sg.alignment(z, z), sg.alignment(z, -z)  # identical views; opposite views: ||2 e_i||^2
    (0.0, 4.0)
    """
    d = (F.normalize(z1.detach().float(), dim=1) - F.normalize(z2.detach().float(), dim=1)).norm(dim=1)
    return d.pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0, max_points: int = 4096) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over pairs of distinct rows (the first ``max_points`` rows).

    ``z`` is (N, D), N >= 2; returns a float <= 0 (0 for a collapsed set).

    >>> round(sg.uniformity(torch.eye(4)), 3)  # every pair at squared distance 2: -t * 2
    -4.0
    >>> sg.uniformity(torch.ones(8, 4))
    0.0
    """
    z = F.normalize(z[:max_points].detach().double(), dim=1)
    if len(z) < 2:
        raise ValueError("uniformity needs at least two embeddings")
    sq = torch.pdist(z).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(len(sq))).item()


def describe(z: torch.Tensor, z1: torch.Tensor | None = None, z2: torch.Tensor | None = None,
             max_points: int = 2048) -> dict[str, float]:
    """collapse_std, effective_rank, uniformity (first ``max_points`` rows) of ``z``; alignment of the
    views ``z1``, ``z2`` when given.

    ``z`` is (N, D), ``z1`` and ``z2`` (M, D) each.

    >>> z = torch.eye(4)  # (N, D) = (4, 4)
    >>> {key: round(value, 3) for key, value in sg.describe(z, z, z).items()}
    {'collapse_std': 0.5, 'effective_rank': 4.0, 'uniformity': -4.0, 'alignment': 0.0}
    """
    if (z1 is None) != (z2 is None):
        raise ValueError("describe needs both views z1 and z2 for the alignment, or neither")
    out = {"collapse_std": collapse_std(z), "effective_rank": effective_rank(z),
           "uniformity": uniformity(z, max_points=max_points)}
    if z1 is not None:
        out["alignment"] = alignment(z1, z2)
    return out


@torch.no_grad()
def _project(projector: nn.Module, r: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    with eval_mode(projector):
        return torch.cat([projector(part).float() for part in r.split(chunk)])


def geometry(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, mean, std,
             recipe: AugmentRecipe, size: int | None = None, pairs: int = 2048, seed: int = 0,
             keep_spectra: bool = False, rep: torch.Tensor | None = None) -> dict:
    """Geometry of ``model``'s representation (``rep_*``) and projection (``proj_*``) on ``images``.

    ``model`` is a method (with ``backbone`` and, usually, ``projector``) or a bare backbone.
    The spread metrics use the un-augmented images; alignment and the TP / FN / TN similarity
    (``test_tp_similarity`` ..., projection space, needs ``labels``) use two views made with
    ``recipe`` of the first ``pairs`` images, drawn from a generator seeded with ``seed``, so
    successive evaluations see the same views. With ``keep_spectra`` the covariance spectra are
    returned too (``spectra``: {"rep": [...], "proj": [...]}) for plotting. ``rep`` passes the raw
    backbone features of ``images`` when the caller has them already.

    Args:
        model: a method, or a backbone mapping (N, C, H, W) images to (N, F) features.
        images: (N, C, H, W) uint8 test images.
        labels: (N,) int64, or None (no TP / FN / TN similarity).
        mean, std, size: the backbone's input normalisation and side (default: the images').
        recipe: the augmentation of the two views.
    Returns:
        a dict of floats (and ``spectra`` with ``keep_spectra``).

    >>> _ = torch.manual_seed(0)
    >>> data = sg.load_dataset("digits")
    >>> model = sg.build_method(sg.build_config(overrides={"method": "simsiam", "width": 4}), in_channels=1)
    >>> args = (data.test_x[:64], data.test_y[:64], data.mean, data.std, sg.RECIPES["fashion-mnist"])
    >>> metrics = sg.geometry(model, *args, pairs=32)
    >>> sorted(metrics)
    ['proj_alignment', 'proj_collapse_std', 'proj_effective_rank', 'proj_uniformity',
     'rep_alignment', 'rep_collapse_std', 'rep_effective_rank', 'rep_uniformity',
     'test_fn_similarity', 'test_tn_similarity', 'test_tp_similarity']
    >>> all(isinstance(value, float) for value in metrics.values())
    True
    >>> sorted(sg.geometry(model.backbone, *args, pairs=32, keep_spectra=True))  # a bare backbone
    ['rep_alignment', 'rep_collapse_std', 'rep_effective_rank', 'rep_uniformity', 'spectra',
     'test_fn_similarity', 'test_tn_similarity', 'test_tp_similarity']
    """
    backbone = getattr(model, "backbone", model)
    device = next(backbone.parameters()).device
    proj = projection_module(model) if hasattr(model, "backbone") else None
    head = proj[1] if proj is not None else None
    rep = embed(backbone, images, mean, std, size, normalize=False) if rep is None else rep
    spaces = {"rep": rep}
    if head is not None:
        spaces["proj"] = _project(head, rep)
    n = min(pairs, len(images))
    g = torch.Generator(device=device).manual_seed(seed)
    subset = images[:n]
    view_rep = [embed(backbone, subset, mean, std, size, normalize=False, recipe=recipe, generator=g)
                for _ in range(2)]
    views = {"rep": view_rep}
    if head is not None:
        views["proj"] = [_project(head, v) for v in view_rep]
    out: dict = {}
    for name, z in spaces.items():
        for key, value in describe(z, *views[name], max_points=pairs).items():
            out[f"{name}_{key}"] = value
    if labels is not None:
        last = "proj" if head is not None else "rep"
        sims = view_similarities(*views[last], labels[:n].to(device))
        out.update({f"test_{k}": v.item() for k, v in sims.items()})
    if keep_spectra:
        out["spectra"] = {name: spectrum(z).tolist() for name, z in spaces.items()}
    return out


def plot_spectra(spectra: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """PNG of log10 covariance eigenvalues, largest first, one curve per space."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    names = {"rep": "representation", "proj": "projection"}
    for name, values in spectra.items():
        v = torch.tensor(values).clamp_min(1e-12)
        ax.plot(range(1, len(v) + 1), v.log10(), label=names.get(name, name))
    ax.set_xlabel("rank")
    ax.set_ylabel("log10 eigenvalue of the covariance")
    ax.set_title(title or "embedding spectrum (test images)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
