"""Stopping a run cleanly: termination signals, and a loss that is no longer a number.

:class:`StopRequest` turns the first SIGTERM or SIGINT into a request that the training loop
honours after the current step (checkpoint, then a message saying how to resume); a second
SIGINT interrupts at once. :class:`LossGuard` watches the loss for NaN and Inf: it either skips a
bad step (``--max-nan-skips``) or ends the run with :class:`NonFiniteLoss`, before a checkpoint
could save the damaged weights.

On CPU every step is checked as it happens. On CUDA, reading the loss on the host would stall the
device every step, so unless steps may be skipped the check collects a flag on the device and
reads it every :data:`CHECK_EVERY` steps; the weights of a bad step are never checkpointed either
way, because a checkpoint is written only after a check. Several processes (torchrun) take every
decision together, at the same step, with a host-side vote.
"""
from __future__ import annotations

import signal
import threading

import torch

from . import distributed

CHECK_EVERY = 10  # steps between host reads of the device-side flags (CUDA, or several processes)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the message names the step, the loss terms and what was kept."""


class StopRequest:
    """Installs handlers for SIGTERM and SIGINT while a run trains (main thread only)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class LossGuard:
    """Counts non-finite losses; ``max_skips`` of them may be skipped, one more stops the run."""

    def __init__(self, device: torch.device, max_skips: int):
        self.max_skips, self.skipped = max_skips, 0
        self.synchronous = device.type != "cuda" or max_skips > 0
        self._flag = torch.zeros((), dtype=torch.bool, device=device)  # a bad step since the last read

    def step_is_bad(self, loss: torch.Tensor) -> bool:
        """Before the optimiser step: True when this step's loss is not finite and it must be skipped
        (synchronous mode only; :meth:`over_budget` then says whether the run must stop instead)."""
        if not self.synchronous:
            self._flag |= ~torch.isfinite(loss.detach())
            return False
        bad = not bool(torch.isfinite(loss.detach()))
        if distributed.active():
            bad = distributed.any_process(bad)
        self.skipped += bad
        return bad

    def over_budget(self) -> bool:
        return self.skipped > self.max_skips

    def deferred_bad(self) -> bool:
        """Asynchronous mode: whether any step since the last call had a non-finite loss (reads the device)."""
        if self.synchronous:
            return False
        bad = bool(self._flag)
        self._flag.zero_()
        return distributed.any_process(bad) if distributed.active() else bad


def describe_terms(loss: torch.Tensor, stats: dict) -> str:
    """``loss nan; mi_bound nan, ...``: the loss and the method's statistics of a step, for messages."""
    parts = [f"loss {float(loss.detach()):.4g}"]
    parts += [f"{k} {float(v.detach()):.4g}" for k, v in stats.items() if k not in ("collapse_std",) and v.numel() == 1]
    return ", ".join(parts[:8])
