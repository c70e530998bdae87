"""Evaluation during training: kNN and geometry every ``eval_every`` epochs, and the collapse alarm.

:func:`evaluate_run` is what the training loop calls after an epoch (and once before training,
on the randomly initialised network): weighted kNN with ``k = knn_k`` and ``k = 1`` from one
neighbour search (``knn_top1``, ``knn_top5``, ``knn1_top1``) and, with ``eval_geometry``, the
representation and projection geometry of :func:`stopgrad.evaluate.geometry.geometry` on the
test images. The test features are computed once for both.

:class:`CollapseAlarm` watches the projection's collapse std, scaled by sqrt(D) so that a healthy
spread reads ~1 whatever D is: when it stays under ``collapse_threshold`` for
``collapse_patience`` consecutive evaluations, the run is collapsing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.augment import RECIPES
from .features import embed
from .geometry import geometry
from .knn import knn_scores


def evaluate_run(model, cfg, data, train_x, train_y, keep_spectra: bool = False) -> dict:
    """Online metrics of a run's ``model`` (see the module docstring); ``train_x`` is the kNN bank."""
    backbone = model.backbone
    ks = sorted({cfg.knn_k, 1})
    bank = embed(backbone, train_x, data.mean, data.std, cfg.image_size)
    rep = embed(backbone, data.test_x, data.mean, data.std, cfg.image_size, normalize=False)  # shared with geometry
    queries = F.normalize(rep, dim=1)
    num_classes = int(max(train_y.max(), data.test_y.max())) + 1
    knn = knn_scores(bank, train_y, queries, data.test_y, ks, cfg.knn_temperature, num_classes)
    out = {"knn_top1": knn[cfg.knn_k]["top1"], "knn_top5": knn[cfg.knn_k]["top5"], "knn1_top1": knn[1]["top1"]}
    if cfg.eval_geometry:
        out.update(geometry(model, data.test_x, data.test_y, data.mean, data.std, RECIPES[cfg.augment],
                            cfg.image_size, keep_spectra=keep_spectra, rep=rep))
    return out


def collapse_level(row: dict, dim: int) -> float | None:
    """sqrt(D) x the projection's collapse std of an evaluated metrics row (or the representation's,
    for methods without a projector); ~1 spread out, 0 collapsed; None when the row has neither."""
    value = row.get("proj_collapse_std", row.get("rep_collapse_std"))
    return None if value is None else value * math.sqrt(dim)


@dataclass
class CollapseAlarm:
    """Counts consecutive evaluations whose :func:`collapse_level` is under ``threshold``."""
    threshold: float
    patience: int
    dim: int
    under: list[int] = field(default_factory=list)  # epochs of the current run of low evaluations

    def update(self, epoch: int, row: dict) -> bool:
        """Record an evaluated epoch; True when the alarm is (still) raised."""
        level = collapse_level(row, self.dim)
        if level is None:
            return False
        self.under = self.under + [epoch] if level < self.threshold else []
        return len(self.under) >= self.patience

    def message(self) -> str:
        return (f"collapse alarm: sqrt(D) x collapse std of the projection has stayed under {self.threshold} "
                f"(healthy ~1, collapsed 0) for {len(self.under)} evaluations (epochs {self.under[0]}-"
                f"{self.under[-1]}); the representation is collapsing")


def projection_dim(model, channels: int, size: int, device) -> int:
    """D of the space :func:`collapse_level` reads: the projector's output, else the backbone's."""
    from .features import eval_mode, projection_module
    module = projection_module(model) or model.backbone
    with torch.no_grad(), eval_mode(module):
        x = torch.zeros(2, channels, size, size, device=device)
        return int(module(x).shape[1])



# the evaluation group of the config (stopgrad.config.OPTION_GROUPS): its keys, validated by check_options
OPTIONS = ("eval_every", "knn_k", "knn_temperature", "eval_geometry", "collapse_threshold", "collapse_patience",
           "stop_on_collapse", "pixel_baselines")


def check_options(cfg) -> None:
    """Validate the evaluation group of a :class:`~stopgrad.config.Config` (:data:`OPTIONS`); raises ConfigError."""
    from ..config import ConfigError

    for key in ("eval_every", "knn_k", "collapse_patience"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    if not cfg.knn_temperature > 0:
        raise ConfigError(f"knn_temperature must be positive, got {cfg.knn_temperature}")
    for key in ("eval_geometry", "stop_on_collapse", "pixel_baselines"):
        if not isinstance(getattr(cfg, key), bool):
            raise ConfigError(f"{key} must be true or false, got {getattr(cfg, key)!r}")
    if not cfg.collapse_threshold >= 0:
        raise ConfigError(f"collapse_threshold must be >= 0 (0 turns the alarm off), got {cfg.collapse_threshold}")


__all__ = ["CollapseAlarm", "check_options", "collapse_level", "evaluate_run", "projection_dim"]
