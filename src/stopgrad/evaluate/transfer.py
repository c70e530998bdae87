"""Transfer to another labelled data set: the GSG paper's protocol (Ericsson et al. 2021, "How well do
self-supervised models transfer?", many-shot linear evaluation).

1. The target's images are resized (shorter side, bicubic, antialiased) and centre-cropped to the
   backbone's input size, converted to its number of channels (RGB -> luma, or gray repeated),
   and normalised with the statistics the backbone was trained with.
2. Frozen features (eval mode, raw: neither L2-normalised nor standardised, as in their code).
3. Multinomial logistic regression by L-BFGS (:mod:`.logreg`, scikit-learn's objective with
   C = 1/wd), the weight decay chosen on a validation split among 45 values log-spaced in
   [1e-6, 1e5]: the target's own val/ split when it has one, else a random 20% of its training
   split (seed 0).
4. Refit on train + validation with the chosen weight decay; report top-1 accuracy on the test
   split, or the mean per-class accuracy (``metric="per-class"``, their metric for Aircraft,
   Caltech, Flowers and Pets).

As in their code, every fit of the sweep is warm-started from the previous one in increasing
weight decay, and L-BFGS stops after at most 100 iterations (scikit-learn's default, which their
code keeps); ``max_iter`` changes that.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import DataError, ImageData, load_dataset
from .features import embed
from .logreg import accuracy, fit_logistic, sweep_weight_decay

WD_GRID = torch.logspace(-6, 5, 45).tolist()
METRICS = ("top1", "per-class")


@dataclass
class TransferData:
    """A labelled target: uint8 images and labels of train, optional validation, and test splits.

    Images are (N, C, H, W) uint8 of any C, H, W (:func:`transfer` converts them to the backbone's
    input), labels (N,) int64; ``num_classes`` is the largest label + 1.

    >>> x = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    >>> y = torch.tensor([0, 1, 2, 0, 1, 4])
    >>> target = sg.TransferData("toy", x[:4], y[:4], x[4:], y[4:])  # no validation split
    >>> target.num_classes, target.train_x.shape, target.val_x is None
    (5, torch.Size([4, 3, 32, 32]), True)
    """
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        labels = [y for y in (self.train_y, self.val_y, self.test_y) if y is not None and len(y)]
        return int(max(y.max() for y in labels)) + 1


def load_target(name: str, data_dir: str | None = None, size: int | None = None) -> TransferData:
    """A built-in data set by name, or ``folder:PATH`` with ``train/`` and ``test/`` (and optionally
    ``val/``) class folders; without ``test/``, ``val/`` is the test split, as for training.

    Args:
        name: a name of :data:`DATASETS`, or ``folder:PATH``.
        data_dir: where a built-in data set's files are.
        size: the side image folders are resized to (default 64).
    Returns:
        :class:`TransferData`: (N, C, H, W) uint8 images and (N,) int64 labels per split.

    >>> target = sg.load_target("digits")
    >>> target.name, target.train_x.shape, target.test_y.shape, target.val_x is None
    ('digits', torch.Size([1437, 1, 8, 8]), torch.Size([360]), True)
    """
    if name.startswith("folder:"):
        root = Path(name[len("folder:"):])
        if (root / "train").is_dir() and (root / "val").is_dir() and (root / "test").is_dir():
            from ..data.datasets import _decode_all, _list_folder
            side = size or 64
            splits = {}
            classes = None
            for split in ("train", "val", "test"):
                files, labels, found = _list_folder(root / split, side, classes)
                classes = classes or found
                splits[split] = (_decode_all(files), labels)
            return TransferData(name, *splits["train"], *splits["test"], *splits["val"])
    data: ImageData = load_dataset(name, data_dir, size, stream=False)
    return TransferData(name, data.train_x, data.train_y, data.test_x, data.test_y)


def to_input(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 images resized (shorter side, bicubic, antialiased) and centre-cropped to ``size``,
    with ``channels`` channels (RGB -> ITU-R 601 luma, or gray repeated)."""
    x = images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        else:
            raise DataError(f"cannot map {x.shape[1]}-channel target images to a {channels}-channel backbone")
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    return x.round().clamp_(0, 255).to(torch.uint8).contiguous()


def transfer(backbone: nn.Module, target: TransferData, mean, std, size: int, channels: int,
             metric: str = "top1", val_fraction: float = 0.2, wds=WD_GRID, max_iter: int = 100,
             seed: int = 0, log=None) -> dict:
    """The protocol of the module docstring; returns the test score and how it was chosen.

    Args:
        backbone: the frozen backbone (its device runs the features).
        target: the labelled target splits (:func:`load_target`).
        mean, std, size, channels: the backbone's input: normalisation, side and channels.
        metric: ``"top1"`` or ``"per-class"``.
        val_fraction: share of the training split held out for validation when the target has no
            validation split of its own.
        wds: the weight decays to choose from (default: 45 values log-spaced in [1e-6, 1e5]).
    Returns:
        a dict: ``score`` (a fraction) on the test split, ``best_wd`` (and ``best_C`` = 1 / wd),
        the ``sweep`` of validation scores, the split sizes and ``seconds``.

    A width-4 small CNN (input: 1 channel, 8x8) to the digits, with 2 weight decays instead of 45:

    >>> _ = torch.manual_seed(0)
    >>> net = sg.build_backbone("small-cnn", 1, width=4)
    >>> target = sg.load_target("digits")
    >>> result = sg.transfer(net, target, mean=(0.3,), std=(0.38,), size=8, channels=1, wds=[1e-3, 1.0])
    >>> result["validation"], result["train"], result["val"], result["test"], len(result["sweep"])
    ('a random 20% of the training split (seed 0)', 1150, 287, 360, 2)
    >>> result["best_wd"] in (1e-3, 1.0), 0 <= result["score"] <= 1
    (True, True)
    """
    if metric not in METRICS:
        raise ValueError(f"unknown transfer metric {metric!r}; choose one of {', '.join(METRICS)}")
    start = time.perf_counter()

    def features(x: torch.Tensor) -> torch.Tensor:
        return embed(backbone, to_input(x, channels, size), mean, std, normalize=False)

    f_train, y_train = features(target.train_x), target.train_y
    if target.val_x is not None:
        f_val, y_val = features(target.val_x), target.val_y
        validation = "the target's val split"
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        order = torch.randperm(len(f_train), generator=torch.Generator().manual_seed(seed))
        cut = max(1, int(val_fraction * len(order)))
        val_idx, train_idx = order[:cut].to(f_train.device), order[cut:].to(f_train.device)
        f_val, y_val = f_train[val_idx], y_train.to(f_train.device)[val_idx]
        f_train, y_train = f_train[train_idx], y_train.to(f_train.device)[train_idx]
        validation = f"a random {val_fraction:.0%} of the training split (seed {seed})"
    num_classes = target.num_classes
    best_wd, sweep = sweep_weight_decay(f_train, y_train, f_val, y_val, num_classes, wds, metric, max_iter, log,
                                        ascending=True)
    f_all = torch.cat((f_train, f_val))
    y_all = torch.cat((y_train.to(f_all.device), y_val.to(f_all.device)))
    clf = fit_logistic(f_all, y_all, num_classes, best_wd, max_iter)
    score = accuracy(clf.predict(features(target.test_x)), target.test_y, metric)
    return {"target": target.name, "metric": metric, "score": score, "best_wd": best_wd, "best_C": 1.0 / best_wd,
            "validation": validation, "train": len(f_train), "val": len(f_val), "test": len(target.test_x),
            "sweep": sweep, "seconds": round(time.perf_counter() - start, 2)}
