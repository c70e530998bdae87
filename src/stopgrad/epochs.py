"""An epoch's state and a run's checkpoints: what lets a run stop at any step and continue exactly.

:class:`EpochState` is where an epoch is (its order, partners, this process's generator, the
statistics summed so far); :func:`start_epoch` draws it from generators seeded by (seed, epoch),
and, under torchrun, the process's rank; :func:`checkpoint_state` gathers everything a step depends
on into one checkpoint; :func:`resume_checkpoint` puts a checkpoint back into a built run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from . import distributed, runs
from .config import ConfigError
from .data import RECIPES, augment
from .data.stream import iter_batches
from .gsg import derangement

if TYPE_CHECKING:
    from .train import Setup


def epoch_generators(seed: int, epoch: int, device: torch.device, rank: int | None = None
                     ) -> tuple[torch.Generator, torch.Generator]:
    """(device generator for shuffling/augmentation/random policy, CPU generator for partners).

    ``rank`` (under torchrun) gives each process its own streams for augmentation and partners;
    the epoch's order is drawn from the shared ``rank=None`` generator on every process.
    """
    base = seed * 1_000_003 + epoch + (0 if rank is None else 1_000_000_007 * (rank + 1))
    g = torch.Generator(device=device).manual_seed(base)
    g_cpu = torch.Generator().manual_seed(base + 500_000)
    return g, g_cpu


def make_views(images: torch.Tensor, n_views: int, recipe, mean, std, size, g,
               channels_last: bool = False) -> torch.Tensor:
    """(V, B, C, S, S) augmented views of a (B, C, H, W) uint8 batch, in one augmentation call.

    With ``channels_last`` the views are laid out so that ``views.flatten(0, 1)`` is NHWC.
    """
    views = augment(images, recipe, mean, std, size, g, views=n_views)
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    return views.unflatten(0, (n_views, images.shape[0]))


@dataclass
class EpochContext:
    """What a method's ``begin_epoch(ctx, order) -> (order, stats)`` hook reads (SPCL: embed and
    cluster the training set, then build the epoch's batches). Its random draws come from
    ``generator``, the epoch's device generator, or from seeds of (``seed``, ``epoch``)."""
    epoch: int
    seed: int
    images: torch.Tensor  # the training images: uint8 (N, C, H, W) on the device, or a streamed FolderImages
    labels: torch.Tensor  # (N,) on the device
    batch_size: int  # the global batch
    steps: int  # the epoch's batches: the returned order needs steps * batch_size entries
    generator: torch.Generator
    device: torch.device
    amp: bool
    workers: int | None
    make_view: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, C, H, W) -> one augmented view (B, C, S, S)

    def batches(self, size: int):
        """uint8 batches of ``size`` training images on the device, in training-set order (the last shorter)."""
        return iter_batches(self.images, torch.arange(len(self.images), device=self.device), size, self.device,
                            drop_last=False, workers=self.workers)


@dataclass
class EpochState:
    """Where an epoch is: its order and partners, this process's generator, the statistics summed so far."""
    epoch: int
    order: torch.Tensor  # (N,) training-set indices; step i's global batch is order[i*B:(i+1)*B]
    partners: torch.Tensor  # (steps, b) this process's partners (or (steps, B) global ones)
    g: torch.Generator  # this process's augmentation / random-policy generator
    done: int = 0  # steps finished
    totals: dict = field(default_factory=dict)  # loss and statistics summed on the device
    counts: dict = field(default_factory=dict)  # batches where each was defined (not NaN)
    seconds: float = 0.0  # training time spent in this epoch so far
    extra: dict = field(default_factory=dict)  # the method's epoch statistics (begin_epoch)
    lr: float = 0.0

    def add(self, loss: torch.Tensor, stats: dict) -> None:
        for key, value in {"loss": loss, **stats}.items():
            value = value.detach().float()
            defined = ~value.isnan()
            value = value.nan_to_num(0.0)
            self.totals[key] = self.totals[key] + value if key in self.totals else value
            self.counts[key] = self.counts[key] + defined if key in self.counts else defined.float()

    def means(self) -> dict:
        """Means over the epoch's batches (of every process): one host synchronisation."""
        names = list(self.totals)
        if not names:
            return {"lr": self.lr, **self.extra}
        sums = torch.stack([self.totals[k] for k in names] + [self.counts[k] for k in names])
        sums = distributed.all_reduce_mean(sums)  # the same ratio as the sums over processes
        means = (sums[:len(names)] / sums[len(names):]).tolist()
        return {**{k: None if math.isnan(v) else v for k, v in zip(names, means)}, "lr": self.lr, **self.extra}

    def save(self) -> dict:
        """This process's part of a mid-epoch checkpoint."""
        return {"g": self.g.get_state(), "totals": {k: v.cpu() for k, v in self.totals.items()},
                "counts": {k: v.cpu() for k, v in self.counts.items()}}


def epoch_partners(s: Setup, g_cpu: torch.Generator, steps: int) -> torch.Tensor:
    """(steps, b) partner indices of every step of an epoch, drawn on the host, copied to the device once.

    Partners are drawn within each process's batch (b images), or within the global batch with
    ``gsg_partners: global``.
    """
    n = s.cfg.batch_size if s.cfg.gsg_partners == "global" else s.local_batch
    partners = torch.stack([derangement(n, g_cpu) for _ in range(steps)])
    partners = partners.pin_memory() if s.device.type == "cuda" else partners
    return partners.to(s.device, non_blocking=True)


def start_epoch(s: Setup, epoch: int, steps: int) -> EpochState:
    """Draw the epoch's order (the same on every process), its partners and this process's generator.

    A method with a ``begin_epoch(ctx, order) -> (order, stats)`` hook (SPCL: re-cluster the
    training set, then batches built around prototypes) may replace the order; under torchrun the
    hook runs on the main process, and its order and the model's buffers are sent to the others.
    """
    ctx, cfg = s.context, s.cfg
    g, g_cpu = epoch_generators(cfg.seed, epoch, s.device)
    order = torch.randperm(len(s.train_x), generator=g, device=s.device)
    extra: dict = {}
    if hasattr(s.model, "begin_epoch"):
        if ctx.main:
            recipe = RECIPES[cfg.augment]
            hook = EpochContext(epoch, cfg.seed, s.train_x, s.train_y, cfg.batch_size, steps, g, s.device, s.amp,
                                cfg.workers, lambda x: make_views(x, 1, recipe, s.data.mean, s.data.std,
                                                                  cfg.image_size, g, s.channels_last)[0])
            order, extra = s.model.begin_epoch(hook, order)
        if ctx.distributed:
            order, extra = distributed.broadcast_object((order.cpu(), extra))
            order = order.to(s.device)
            distributed.broadcast_buffers(s.model)
    if ctx.distributed:  # the order is shared; augmentation and (local) partners are each process's own
        g, g_local = epoch_generators(cfg.seed, epoch, s.device, ctx.rank)
        g_cpu = g_cpu if cfg.gsg_partners == "global" else g_local
    return EpochState(epoch, order, epoch_partners(s, g_cpu, steps), g, extra=extra)


def restore_epoch(s: Setup, saved: dict, steps: int) -> EpochState:
    """The :class:`EpochState` of a mid-epoch checkpoint, for this process."""
    mine = saved["processes"][s.context.rank]
    g = torch.Generator(device=s.device)
    g.set_state(mine["g"])
    _, g_cpu = epoch_generators(s.cfg.seed, saved["epoch"], s.device,
                                s.context.rank if s.context.distributed and s.cfg.gsg_partners != "global" else None)
    state = EpochState(saved["epoch"], saved["order"].to(s.device), epoch_partners(s, g_cpu, steps), g,
                       saved["done"], {k: v.to(s.device) for k, v in mine["totals"].items()},
                       {k: v.to(s.device) for k, v in mine["counts"].items()}, saved["seconds"], saved["extra"],
                       saved["lr"])
    return state


def local_order(s: Setup, order: torch.Tensor, steps: int) -> torch.Tensor:
    """This process's images of every step, in order: its shard of each global batch."""
    if not s.context.distributed:
        return order[:steps * s.cfg.batch_size]
    b, r = s.local_batch, s.context.rank
    return order[:steps * s.cfg.batch_size].view(steps, s.cfg.batch_size)[:, r * b:(r + 1) * b].reshape(-1)


def checkpoint_state(s: Setup, rows: list[dict], epoch: int, seconds: float, state: EpochState | None) -> dict:
    """A complete checkpoint (see the module docstring); a collective call when there are several processes."""
    processes = None
    if state is not None:
        parts = [state.save()]
        if s.context.distributed:
            import torch.distributed as dist
            parts = [None] * s.context.world
            dist.all_gather_object(parts, state.save())
        processes = parts
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(s.device) if s.device.type == "cuda" else None}
    step = epoch * s.steps_per_epoch + state.done if state is not None else min(epoch * s.steps_per_epoch, s.total_steps)
    in_epoch = None if state is None else {
        "epoch": state.epoch, "done": state.done, "order": state.order.cpu(), "seconds": state.seconds,
        "extra": state.extra, "lr": state.lr, "processes": processes}
    return {"format": runs.CHECKPOINT_FORMAT, "config": s.cfg.to_dict(), "world": s.context.world,
            "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(), "epoch": epoch, "step": step,
            "seconds": seconds, "metrics": rows, "rng": rng, "in_epoch": in_epoch}


def resume_checkpoint(s: Setup, run_dir: Path, log=None) -> tuple[list[dict], int, float, dict | None]:
    """Load the run's checkpoint into ``s``: (metrics rows, epochs done, training seconds, mid-epoch state)."""
    state = runs.load_checkpoint(run_dir, s.device, log=log)
    path = run_dir / runs.CHECKPOINT
    runs.check_checkpoint(state, s.cfg, path)
    runs.load_model_state(s.model, state["model"], path)
    s.optimizer.load_state_dict(state["optimizer"])
    for group in s.optimizer.param_groups:  # the kernel choice belongs to this device, not the saved one
        group.update({k: s.optimizer.defaults[k] for k in ("fused", "foreach") if k in s.optimizer.defaults})
    epoch, seconds = state["epoch"], state["seconds"]
    if "metrics" in state:
        rows = state["metrics"]
    else:  # a checkpoint of the first format: the metrics file up to its epoch
        rows = [r for r in runs.read_metrics(run_dir) if r["epoch"] <= epoch]
    rng = state.get("rng") or {}
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and s.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], s.device)
    in_epoch = state.get("in_epoch")
    if in_epoch is not None and state.get("world", 1) != s.context.world:
        raise ConfigError(f"{path} was written mid-epoch by {state.get('world', 1)} processes; resume it with "
                          f"the same number of processes (this run has {s.context.world})")
    return rows, epoch, seconds, in_epoch
