"""stopgrad: self-supervised visual representation learning with guided stop-gradient.

The building blocks, for your own training loop (``import stopgrad as sg``)::

    backbones      build_backbone, SmallCNN, LibraryBackbone, BACKBONES
    heads          mlp, projector, predictor, expander, HEAD_PRESETS
    data           load_dataset, ImageData, DataError, DATASETS
    augmentation   augment, prepare, sample_params, apply_params, AugmentRecipe, ViewParams, RECIPES
    gsg            derangement, pair_loss, select_sources, POLICIES (and the module ``sg.gsg``)
    losses         negative_cosine, info_nce, info_nce_in_batch, eqco_margin, nt_xent,
                   nt_xent_margin, fnc_loss, fnc_false_negatives, truncated_triplet,
                   deputy_distance, barlow_twins, vicreg, vicreg_terms, twist, twist_terms,
                   siamese_metric, symmetric_ce (and the module ``sg.losses``)
    momentum       momentum_copy, ema_update, momentum_at, lr_at
    optimisers     LARS, make_optimizer, param_groups, scaled_lr
    evaluation     embed, eval_mode, knn_evaluate, knn_scores, knn_top1, linear_probe, pixel_baselines,
                   transfer, load_target, TransferData, tsne_plot, geometry, collapse_std,
                   spectrum, effective_rank, alignment, uniformity, describe,
                   evaluate_saved, EVALUATIONS
    export         export_backbone (weights for torchvision, timm, detectron2)
    methods        build_method, METHODS
    training       Config, ConfigError, build_config, train (the module of the training loop:
                   ``sg.train.train(cfg)`` runs it)

``sg.train`` is the module :mod:`stopgrad.train`, not its ``train`` function: a package
attribute cannot be both without one shadowing the other (``import stopgrad.train`` rebinds it to
the module), so the function is ``sg.train.train``, as ``stopgrad train`` calls it.

The examples in the docstrings assume ``import torch`` and ``import stopgrad as sg``; the test
suite runs every one of them (``tests/test_public_api.py``), and ``examples/`` holds whole
training scripts built from these names only.

Importing ``stopgrad`` is cheap: every name above is imported from its module on first use
(PEP 562), so ``import stopgrad`` loads neither torch nor the evaluators' plotting and
scikit-learn dependencies.

>>> import stopgrad as sg
>>> cfg = sg.build_config(overrides={"method": "simsiam", "width": 4})
>>> model = sg.build_method(cfg, in_channels=1)
>>> loss, stats = model(torch.randn(2, 8, 1, 28, 28), sg.derangement(8))  # views (V, B, C, H, W)
>>> loss.shape, sorted(stats)
(torch.Size([]), ['collapse_std'])
"""
from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know the name)

__version__ = "0.1.0"

# the module (relative to this package) that defines each public name
_EXPORTS: dict[str, tuple[str, ...]] = {
    "backbones": ("build_backbone", "SmallCNN", "LibraryBackbone", "BACKBONES"),
    "heads": ("mlp", "projector", "predictor", "expander", "HEAD_PRESETS"),
    "data.datasets": ("load_dataset", "ImageData", "DataError", "DATASETS"),
    "data.augment": ("augment", "prepare", "sample_params", "apply_params", "AugmentRecipe", "ViewParams",
                     "RECIPES"),
    "gsg": ("derangement", "pair_loss", "select_sources", "POLICIES"),
    "losses": ("negative_cosine", "info_nce", "info_nce_in_batch", "eqco_margin", "nt_xent", "nt_xent_margin",
               "fnc_loss", "fnc_false_negatives", "truncated_triplet", "deputy_distance", "barlow_twins",
               "vicreg", "vicreg_terms", "twist", "twist_terms", "siamese_metric", "symmetric_ce"),
    "ema": ("momentum_copy", "ema_update", "momentum_at"),
    "schedules": ("lr_at",),
    "optim": ("LARS", "make_optimizer", "param_groups", "scaled_lr"),
    "evaluate.features": ("embed", "eval_mode"),
    "evaluate.knn": ("knn_evaluate", "knn_scores", "knn_top1"),
    "evaluate.linear": ("linear_probe",),
    "evaluate.baselines": ("pixel_baselines",),
    "evaluate.transfer": ("transfer", "load_target", "TransferData"),
    "evaluate.tsne": ("tsne_plot",),
    "evaluate.geometry": ("geometry", "collapse_std", "spectrum", "effective_rank", "alignment", "uniformity",
                          "describe"),
    "evaluate.saved": ("evaluate_saved", "EVALUATIONS"),
    "export": ("export_backbone",),
    "methods": ("build_method", "METHODS"),
    "config": ("Config", "ConfigError", "build_config"),
}
_SUBMODULES = ("gsg", "losses", "train")
_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_ORIGIN, *_SUBMODULES]


def __getattr__(name: str):
    """Import a public name from its module on first use; later look-ups find it in the package."""
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)  # importing a submodule binds it on the package
    if name not in _ORIGIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_ORIGIN[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # the same names for type checkers and IDEs, which do not run __getattr__
    from . import gsg, losses, train
    from .backbones import BACKBONES, LibraryBackbone, SmallCNN, build_backbone
    from .config import Config, ConfigError, build_config
    from .data.augment import RECIPES, AugmentRecipe, ViewParams, apply_params, augment, prepare, sample_params
    from .data.datasets import DATASETS, DataError, ImageData, load_dataset
    from .ema import ema_update, momentum_at, momentum_copy
    from .evaluate.features import embed, eval_mode
    from .evaluate.geometry import (alignment, collapse_std, describe, effective_rank, geometry, spectrum,
                                    uniformity)
    from .evaluate.knn import knn_evaluate, knn_scores, knn_top1
    from .evaluate.baselines import pixel_baselines
    from .evaluate.linear import linear_probe
    from .evaluate.saved import EVALUATIONS, evaluate_saved
    from .export import export_backbone
    from .evaluate.transfer import TransferData, load_target, transfer
    from .evaluate.tsne import tsne_plot
    from .gsg import POLICIES, derangement, pair_loss, select_sources
    from .heads import HEAD_PRESETS, expander, mlp, predictor, projector
    from .losses import (barlow_twins, deputy_distance, eqco_margin, fnc_false_negatives, fnc_loss, info_nce,
                         info_nce_in_batch, negative_cosine, nt_xent, nt_xent_margin, siamese_metric,
                         symmetric_ce, truncated_triplet, twist, twist_terms, vicreg, vicreg_terms)
    from .methods import METHODS, build_method
    from .optim import LARS, make_optimizer, param_groups, scaled_lr
    from .schedules import lr_at
