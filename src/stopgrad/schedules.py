"""Learning-rate schedules: pure functions of the step."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "cosine", warmup_steps: int = 0) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to zero at ``total_steps``.

    Args:
        step: the optimiser step, from 0.
        total_steps: the run's steps.
        base_lr: the learning rate after warm-up.
        schedule: ``"cosine"`` or ``"constant"``.
        warmup_steps: steps of linear warm-up, reaching ``base_lr`` at step ``warmup_steps - 1``.
    Returns:
        the learning rate, a float.

    >>> [round(sg.lr_at(step, 100, 0.1, warmup_steps=10), 6) for step in (0, 9, 55, 100)]
    [0.01, 0.1, 0.05, 0.0]
    >>> sg.lr_at(55, 100, 0.1, schedule="constant")
    0.1
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose cosine or constant")
