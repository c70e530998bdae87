"""Optimisers: SGD, LARS and AdamW, the linear scaling rule, and each optimiser's defaults.

* ``sgd``: SGD with momentum, weight decay on every parameter (the GSG paper's recipe).
* ``lars``: :class:`LARS` as BYOL, Barlow Twins and VICReg use it (You et al. 2017): SGD with
  momentum whose per-parameter step is scaled by the trust ratio eta ||w|| / ||g + wd w||.
* ``adamw``: ``torch.optim.AdamW`` (MoCo v3's ViT recipe), betas ``adamw_betas``.

For LARS and AdamW, biases and normalisation parameters (every parameter with one dimension) get
no weight decay, and for LARS no trust-ratio adaptation either, as the authors' code of BYOL,
Barlow Twins, VICReg and MoCo v3 (and timm's ``param_groups_weight_decay``) does. SGD keeps its
weight decay on every parameter, as the SimSiam / GSG code does.

The learning rate: ``lr_scaling: linear`` makes the run's learning rate ``lr x batch_size / 256``
(Goyal et al. 2017; the papers' "base learning rate"); :func:`scaled_lr` is the one place it is
applied. Warm-up and the schedule (:func:`stopgrad.schedules.lr_at`) then act on that value for
every optimiser: the loop sets ``group["lr"]`` of every parameter group each step.

Defaults: a key left unset (``None``) takes the run's method's default for it
(:data:`METHOD_DEFAULTS`), else the optimiser's (:data:`OPTIMIZER_DEFAULTS`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import Config

OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALINGS = ("none", "linear")

# the keys of the optimisation group (validated by check_options below)
OPTIONS = ("epochs", "steps", "batch_size", "optimizer", "lr", "lr_scaling", "lr_schedule", "warmup_epochs",
           "sgd_momentum", "weight_decay", "lars_eta", "adamw_betas", "ema_momentum", "ema_schedule")

# optimiser -> the values of the keys a run leaves unset. SGD: the default run's (the GSG paper's
# CIFAR recipe at batch 128); LARS: BYOL's / VICReg's base lr 0.2 with the linear rule, BYOL's and
# Barlow Twins' weight decay; AdamW: MoCo v3's ViT recipe (base lr 1.5e-4, weight decay 0.1)
OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": 0.2, "lr_scaling": "none", "weight_decay": 5e-4},
    "lars": {"lr": 0.2, "lr_scaling": "linear", "weight_decay": 1.5e-6},
    "adamw": {"lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.1},
}
# method -> its default optimiser and, per optimiser, values that differ from OPTIMIZER_DEFAULTS.
# VICReg: its paper's LARS recipe (base lr 0.2 x batch / 256, weight decay 1e-6); under plain SGD
# the unnormalised expander output grows until the covariance term (fourth power of its scale)
# diverges at lr 0.2 on Fashion-MNIST, so SGD keeps the lower 0.05 that trains
METHOD_DEFAULTS = {
    "vicreg": {"optimizer": "lars", "lars": {"weight_decay": 1e-6}, "sgd": {"lr": 0.05}},
}
# (method, backbone) -> per optimiser, values measured for that pair, over the method's. BYOL and SimSiam
# on the default backbone, small-cnn-grid: SGD lr 0.4 (docs/recipes.md, "The CPU recipe sweep": +0.48 kNN
# points over 0.2 for BYOL + GSG, paired on two seeds; SimSiam takes the same value, not measured on its own).
# Other backbones keep lr 0.2, the value every published cpu-budget result used.
BACKBONE_DEFAULTS = {
    ("byol", "small-cnn-grid"): {"sgd": {"lr": 0.4}},
    ("simsiam", "small-cnn-grid"): {"sgd": {"lr": 0.4}},
}


def resolve_defaults(method: str, optimizer: str | None, backbone: str | None = None, **values) -> dict:
    """The optimiser keys of a run, each unset (``None``) one filled from the (method, backbone) pair's,
    then the method's, then the optimiser's defaults.

    >>> from stopgrad.optim import resolve_defaults
    >>> resolve_defaults("vicreg", None, lr=None, lr_scaling=None, weight_decay=None)
    {'optimizer': 'lars', 'lr': 0.2, 'lr_scaling': 'linear', 'weight_decay': 1e-06}
    >>> resolve_defaults("byol", None, lr=0.5, lr_scaling=None, weight_decay=None)
    {'optimizer': 'sgd', 'lr': 0.5, 'lr_scaling': 'none', 'weight_decay': 0.0005}
    >>> resolve_defaults("byol", None, "small-cnn-grid", lr=None)["lr"], resolve_defaults("byol", None, "small-cnn", lr=None)["lr"]
    (0.4, 0.2)
    """
    recipe = METHOD_DEFAULTS.get(method, {})
    optimizer = optimizer if optimizer is not None else recipe.get("optimizer", "sgd")
    defaults = {**OPTIMIZER_DEFAULTS.get(optimizer, OPTIMIZER_DEFAULTS["sgd"]), **recipe.get(optimizer, {}),
                **BACKBONE_DEFAULTS.get((method, backbone), {}).get(optimizer, {})}
    return {"optimizer": optimizer, **{k: defaults[k] if v is None else v for k, v in values.items()}}


def scaled_lr(cfg: "Config") -> float:
    """The run's learning rate after warm-up: ``lr``, times ``batch_size / 256`` with ``lr_scaling: linear``.

    ``batch_size`` is the global batch (all processes together), as in the papers.

    >>> sg.scaled_lr(sg.Config(optimizer="lars", lr=0.2, lr_scaling="linear", batch_size=2048))
    1.6
    >>> sg.scaled_lr(sg.Config())  # the default run: SGD, lr 0.4 (BYOL on small-cnn-grid), no scaling
    0.4
    """
    return cfg.lr * cfg.batch_size / 256 if cfg.lr_scaling == "linear" else cfg.lr


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017) as BYOL, Barlow Twins and VICReg use it.

    For each parameter w with gradient g, in a group whose ``adapt`` is true::

        g <- g + weight_decay * w
        g <- g * eta * ||w|| / ||g||     (the trust ratio; 1 when ||w|| or ||g|| is 0)
        v <- momentum * v + g            (v starts at 0)
        w <- w - lr * v

    A group with ``adapt=False`` (biases and norm parameters, see :func:`param_groups`) skips the
    trust ratio: plain SGD with momentum and its own ``weight_decay`` (0 there). ``foreach`` runs
    each step as a few multi-tensor kernels; the per-parameter loop gives the same numbers.

    Args:
        params: parameters or parameter groups (dicts that may set any of the options below).
        lr: learning rate (the training loop sets it every step).
        momentum, weight_decay, eta: as in the update above.
        adapt: apply the weight decay's trust-ratio scaling (the LARS part).
        foreach: multi-tensor kernels (default: on).

    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    >>> opt = sg.LARS([w], lr=1.0, momentum=0.9, eta=0.01)
    >>> w.grad = torch.tensor([[0.0, 2.0]])  # ||g|| = 2: trust ratio 0.01 * 5 / 2 = 0.025
    >>> opt.step()
    >>> w.detach()
    tensor([[3.0000, 3.9500]])
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, adapt: bool = True, foreach: bool = True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0 (got {lr}, {momentum}, "
                             f"{weight_decay}, {eta})")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "adapt": adapt, "foreach": foreach})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            step = self._step_foreach if group["foreach"] else self._step_loop
            step(params, bufs, group)
        return loss

    @staticmethod
    def _step_loop(params, bufs, group) -> None:
        wd, eta, m, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
        for p, buf in zip(params, bufs):
            g = p.grad.add(p, alpha=wd) if wd else p.grad
            if group["adapt"]:
                w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
                g = g * trust
            buf.mul_(m).add_(g)
            p.add_(buf, alpha=-lr)

    @staticmethod
    def _step_foreach(params, bufs, group) -> None:
        wd, eta, m, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
        grads = [p.grad for p in params]
        grads = torch._foreach_add(grads, params, alpha=wd) if wd else list(grads)
        if group["adapt"]:
            w_norm = torch.stack(torch._foreach_norm(params))  # (P,) one norm per parameter
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
            grads = torch._foreach_mul(grads, list(trust.unbind()))
        torch._foreach_mul_(bufs, m)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(params, bufs, alpha=-lr)


def param_groups(params, weight_decay: float, **no_decay) -> list[dict]:
    """Two groups: parameters of two or more dimensions (weight decay), and biases / norm parameters (none).

    ``no_decay`` adds options to the second group (``adapt=False`` for :class:`LARS`). An empty
    group is left out.

    >>> groups = sg.param_groups(torch.nn.Linear(4, 2).parameters(), 1e-6, adapt=False)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(1, 1e-06), (1, 0.0)]
    """
    params = list(params)
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0, **no_decay}]
    return [g for g in groups if g["params"]]


def make_optimizer(params, cfg: "Config", device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """The run's optimiser over ``params``: ``cfg.optimizer`` with its options, at the learning rate :func:`scaled_lr`.

    SGD and AdamW run as one fused kernel on CUDA and multi-tensor (foreach) kernels elsewhere;
    LARS as multi-tensor kernels.

    Args:
        params: the trainable parameters (the momentum copy excluded).
        cfg: the run's configuration (``optimizer``, ``lr``, ``lr_scaling``, ``batch_size``,
            ``sgd_momentum``, ``weight_decay``, ``lars_eta``, ``adamw_betas``).
        device: where the parameters live.
    Returns:
        a ``torch.optim.Optimizer``; every group's ``lr`` is set by the training loop each step.

    >>> net = torch.nn.Linear(4, 2)
    >>> opt = sg.make_optimizer(net.parameters(), sg.Config(method="vicreg", batch_size=512))
    >>> type(opt).__name__, [g["lr"] for g in opt.param_groups], [g["adapt"] for g in opt.param_groups]
    ('LARS', [0.4, 0.4], [True, False])
    """
    device = torch.device(device)
    lr = scaled_lr(cfg)
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay, **impl)
    if cfg.optimizer == "lars":
        return LARS(param_groups(params, cfg.weight_decay, adapt=False), lr=lr, momentum=cfg.sgd_momentum,
                    eta=cfg.lars_eta)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(params, cfg.weight_decay), lr=lr, betas=tuple(cfg.adamw_betas), **impl)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def describe(cfg: "Config") -> str:
    """The optimiser in words, with the learning rate the run uses: ``"LARS lr 0.2 x 128/256 = 0.1"``.

    >>> from stopgrad.optim import describe
    >>> describe(sg.Config(method="vicreg"))
    'LARS lr 0.2 x 128/256 = 0.1, weight decay 1e-06'
    """
    name = {"sgd": "SGD", "lars": "LARS", "adamw": "AdamW"}.get(cfg.optimizer, cfg.optimizer)
    lr = f"lr {cfg.lr:g}" + (f" x {cfg.batch_size}/256 = {scaled_lr(cfg):g}" if cfg.lr_scaling == "linear" else "")
    return f"{name} {lr}, weight decay {cfg.weight_decay:g}"


def check_options(cfg: "Config") -> None:
    """Validate the optimisation group (:data:`OPTIONS`); raises :class:`~stopgrad.config.ConfigError`."""
    from .config import ConfigError

    def choice(key: str, options) -> None:
        if getattr(cfg, key) not in options:
            raise ConfigError(f"invalid {key} {getattr(cfg, key)!r}; choose one of {', '.join(map(str, options))}")

    choice("optimizer", OPTIMIZERS)
    choice("lr_scaling", LR_SCALINGS)
    choice("lr_schedule", ("cosine", "constant"))
    choice("ema_schedule", ("constant", "cosine"))
    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    if cfg.steps is not None and cfg.steps <= 0:
        raise ConfigError(f"steps must be positive (or unset for whole epochs), got {cfg.steps}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if cfg.weight_decay < 0 or cfg.warmup_epochs < 0:
        raise ConfigError("weight_decay and warmup_epochs must be >= 0")
    if not 0 <= cfg.ema_momentum <= 1 or not 0 <= cfg.sgd_momentum < 1:
        raise ConfigError("ema_momentum must be in [0, 1] and sgd_momentum in [0, 1)")
    if not (isinstance(cfg.lars_eta, (int, float)) and 0 < cfg.lars_eta < math.inf):
        raise ConfigError(f"lars_eta must be a positive number (the papers' 0.001), got {cfg.lars_eta!r}")
    betas = cfg.adamw_betas
    if not (isinstance(betas, tuple) and len(betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"adamw_betas must be two numbers in [0, 1) (beta1, beta2), got {betas!r}")
    if cfg.batch_size < 2:
        raise ConfigError(f"batch_size must be at least 2: every image needs a partner image in its batch "
                          f"(got {cfg.batch_size})")
