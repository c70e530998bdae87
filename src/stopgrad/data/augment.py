"""Batched augmentation with per-sample random parameters, on whatever device holds the batch.

One call augments a whole (N, C, H, W) uint8 batch: a random-resized crop and horizontal flip as
one affine resampling (``affine_grid`` + ``grid_sample``), colour jitter, grayscale, Gaussian
blur as a per-sample separable convolution, and normalisation. Every sample draws its own
parameters from the given generator, so a fixed seed gives the same views on a given device.

Differences from torchvision's per-image transforms, chosen for batching: the crop's aspect
ratio and area are drawn once and clamped to the image (torchvision retries up to ten times);
colour jitter is applied in the fixed order brightness, contrast, saturation, hue; the hue shift
is a rotation of the chroma plane in YIQ space, a linear stand-in for the HSV hue rotation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentRecipe:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)


RECIPES = {
    # the paper's CIFAR-10 recipe (App. C.2)
    "cifar": AugmentRecipe(),
    # the paper's ImageNet recipe (App. B.1): larger minimum crop, Gaussian blur half the time
    "imagenet": AugmentRecipe(crop_scale=(0.2, 1.0), blur_p=0.5),
    # Fashion-MNIST: gray, centred, 28x28 objects. Crops below ~1/4 of the image leave a piece of
    # texture that no longer tells a shirt from a coat, so the minimum crop is larger; there is no
    # colour, so jitter is brightness and contrast only (see README, "The default recipe").
    "fashion-mnist": AugmentRecipe(crop_scale=(0.25, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), gray_p=0.0),
}


def _uniform(n: int, low: float, high: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=g)


def _bernoulli(n: int, p: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _crop_flip(x: torch.Tensor, r: AugmentRecipe, size: int, g) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    area = _uniform(n, *r.crop_scale, g, dev)
    log_ratio = _uniform(n, math.log(r.crop_ratio[0]), math.log(r.crop_ratio[1]), g, dev)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a fraction of the image width
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (2 * torch.rand(n, device=dev, generator=g) - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (2 * torch.rand(n, device=dev, generator=g) - 1) * (1 - h)
    flip = torch.where(_bernoulli(n, r.flip_p, g, dev), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jitter(x: torch.Tensor, r: AugmentRecipe, g) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    apply = _bernoulli(n, r.jitter_p, g, dev)
    b, c, s, h = r.jitter

    def factor(strength: float) -> torch.Tensor:  # (N, 1, 1, 1), 1 where jitter is not applied
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, g, dev)
        return torch.where(apply, f, 1.0).view(n, 1, 1, 1)

    if b > 0:
        x = (x * factor(b)).clamp(0, 1)
    if c > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(c) + mean).clamp(0, 1)
    if x.shape[1] == 3 and s > 0:
        gray = _gray(x)
        x = ((x - gray) * factor(s) + gray).clamp(0, 1)
    if x.shape[1] == 3 and h > 0:
        angle = torch.where(apply, _uniform(n, -h, h, g, dev), 0.0) * (2 * math.pi)
        x = _rotate_hue(x, angle).clamp(0, 1)
    return x


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the (I, Q) chroma plane by ``angle`` radians per sample; luma is unchanged."""
    to_yiq = _RGB2YIQ.to(x.device, x.dtype)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (N, 3, 3) RGB -> RGB
    return torch.einsum("nij,njhw->nihw", m, x)


def _blur(x: torch.Tensor, r: AugmentRecipe, g) -> torch.Tensor:
    n, c, hgt, wid = x.shape
    dev = x.device
    k = max(3, int(0.1 * wid) // 2 * 2 + 1)  # ~10% of the image side, odd (23 at 224)
    sigma = _uniform(n, *r.blur_sigma, g, dev)
    apply = _bernoulli(n, r.blur_p, g, dev)
    offsets = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(n, k)
    kernel = torch.where(apply[:, None], kernel, identity)  # (N, k)
    weight = kernel.repeat_interleave(c, dim=0)  # (N*C, k): one kernel per sample, all channels
    y = x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), weight.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def augment(images: torch.Tensor, recipe: AugmentRecipe, mean, std, size: int | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """One augmented view of every image.

    Args:
        images: (N, C, H, W) uint8 on any device.
        recipe: the augmentation parameters.
        mean, std: per-channel normalisation.
        size: output side (default: the input's).
        generator: a generator on ``images.device``.
    Returns:
        (N, C, size, size) float32, normalised.
    """
    x = images.float().div_(255)
    x = _crop_flip(x, recipe, size or images.shape[-1], generator)
    if recipe.jitter_p > 0 and any(v > 0 for v in recipe.jitter):
        x = _jitter(x, recipe, generator)
    if x.shape[1] == 3 and recipe.gray_p > 0:
        gray = _bernoulli(x.shape[0], recipe.gray_p, generator, x.device).view(-1, 1, 1, 1)
        x = torch.where(gray, _gray(x).expand_as(x), x)
    if recipe.blur_p > 0:
        x = _blur(x, recipe, generator)
    return _normalize(x, mean, std)


def prepare(images: torch.Tensor, mean, std, size: int | None = None) -> torch.Tensor:
    """Un-augmented evaluation input: scale to [0, 1], resize when asked, normalise."""
    x = images.float().div_(255)
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return _normalize(x, mean, std)
