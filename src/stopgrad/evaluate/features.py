"""Features of frozen networks: un-augmented or augmented images through a module in eval mode.

Every evaluator starts here. The module is put in eval mode (BatchNorm uses its running
statistics) and run without gradient; its train/eval mode is restored afterwards and its weights
are never touched.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import AugmentRecipe, augment, prepare
from ..data.stream import iter_batches


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module.eval()`` inside the block, its previous train/eval mode restored afterwards.

    Yields ``module`` itself (no copy); tensors pass through it unchanged in shape.

    >>> net = sg.build_backbone("small-cnn", 1, width=4)
    >>> with sg.eval_mode(net) as frozen:
    ...     print(frozen is net, net.training, net(torch.zeros(1, 1, 8, 8)).shape)
    True False torch.Size([1, 128])
    >>> net.training
    True
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def embed(module: nn.Module, images, mean, std, size: int | None = None, batch_size: int = 1024, device=None,
          amp: bool | None = None, normalize: bool = True, recipe: AugmentRecipe | None = None,
          generator: torch.Generator | None = None, out_device=None) -> torch.Tensor:
    """(N, F) float32 features of ``images`` through ``module`` in eval mode.

    Args:
        module: images -> features (a backbone, or backbone + projector).
        images: (N, C, H, W) uint8 on any device, or a streamed ``FolderImages``.
        mean, std: per-channel normalisation; size: input side (default: the images').
        amp: bfloat16 autocast (default: on CUDA only).
        normalize: L2-normalise each row (kNN, t-SNE, geometry); False gives raw features (linear probes).
        recipe: augment each image once with this recipe (drawn from ``generator``) instead of the
            un-augmented centre view.
        out_device: where the result lives (default: the module's device).
    Returns:
        (N, F) float32, rows of unit length when ``normalize``; row i is image i.

    >>> g = torch.Generator().manual_seed(0)
    >>> net = sg.build_backbone("small-cnn", 1, width=4)  # F = 128
    >>> images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=g)
    >>> f = sg.embed(net, images, mean=(0.5,), std=(0.5,), batch_size=4)
    >>> f.shape, f.dtype, torch.allclose(f.norm(dim=1), torch.ones(10))
    (torch.Size([10, 128]), torch.float32, True)
    >>> sg.embed(net, images, (0.5,), (0.5,), size=16, normalize=False).shape  # resized to 16x16 first
    torch.Size([10, 128])
    """
    device = torch.device(device) if device is not None else module_device(module)
    amp = device.type == "cuda" if amp is None else amp
    out = []
    with eval_mode(module), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        on = images.device if isinstance(images, torch.Tensor) else device
        order = torch.arange(len(images), device=on)
        for x in iter_batches(images, order, batch_size, on, drop_last=False):
            x = x.to(device, non_blocking=True)
            x = prepare(x, mean, std, size) if recipe is None else augment(x, recipe, mean, std, size, generator)
            f = module(x).float()
            f = F.normalize(f, dim=1) if normalize else f
            out.append(f if out_device is None else f.to(out_device))
    return torch.cat(out)


def projection_module(model: nn.Module) -> nn.Module | None:
    """backbone + projector of a method (its projection space), or None if it has no projector."""
    projector = getattr(model, "projector", None)
    if projector is None or isinstance(projector, nn.Identity):
        return None
    return nn.Sequential(model.backbone, projector)
