"""Guided stop-gradient (GSG): which views get the predictor and which are stop-gradient targets.

Every image ``a`` is paired with a different image ``b`` of the batch. Each image has two views
(1 and 2), a projection ``z`` per view (the *target*: online projection for SimSiam, momentum
projection for BYOL) and a prediction ``p = h(z)``. Of the four possible loss terms of a pair,

    D(p_a1, sg z_a2), D(p_a2, sg z_a1), D(p_b1, sg z_b2), D(p_b2, sg z_b1),

a policy keeps one term of ``a`` and one of ``b``:

* ``guided``:  find the closest cross-pair of targets (view i of a, view j of b) by Euclidean
  distance; those two views are the *sources* (they get the predictor), their siblings are the
  stop-gradient targets. Pulling the two closest views of different images toward their far
  siblings pushes them apart: "repel in the service of attracting".
* ``reverse``: the complement of guided (the far views are the sources).
* ``random``:  one of the four (i, j) cases, uniformly, per pair.
* ``symmetric``: all four terms with weight 1/4 (the SimSiam / BYOL baseline).

The batch loss is the mean over pairs of ``1/2 (term of a + term of b)``
(``1/4`` of all four terms for ``symmetric``).

Paper: Lee & Lee, "Implicit Contrastive Representation Learning with Guided Stop-gradient" (GSG).
Every image of a batch is ``a`` once, its partner ``b`` the image ``partners[a]`` of a
:func:`derangement`; all tensors are (2, B, D): views 1 and 2 of B images.
"""
from __future__ import annotations

import torch

from .losses import negative_cosine

POLICIES = ("guided", "random", "reverse", "symmetric")


def derangement(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed point: image i's partner.

    Drawn by rejection: a uniform permutation is a derangement with probability ~1/e, so the
    expected number of draws is ~2.7 and every derangement is equally likely.

    Args:
        n: the batch size, n >= 2.
        generator: a CPU generator (the permutation is always drawn on the host).
        device: where the result is put.
    Returns:
        (n,) int64 with ``perm[i] != i`` for every i.

    >>> perm = sg.derangement(6, torch.Generator().manual_seed(0))
    >>> perm.shape, bool((perm != torch.arange(6)).all()), sorted(perm.tolist())
    (torch.Size([6]), True, [0, 1, 2, 3, 4, 5])
    """
    if n < 2:
        raise ValueError(f"derangement needs n >= 2 (got n={n}): an image cannot be its own partner")
    arange = torch.arange(n, device=device)
    while True:
        perm = torch.randperm(n, generator=generator, device="cpu").to(device)
        if not bool((perm == arange).any()):
            return perm


def _terms(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(2, B) loss terms of one image role: row v is D(p_v, sg z_(other view))."""
    z = z.detach()  # the stop-gradient: targets are constants
    return torch.stack((negative_cosine(p[0], z[1]), negative_cosine(p[1], z[0])))


def select_sources(z_a: torch.Tensor, z_b: torch.Tensor, policy: str,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Source view (0 or 1) of image a and of its partner b, per pair, shape (B,) each.

    Cases are numbered as in the paper: 0 = (11, 21), 1 = (11, 22), 2 = (12, 21), 3 = (12, 22);
    ties go to the first case, as in the paper's if/elif chain.

    Args:
        z_a, z_b: (2, B, D) targets of views 1 and 2 of images a and of their partners b.
        policy: ``"guided"`` (closest cross-pair), ``"reverse"`` (its complement) or ``"random"``.
        generator: drives ``"random"``; its device is where the cases are drawn.
    Returns:
        (source view of a, source view of b), (B,) int64 each, on the device of ``z_a``.

    One pair (B = 1) in D = 2, where view 2 of b is the target closest to view 1 of a:

    >>> z_a = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])  # (2, 1, 2): views 1 and 2 of image a
    >>> z_b = torch.tensor([[[-5.0, 0.0]], [[2.0, 0.0]]])  # views 1 and 2 of its partner b
    >>> sg.select_sources(z_a, z_b, "guided")  # case (11, 22): view 1 of a, view 2 of b
    (tensor([0]), tensor([1]))
    >>> sg.select_sources(z_a, z_b, "reverse")  # the far views instead
    (tensor([1]), tensor([0]))
    """
    if policy in ("guided", "reverse"):
        with torch.no_grad():
            za, zb = z_a.detach().float(), z_b.detach().float()
            # (2, 2, B): distance between view i of a and view j of b
            d = (za[:, None] - zb[None, :]).norm(dim=-1)
            case = d.flatten(0, 1).argmin(dim=0)  # (B,) in 0..3
        if policy == "reverse":
            case = 3 - case  # both sources flip to the far views
    elif policy == "random":
        gen_device = generator.device if generator is not None else "cpu"
        case = torch.randint(0, 4, (z_a.shape[1],), generator=generator, device=gen_device)
        case = case.to(z_a.device)
    else:
        raise ValueError(f"unknown stop-gradient policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return case // 2, case % 2


def pair_loss(p_a: torch.Tensor, z_a: torch.Tensor, p_b: torch.Tensor, z_b: torch.Tensor,
              policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scalar GSG batch loss for B pairs of images.

    Args:
        p_a, z_a: (2, B, D) predictions and targets of views 1 and 2 of images a.
        p_b, z_b: (2, B, D) the same for their partner images b.
        policy: ``"guided"``, ``"random"``, ``"reverse"`` or ``"symmetric"``.
        generator: drives the ``"random"`` policy (on the device of the tensors).
    Returns:
        scalar: mean over pairs of 1/2 (term of a + term of b); ``symmetric`` is 1/4 of all four
        terms. Targets are detached; gradients reach only the predictions of the selected source
        views.

    >>> _ = torch.manual_seed(0)
    >>> p = torch.randn(2, 8, 16, requires_grad=True)  # (2, B, D): predictions h(z) of views 1 and 2
    >>> z = torch.randn(2, 8, 16)  # (2, B, D): their targets (online or momentum projections)
    >>> partners = sg.derangement(8, torch.Generator().manual_seed(0))
    >>> loss = sg.pair_loss(p, z, p[:, partners], z[:, partners], policy="guided")
    >>> loss.shape, bool(-1 <= loss <= 1)
    (torch.Size([]), True)
    >>> loss.backward()  # into p only: the targets are constants
    >>> p.grad.shape
    torch.Size([2, 8, 16])
    """
    if p_a.shape != z_a.shape or p_b.shape != z_b.shape or p_a.shape[0] != 2 or p_b.shape[0] != 2:
        raise ValueError(f"pair_loss expects (2, B, D) tensors; got p_a {tuple(p_a.shape)}, "
                         f"z_a {tuple(z_a.shape)}, p_b {tuple(p_b.shape)}, z_b {tuple(z_b.shape)}")
    terms_a, terms_b = _terms(p_a, z_a), _terms(p_b, z_b)  # (2, B) each
    if policy == "symmetric":
        return 0.25 * (terms_a.sum(0) + terms_b.sum(0)).mean()
    src_a, src_b = select_sources(z_a, z_b, policy, generator)
    term_a = terms_a.gather(0, src_a[None]).squeeze(0)  # (B,)
    term_b = terms_b.gather(0, src_b[None]).squeeze(0)
    return (0.5 * (term_a + term_b)).mean()
