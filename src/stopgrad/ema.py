"""Momentum (EMA) copies and momentum schedules, as plain functions."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy: no parameter requires grad, so no optimiser can step it.

    Args:
        module: the online network.
    Returns:
        a copy with the same parameters and buffers (same shapes and values), not shared.

    >>> online = torch.nn.Linear(3, 2)
    >>> target = sg.momentum_copy(online)
    >>> target.weight.shape, torch.equal(target.weight, online.weight), target.weight is online.weight
    (torch.Size([2, 3]), True, False)
    >>> any(p.requires_grad for p in target.parameters())
    False
    """
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters and buffers.

    Buffers (BatchNorm running statistics) follow the same average; the integer batch counter
    is copied.

    Args:
        target: the momentum copy (:func:`momentum_copy`), updated in place.
        online: a module with the same parameters and buffers (same shapes).
        momentum: in [0, 1]; 1 leaves ``target`` unchanged, 0 copies ``online``.

    >>> online = torch.nn.Linear(2, 1)
    >>> target = sg.momentum_copy(online)
    >>> with torch.no_grad():
    ...     _ = target.weight.fill_(0.0)
    ...     _ = online.weight.fill_(1.0)
    >>> sg.ema_update(target, online, momentum=0.9)  # 0.9 * 0 + 0.1 * 1
    >>> target.weight.detach()
    tensor([[0.1000, 0.1000]])
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        if tb.dtype.is_floating_point:
            tb.lerp_(ob, 1.0 - momentum)
        else:
            tb.copy_(ob)


def momentum_at(step: int, total_steps: int, base: float, schedule: str = "constant") -> float:
    """EMA momentum at ``step``: constant, or BYOL's cosine increase from ``base`` to 1.

    Args:
        step: the optimiser step, from 0.
        total_steps: the run's steps; the cosine reaches 1 there.
        base: the momentum at step 0.
        schedule: ``"constant"`` or ``"cosine"``.
    Returns:
        the momentum, a float.

    >>> sg.momentum_at(500, 1000, 0.99)
    0.99
    >>> round(sg.momentum_at(500, 1000, 0.99, "cosine"), 6), sg.momentum_at(1000, 1000, 0.99, "cosine")
    (0.995, 1.0)
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(step / max(total_steps, 1), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r}; choose constant or cosine")
