"""The data group of the config: the data set, how it is read, and the augmentation recipe.

:data:`OPTIONS` are the keys, :func:`check_options` validates them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

OPTIONS = ("dataset", "data_dir", "image_size", "augment", "train_subset", "stream", "strict_data", "workers")
BUILT_IN = ("fashion-mnist", "cifar10", "cifar100", "digits")


def check_options(cfg: "Config") -> None:
    """Validate the data group (:data:`OPTIONS`); raises :class:`~stopgrad.config.ConfigError`."""
    from ..config import ConfigError
    from .augment import RECIPES

    if cfg.augment not in RECIPES:
        raise ConfigError(f"invalid augment {cfg.augment!r}; choose one of {', '.join(RECIPES)}")
    if cfg.dataset not in BUILT_IN and not (cfg.dataset.startswith("folder:") and len(cfg.dataset) > 7):
        raise ConfigError(f"invalid dataset {cfg.dataset!r}; choose one of {', '.join(BUILT_IN)}, folder:PATH")
    if not isinstance(cfg.strict_data, bool):
        raise ConfigError(f"strict_data must be true or false, got {cfg.strict_data!r}")
    if cfg.stream not in (None, True, False):
        raise ConfigError(f"stream must be true, false or null (automatic), got {cfg.stream!r}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {cfg.workers}")
    for key in ("train_subset", "image_size"):
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
