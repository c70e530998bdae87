"""The method group of the config: which method, its stop-gradient policy, and every method's options.

:data:`OPTIONS` are the keys (each method's docstring says which of them it reads) and
:func:`check_options` validates them, for whichever method the run trains (a bad value is an
error even when this run's method does not read it, so a config stays valid when ``method``
changes).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

OPTIONS = (
    "method", "stopgrad", "predictor", "views",
    # contrastive methods
    "temperature", "num_negatives", "eqco_alpha", "bank_momentum", "directclr_dim", "fnc_mode", "fnc_top_k",
    "triplet_rank", "triplet_smoothed", "triplet_margin",
    # prototype and redundancy-reduction methods
    "bt_lambda", "vicreg_weights", "twist_classes", "spcl_prototypes", "spcl_weights", "spcl_targets",
    "spcl_anchor_fraction", "spcl_symmetric_ce",
)


def _choice(cfg: "Config", key: str, options) -> None:
    from ..config import ConfigError
    if getattr(cfg, key) not in options:
        raise ConfigError(f"invalid {key} {getattr(cfg, key)!r}; choose one of {', '.join(map(str, options))}")


def check_options(cfg: "Config") -> None:
    """Validate the method group (:data:`OPTIONS`); raises :class:`~stopgrad.config.ConfigError`."""
    from ..config import ConfigError
    from ..gsg import POLICIES
    from . import METHODS

    _choice(cfg, "method", METHODS)
    _choice(cfg, "stopgrad", POLICIES)
    _choice(cfg, "views", (2, 4))
    _choice(cfg, "fnc_mode", ("elimination", "attraction"))
    for key in ("temperature", "bank_momentum", "triplet_margin"):
        if not getattr(cfg, key) >= 0 or (key == "temperature" and cfg.temperature == 0):
            raise ConfigError(f"{key} must be {'positive' if key == 'temperature' else '>= 0'}, "
                              f"got {getattr(cfg, key)}")
    if cfg.bank_momentum >= 1:
        raise ConfigError(f"bank_momentum must be in [0, 1), got {cfg.bank_momentum}")
    for key in ("directclr_dim", "fnc_top_k", "triplet_rank"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    _check_prototype_keys(cfg)
    if cfg.num_negatives is not None and cfg.num_negatives <= 0:
        raise ConfigError(f"num_negatives must be positive, got {cfg.num_negatives}")
    if cfg.eqco_alpha is not None and cfg.eqco_alpha < 0:
        raise ConfigError(f"eqco_alpha must be > 0 (or 0 to turn EqCo off), got {cfg.eqco_alpha}")


def _check_prototype_keys(cfg: "Config") -> None:
    """Barlow Twins, VICReg, TWIST and SPCL."""
    from ..config import ConfigError

    def numbers(value, n: int) -> bool:
        return isinstance(value, tuple) and len(value) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf for v in value)

    if cfg.spcl_targets not in ("kmeans", "labels"):
        raise ConfigError(f"invalid spcl_targets {cfg.spcl_targets!r}; choose one of kmeans, labels")
    if not cfg.bt_lambda >= 0:
        raise ConfigError(f"bt_lambda must be >= 0, got {cfg.bt_lambda}")
    for key, n, names in (("vicreg_weights", 3, "invariance, variance, covariance"),
                          ("spcl_weights", 3, "contrastive, metric, prototype"),
                          ("spcl_symmetric_ce", 2, "alpha, beta")):
        value = getattr(cfg, key)
        if key == "spcl_symmetric_ce" and value is None:
            continue
        if not numbers(value, n):
            raise ConfigError(f"{key} must be {n} numbers >= 0 ({names}), got {value!r}")
        if key != "vicreg_weights" and not any(value):
            raise ConfigError(f"{key} are all 0: give at least one positive weight ({names})")
    for key, low in (("twist_classes", 2), ("spcl_prototypes", 2)):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < low:
            raise ConfigError(f"{key} must be a whole number >= {low}, got {getattr(cfg, key)!r}")
    if not 0 < cfg.spcl_anchor_fraction < 1:
        raise ConfigError(f"spcl_anchor_fraction must be in (0, 1), got {cfg.spcl_anchor_fraction}")
