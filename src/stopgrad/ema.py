"""Momentum (EMA) copies and momentum schedules, as plain functions."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy: no parameter requires grad, so no optimiser can step it."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters and buffers.

    Buffers (BatchNorm running statistics) follow the same average; the integer batch counter
    is copied.
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
    """EMA momentum at ``step``: constant, or BYOL's cosine increase from ``base`` to 1."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(step / max(total_steps, 1), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r}; choose constant or cosine")
