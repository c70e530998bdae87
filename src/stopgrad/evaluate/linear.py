"""Linear evaluation of a frozen backbone: a linear classifier on its features, nothing else trains.

Two protocols:

* ``fast`` — features of the un-augmented train and test images are computed once; a multinomial
  logistic regression is fitted on the standardised train features by full-batch L-BFGS
  (:mod:`.logreg`, weight decay ``wd`` in scikit-learn's C = 1/wd convention; default 1, i.e.
  scikit-learn's default C = 1). Seconds on a CPU.
* ``paper`` — the GSG paper's CIFAR-10 protocol (and MoCo's): SGD with lr 30, momentum 0.9, no
  weight decay, cosine decay, batch 256, 90 epochs, on random-resized-crop + flip views of the
  training images, the backbone in eval mode computing features without gradient at every step.

Both report top-1 and top-5 accuracy on the un-augmented test images, and both check their
promise: the backbone's parameters and buffers (BatchNorm statistics included) are bit-identical
after the probe, and the optimiser held the classifier's parameters only
(:class:`FrozenBackboneError` otherwise).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import AugmentRecipe, augment
from .features import embed, eval_mode, module_device
from .logreg import fit_logistic, standardizer, topk_accuracy

PAPER = dict(lr=30.0, momentum=0.9, weight_decay=0.0, batch_size=256, epochs=90)
PROTOCOLS = ("fast", "paper")


class FrozenBackboneError(RuntimeError):
    """The backbone changed during an evaluation that must leave it untouched."""


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def check_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Raise :class:`FrozenBackboneError` naming the first parameter or buffer that differs from ``before``."""
    after = module.state_dict()
    for key, value in before.items():
        if not torch.equal(value, after[key]):
            raise FrozenBackboneError(f"the backbone's {key} changed during linear evaluation")


def _scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"top1": topk_accuracy(logits, y, 1), "top5": topk_accuracy(logits, y, 5)}


def linear_fast(backbone: nn.Module, train_x, train_y, test_x, test_y, mean, std, size: int | None = None,
                wd: float = 1.0, max_iter: int = 1000) -> dict:
    """The ``fast`` protocol (module docstring); returns top1, top5, the settings and seconds."""
    start = time.perf_counter()
    before = snapshot(backbone)
    f_train = embed(backbone, train_x, mean, std, size, normalize=False)
    f_test = embed(backbone, test_x, mean, std, size, normalize=False)
    result = fit_probe(f_train, train_y, f_test, test_y, wd, max_iter)
    check_unchanged(backbone, before)
    return {"protocol": "fast", **result, "seconds": round(time.perf_counter() - start, 2)}


def fit_probe(f_train: torch.Tensor, train_y, f_test: torch.Tensor, test_y, wd: float = 1.0,
              max_iter: int = 1000) -> dict:
    """The ``fast`` protocol on given features (N, F) and (Q, F): standardised by the train features'
    mean and std, L-BFGS logistic regression; returns top1, top5, wd, the iterations and seconds.
    (The pixel baselines fit it on the images' pixels.)"""
    start = time.perf_counter()
    shift, scale = standardizer(f_train)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    clf = fit_logistic((f_train - shift) / scale, train_y, num_classes, wd, max_iter)
    clf.shift, clf.scale = shift, scale
    return {**_scores(clf.logits(f_test), test_y), "wd": wd, "lbfgs_iterations": clf.iterations,
            "seconds": round(time.perf_counter() - start, 2)}


def probe_recipe(crop_scale=(0.08, 1.0)) -> AugmentRecipe:
    """Random-resized crop and horizontal flip, nothing else: the linear-evaluation augmentation."""
    return AugmentRecipe(crop_scale=tuple(crop_scale), jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def linear_paper(backbone: nn.Module, train_x, train_y, test_x, test_y, mean, std, size: int | None = None,
                 epochs: int = PAPER["epochs"], lr: float = PAPER["lr"], batch_size: int = PAPER["batch_size"],
                 momentum: float = PAPER["momentum"], weight_decay: float = PAPER["weight_decay"],
                 crop_scale=(0.08, 1.0), seed: int = 0, log=None) -> dict:
    """The ``paper`` protocol (module docstring); returns top1, top5, the settings and seconds.

    ``train_x`` must be a uint8 tensor (in memory); the backbone's device runs everything.
    """
    start = time.perf_counter()
    device = module_device(backbone)
    amp = device.type == "cuda"
    before = snapshot(backbone)
    flags = [p.requires_grad for p in backbone.parameters()]
    backbone.requires_grad_(False)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    torch.manual_seed(seed)
    classifier = nn.Linear(backbone.feature_dim, num_classes).to(device)
    classifier.weight.data.normal_(0, 0.01)  # MoCo / SimSiam lincls initialisation
    classifier.bias.data.zero_()
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    probe_params = {id(p) for g in opt.param_groups for p in g["params"]}
    if probe_params != {id(p) for p in classifier.parameters()}:
        raise FrozenBackboneError("the linear-evaluation optimiser holds parameters other than the classifier's")
    g = torch.Generator(device=device).manual_seed(seed)
    images, labels = train_x.to(device), train_y.to(device)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    recipe, total = probe_recipe(crop_scale), epochs * steps_per_epoch
    try:
        with eval_mode(backbone):
            for epoch in range(epochs):
                order = torch.randperm(len(images), generator=g, device=device)
                for i, idx in enumerate(order.split(batch_size)):
                    step = epoch * steps_per_epoch + i
                    for group in opt.param_groups:  # cosine decay per step, to zero at the end
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                    x = augment(images[idx], recipe, mean, std, size, g)
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        features = backbone(x).float()
                    loss = F.cross_entropy(classifier(features), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                if log is not None:
                    log(f"linear epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
        f_test = embed(backbone, test_x, mean, std, size, normalize=False)
        with torch.no_grad():
            scores = _scores(classifier(f_test), test_y)
    finally:
        for p, flag in zip(backbone.parameters(), flags):
            p.requires_grad_(flag)
    check_unchanged(backbone, before)
    return {"protocol": "paper", **scores, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "momentum": momentum, "weight_decay": weight_decay, "seconds": round(time.perf_counter() - start, 2)}


def linear_probe(backbone: nn.Module, train_x, train_y, test_x, test_y, mean, std, size: int | None = None,
                 protocol: str = "fast", **options) -> dict:
    """Linear evaluation with ``protocol`` ``"fast"`` or ``"paper"`` (options: see each function).

    Args:
        backbone: (N, C, H, W) images -> (N, F) features; frozen (checked bit for bit afterwards).
        train_x, train_y: (N, C, H, W) uint8 training images and (N,) int64 labels.
        test_x, test_y: (Q, C, H, W) uint8 test images and (Q,) int64 labels.
        mean, std, size: the backbone's input normalisation and side (default: the images').
        protocol: ``"fast"`` (:func:`linear_fast`) or ``"paper"`` (:func:`linear_paper`).
    Returns:
        a dict: ``protocol``, ``top1`` and ``top5`` test accuracy (fractions), the settings, ``seconds``.

    >>> _ = torch.manual_seed(0)
    >>> data = sg.load_dataset("digits")
    >>> net = sg.build_backbone("small-cnn", 1, width=4)
    >>> images = (net, data.train_x[:300], data.train_y[:300], data.test_x, data.test_y, data.mean, data.std)
    >>> fast = sg.linear_probe(*images)
    >>> sorted(fast)
    ['lbfgs_iterations', 'protocol', 'seconds', 'top1', 'top5', 'wd']
    >>> 0 <= fast["top1"] <= fast["top5"] <= 1
    True
    >>> paper = sg.linear_probe(*images, protocol="paper", epochs=1, batch_size=100)  # 3 SGD steps
    >>> paper["protocol"], paper["epochs"], paper["lr"]
    ('paper', 1, 30.0)
    """
    if protocol == "fast":
        return linear_fast(backbone, train_x, train_y, test_x, test_y, mean, std, size, **options)
    if protocol == "paper":
        return linear_paper(backbone, train_x, train_y, test_x, test_y, mean, std, size, **options)
    raise ValueError(f"unknown linear protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


__all__ = ["FrozenBackboneError", "PROTOCOLS", "check_unchanged", "fit_probe", "linear_fast", "linear_paper", "linear_probe",
           "probe_recipe", "snapshot"]
