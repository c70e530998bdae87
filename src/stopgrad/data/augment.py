"""Batched augmentation with per-sample random parameters, on whatever device holds the batch.

One call makes every view of a (N, C, H, W) uint8 batch in a handful of kernels: the parameters of
all views are drawn at once (:func:`sample_params`), then applied to all views together
(:func:`apply_params`): random-resized crop and resize in one ``torchvision.ops.roi_align`` call
that reads each view straight from its source image (no copy of the batch per view), horizontal
flip, colour jitter, grayscale, Gaussian blur as a per-sample separable convolution, random
erasing (off unless a recipe asks for it), and normalisation.

The parameters follow torchvision's per-image transforms (``RandomResizedCrop``,
``RandomHorizontalFlip``, ``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur``) in distribution:
crops are integer pixel boxes with torchvision's ten-attempt rejection rule and its centre-crop
fallback; ``tests/test_augment_reference.py`` checks the distributions and the pixels against
torchvision. Two differences remain, chosen for batching: colour jitter is applied in the fixed
order brightness, contrast, saturation, hue (torchvision shuffles the order per image), and the
hue shift is a rotation of the chroma plane in YIQ space, a linear stand-in for the HSV hue
rotation. The resize samples each output pixel bilinearly at its centre and, when a crop is
shrunk, averages ceil(crop/output) samples per pixel and axis, in place of antialiased resizing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentRecipe:
    """Which augmentations a view gets, and how strong (SimSiam's / the GSG paper's vocabulary).

    ``crop_scale`` and ``crop_ratio`` bound the random-resized crop's area (a fraction of the
    image) and aspect ratio; ``flip_p`` is the horizontal-flip probability; ``jitter`` the colour
    jitter's (brightness, contrast, saturation, hue) strengths, applied with probability
    ``jitter_p``; ``gray_p`` the grayscale probability (RGB only); ``blur_p`` and ``blur_sigma``
    the Gaussian blur's probability and range of standard deviations. :data:`RECIPES` names the
    paper's recipes.

    >>> recipe = sg.AugmentRecipe(crop_scale=(0.2, 1.0), blur_p=0.5)
    >>> recipe == sg.RECIPES["imagenet"], recipe.flip_p, recipe.jitter
    (True, 0.5, (0.4, 0.4, 0.4, 0.1))
    >>> sg.RECIPES["fashion-mnist"].jitter  # gray images: brightness and contrast only
    (0.4, 0.4, 0.0, 0.0)
    """
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # random erasing (torchvision's RandomErasing, applied last, before normalisation): with probability
    # erase_p a rectangle of erase_scale of the area and aspect ratio in erase_ratio is set to erase_value
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: float = 0.0


RECIPES = {
    # the paper's CIFAR-10 recipe (App. C.2)
    "cifar": AugmentRecipe(),
    # the paper's ImageNet recipe (App. B.1): larger minimum crop, Gaussian blur half the time
    "imagenet": AugmentRecipe(crop_scale=(0.2, 1.0), blur_p=0.5),
    # Fashion-MNIST: gray, centred, 28x28 objects. Crops below ~1/4 of the image leave a piece of
    # texture that no longer tells a shirt from a coat, so the minimum crop is larger; there is no
    # colour, so jitter is brightness and contrast only (see docs/recipes.md, "The default recipe, measured").
    "fashion-mnist": AugmentRecipe(crop_scale=(0.25, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), gray_p=0.0),
}
# Variants of the Fashion-MNIST recipe, one change each (docs/recipes.md, "The CPU recipe sweep")
_FMNIST = RECIPES["fashion-mnist"]
RECIPES.update({
    "fashion-mnist-crop08": dataclasses.replace(_FMNIST, crop_scale=(0.08, 1.0)),
    "fashion-mnist-crop50": dataclasses.replace(_FMNIST, crop_scale=(0.5, 1.0)),
    "fashion-mnist-blur": dataclasses.replace(_FMNIST, blur_p=0.5),
    "fashion-mnist-erase": dataclasses.replace(_FMNIST, erase_p=0.5),
    "fashion-mnist-crop08-erase": dataclasses.replace(_FMNIST, crop_scale=(0.08, 1.0), erase_p=0.5),
    "fashion-mnist-nojitter": dataclasses.replace(_FMNIST, jitter_p=0.0),
})


def _uniform(shape, low: float, high: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.empty(shape, device=device).uniform_(low, high, generator=g)


def _bernoulli(n: int, p: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


@dataclass
class ViewParams:
    """Random parameters of M views (tensors of length M on one device).

    ``boxes`` are crop boxes (x0, y0, x1, y1) in pixels of the source image, integer-valued;
    jitter factors are 1 (hue 0) for views whose jitter was not applied; ``sigma`` is 0 for views
    that are not blurred.

    Made by :func:`sample_params`, read by :func:`apply_params`. Two views of one 4x4 image, both
    of the whole image, the second flipped, no colour change:

    >>> m = 2
    >>> params = sg.ViewParams(boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0]] * m), flip=torch.tensor([False, True]),
    ...                        brightness=torch.ones(m), contrast=torch.ones(m), saturation=torch.ones(m),
    ...                        hue=torch.zeros(m), gray=torch.zeros(m, dtype=torch.bool), sigma=torch.zeros(m))
    >>> x = torch.arange(16.0).view(1, 1, 4, 4) / 15  # (N, C, H, W) = (1, 1, 4, 4) in [0, 1]
    >>> views = sg.apply_params(x, params, sg.RECIPES["fashion-mnist"], size=4, source=torch.tensor([0, 0]))
    >>> len(params), views.shape
    (2, torch.Size([2, 1, 4, 4]))
    >>> torch.allclose(views[0], x[0]), torch.allclose(views[1], x[0].flip(-1))
    (True, True)
    """
    boxes: torch.Tensor  # (M, 4)
    flip: torch.Tensor  # (M,) bool
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor  # (M,) bool
    sigma: torch.Tensor
    erase: torch.Tensor | None = None  # (M, 4) erased boxes (x0, y0, x1, y1) in output pixels; empty: none

    def __len__(self) -> int:
        return len(self.flip)


def _first_fitting_box(m: int, height: int, width: int, scale, ratio, attempts: int, g, device, inclusive: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's rejection rule for random boxes: per view, ``attempts`` draws of an area (a
    ``scale`` fraction of height x width) and a log-uniform aspect ratio w/h in ``ratio``, rounded to
    whole pixels; the first draw that fits (``inclusive``: up to the full side, else strictly inside).
    Returns (w, h, found), each (M,); w and h are those of the first draw where none fits."""
    area = _uniform((m, attempts), *scale, g, device) * (height * width)
    log_ratio = _uniform((m, attempts), math.log(ratio[0]), math.log(ratio[1]), g, device)
    r = log_ratio.exp()
    w = (area * r).sqrt().round()
    h = (area / r).sqrt().round()
    fits = (w > 0) & (h > 0) & ((w <= width) & (h <= height) if inclusive else (w < width) & (h < height))
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # first fitting attempt (0 if none fits)
    return w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)


def sample_crop_boxes(m: int, height: int, width: int, scale, ratio, g=None, device=None,
                      attempts: int = 10) -> torch.Tensor:
    """(M, 4) random-resized-crop boxes drawn as ``torchvision.transforms.RandomResizedCrop`` does.

    Each box tries up to ``attempts`` (area, log-uniform aspect ratio) draws, rounded to whole
    pixels, and keeps the first that fits the image; boxes with none that fit fall back to the
    central crop of the largest box within the ratio range. The offset is uniform over whole pixels.
    """
    w, h, found = _first_fitting_box(m, height, width, scale, ratio, attempts, g, device, inclusive=True)
    # torchvision's fallback: the whole image, or the central crop at the nearest allowed ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
    x0 = (torch.rand(m, device=device, generator=g) * (width - w + 1)).floor()
    y0 = (torch.rand(m, device=device, generator=g) * (height - h + 1)).floor()
    x0 = torch.where(found, x0, float((width - fw) // 2))
    y0 = torch.where(found, y0, float((height - fh) // 2))
    return torch.stack((x0, y0, x0 + w, y0 + h), dim=1)


def sample_params(m: int, recipe: AugmentRecipe, height: int, width: int, g=None, device=None) -> ViewParams:
    """Parameters of ``m`` views of ``height`` x ``width`` images, drawn from ``g`` on ``device``.

    Args:
        m: the number of views M.
        recipe: the distributions to draw from.
        height, width: the source images' size.
        g: a generator on ``device`` (default: the global one).
    Returns:
        :class:`ViewParams` of length M: ``boxes`` (M, 4), ``flip`` and ``gray`` (M,) bool, the
        jitter factors and ``sigma`` (M,) float.

    >>> g = torch.Generator().manual_seed(0)
    >>> params = sg.sample_params(6, sg.RECIPES["cifar"], 32, 32, g)
    >>> len(params), params.boxes.shape, params.flip.shape, params.flip.dtype
    (6, torch.Size([6, 4]), torch.Size([6]), torch.bool)
    >>> x0, y0, x1, y1 = params.boxes.unbind(1)  # whole pixels, inside the image
    >>> bool((0 <= x0).all() and (x0 < x1).all() and (x1 <= 32).all() and (params.boxes == params.boxes.round()).all())
    True
    """
    boxes = sample_crop_boxes(m, height, width, recipe.crop_scale, recipe.crop_ratio, g, device)
    flip = _bernoulli(m, recipe.flip_p, g, device)
    jitter = _bernoulli(m, recipe.jitter_p, g, device) & any(v > 0 for v in recipe.jitter)
    b, c, s, h = recipe.jitter

    def factor(strength: float) -> torch.Tensor:  # 1 where jitter is not applied
        return torch.where(jitter, _uniform(m, max(0.0, 1 - strength), 1 + strength, g, device), 1.0)

    brightness, contrast, saturation = factor(b), factor(c), factor(s)
    hue = torch.where(jitter, _uniform(m, -h, h, g, device), 0.0)
    gray = _bernoulli(m, recipe.gray_p, g, device)
    sigma = _uniform(m, *recipe.blur_sigma, g, device)
    sigma = torch.where(_bernoulli(m, recipe.blur_p, g, device), sigma, 0.0)
    erase = sample_erase_boxes(m, height, width, recipe, g, device) if recipe.erase_p > 0 else None
    return ViewParams(boxes, flip, brightness, contrast, saturation, hue, gray, sigma, erase)


def sample_erase_boxes(m: int, height: int, width: int, recipe: AugmentRecipe, g=None, device=None,
                       attempts: int = 10) -> torch.Tensor:
    """(M, 4) boxes for random erasing, drawn as ``torchvision.transforms.RandomErasing`` does.

    With probability ``recipe.erase_p`` a view tries up to ``attempts`` (area, log-uniform aspect
    ratio) draws and keeps the first that fits strictly inside the image; views not erased, or with
    no draw that fits, get an empty box (0, 0, 0, 0). The sizes are those of the views, which
    :func:`apply_params` makes at the source images' side unless a ``size`` is given: the boxes are
    fractions of the area, so :func:`apply_params` rescales them to its output side.

    >>> from stopgrad.data.augment import sample_erase_boxes
    >>> g = torch.Generator().manual_seed(0)
    >>> recipe = sg.AugmentRecipe(erase_p=1.0)
    >>> boxes = sample_erase_boxes(4, 28, 28, recipe, g)
    >>> boxes.shape, bool(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) <= 0.33 * 28 * 28).all())
    (torch.Size([4, 4]), True)
    """
    # RandomErasing takes the ratio as height / width, RandomResizedCrop as width / height
    h, w, found = _first_fitting_box(m, width, height, recipe.erase_scale, recipe.erase_ratio, attempts, g, device,
                                     inclusive=False)
    apply = found & _bernoulli(m, recipe.erase_p, g, device)
    x0 = (torch.rand(m, device=device, generator=g) * (width - w + 1)).floor()
    y0 = (torch.rand(m, device=device, generator=g) * (height - h + 1)).floor()
    boxes = torch.stack((x0, y0, x0 + w, y0 + h), dim=1)
    return torch.where(apply[:, None], boxes, 0.0)


def _erase(x: torch.Tensor, boxes: torch.Tensor, source_height: int, source_width: int, value: float) -> torch.Tensor:
    """Set each view's box (in source pixels, rescaled to the view's side) to ``value``."""
    n, _, hgt, wid = x.shape
    b = boxes.to(x.dtype) * torch.tensor([wid / source_width, hgt / source_height] * 2, device=x.device,
                                         dtype=x.dtype)
    xs = torch.arange(wid, device=x.device, dtype=x.dtype) + 0.5
    ys = torch.arange(hgt, device=x.device, dtype=x.dtype) + 0.5
    inside_x = (xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])  # (N, W)
    inside_y = (ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])  # (N, H)
    mask = inside_y[:, None, :, None] & inside_x[:, None, None, :]
    return x.masked_fill(mask, value)


def _crop_resize(x: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` out of images ``x[source]`` and resize them to ``size``, in one kernel."""
    from torchvision.ops import roi_align
    rois = torch.cat((source.to(x.dtype)[:, None], boxes.to(x.dtype)), dim=1)
    # aligned=True: pixel k covers [k, k+1), so a box samples exactly the pixels it names;
    # sampling_ratio=-1: ceil(box/size) bilinear samples per output pixel, averaged
    return roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _jitter(x: torch.Tensor, p: ViewParams, recipe: AugmentRecipe) -> torch.Tensor:
    """Brightness, contrast, saturation, hue, each as torchvision's functional ops define it."""
    n = x.shape[0]
    b, c, s, h = recipe.jitter

    def f(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, 1, 1, 1)

    if b > 0:
        x = (x * f(p.brightness)).clamp_(0, 1)
    if c > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * f(p.contrast) + mean).clamp_(0, 1)
    if x.shape[1] == 3 and s > 0:
        gray = _gray(x)
        x = ((x - gray) * f(p.saturation) + gray).clamp_(0, 1)
    if x.shape[1] == 3 and h > 0:
        x = _rotate_hue(x, p.hue * (2 * math.pi)).clamp_(0, 1)
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


def blur_kernel_size(side: int) -> int:
    """Gaussian-blur kernel size for images of this side: ~10% of it, odd, at least 3 (23 at 224)."""
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur with std ``sigma`` (0 = none), reflect padding."""
    n, c, hgt, wid = x.shape
    k = blur_kernel_size(wid)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    s = sigma.to(x.dtype).clamp(min=1e-6)[:, None]
    kernel = torch.exp(-offsets[None] ** 2 / (2 * s ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(n, k)
    kernel = torch.where((sigma > 0)[:, None], kernel, identity)  # (N, k)
    weight = kernel.repeat_interleave(c, dim=0)  # (N*C, k): one kernel per sample, all channels
    y = x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), weight.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def apply_params(x: torch.Tensor, params: ViewParams, recipe: AugmentRecipe, size: int,
                 source: torch.Tensor | None = None) -> torch.Tensor:
    """Views of float images ``x`` (N, C, H, W) in [0, 1]: view i is made from image ``source[i]``.

    ``recipe`` only says which operations can be skipped outright (those it never applies), so
    no value is read back from the device. Returns (M, C, size, size) in [0, 1].

    Args:
        x: (N, C, H, W) float images in [0, 1].
        params: M views' parameters (:func:`sample_params`).
        recipe: the recipe ``params`` were drawn with.
        size: the views' side.
        source: (M,) int64, the image each view is made from (default: view i from image i).

    Four views of two images, each image twice (see :class:`ViewParams` for a view picked by hand):

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(2, 3, 32, 32, generator=g)
    >>> params = sg.sample_params(4, sg.RECIPES["cifar"], 32, 32, g)
    >>> sg.apply_params(x, params, sg.RECIPES["cifar"], size=24, source=torch.tensor([0, 1, 0, 1])).shape
    torch.Size([4, 3, 24, 24])
    """
    if source is None:
        source = torch.arange(len(params), device=x.device)
    y = _crop_resize(x, params.boxes, source, size)
    y = torch.where(params.flip.view(-1, 1, 1, 1), y.flip(-1), y)
    b, c, s, h = recipe.jitter
    if recipe.jitter_p > 0 and (b > 0 or c > 0 or (y.shape[1] == 3 and (s > 0 or h > 0))):
        y = _jitter(y, params, recipe)
    if y.shape[1] == 3 and recipe.gray_p > 0:
        y = torch.where(params.gray.view(-1, 1, 1, 1), _gray(y).expand_as(y), y)
    if recipe.blur_p > 0:
        y = _blur(y, params.sigma)
    if recipe.erase_p > 0 and params.erase is not None:
        y = _erase(y, params.erase, x.shape[-2], x.shape[-1], recipe.erase_value)
    return y


def augment(images: torch.Tensor, recipe: AugmentRecipe, mean, std, size: int | None = None,
            generator: torch.Generator | None = None, views: int = 1) -> torch.Tensor:
    """``views`` augmented views of every image, all made in one pass.

    Args:
        images: (N, C, H, W) uint8 on any device.
        recipe: the augmentation parameters.
        mean, std: per-channel normalisation.
        size: output side (default: the input's).
        generator: a generator on ``images.device``.
        views: views per image.
    Returns:
        (views * N, C, size, size) float32, normalised; view v of image i is row v * N + i.

    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=g)
    >>> views = sg.augment(images, sg.RECIPES["fashion-mnist"], (0.5,), (0.5,), size=16, generator=g, views=2)
    >>> views.shape, views.dtype
    (torch.Size([8, 1, 16, 16]), torch.float32)
    """
    n, _, height, width = images.shape
    params = sample_params(views * n, recipe, height, width, generator, images.device)
    source = torch.arange(n, device=images.device).repeat(views)
    x = apply_params(images.float().div_(255), params, recipe, size or width, source)
    return _normalize(x, mean, std)


def prepare(images: torch.Tensor, mean, std, size: int | None = None) -> torch.Tensor:
    """Un-augmented evaluation input: scale to [0, 1], resize when asked, normalise.

    Args:
        images: (N, C, H, W) uint8.
        mean, std: per-channel normalisation.
        size: output side (default: the input's); resized bilinearly with antialiasing.
    Returns:
        (N, C, size, size) float32: (images / 255 - mean) / std.

    >>> white = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    >>> x = sg.prepare(white, mean=(0.5,), std=(0.5,))
    >>> x.shape, x.dtype, x.unique().tolist()
    (torch.Size([2, 1, 8, 8]), torch.float32, [1.0])
    >>> sg.prepare(white, (0.5,), (0.5,), size=16).shape
    torch.Size([2, 1, 16, 16])
    """
    x = images.float().div_(255)
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return _normalize(x, mean, std)


def reference_transform(recipe: AugmentRecipe, size: int, mean, std, channels: int):
    """The same recipe as per-image torchvision transforms on a PIL image (one view per call).

    This is the conventional pipeline that :func:`augment` replaces; ``stopgrad bench`` times it
    and the tests compare the two.
    """
    from torchvision import transforms as T
    ops = [T.RandomResizedCrop(size, scale=recipe.crop_scale, ratio=recipe.crop_ratio,
                               interpolation=T.InterpolationMode.BILINEAR, antialias=True),
           T.RandomHorizontalFlip(recipe.flip_p)]
    b, c, s, h = recipe.jitter
    if channels == 1:
        s, h = 0.0, 0.0
    if recipe.jitter_p > 0 and (b > 0 or c > 0 or s > 0 or h > 0):
        ops.append(T.RandomApply([T.ColorJitter(b, c, s, h)], p=recipe.jitter_p))
    if channels == 3 and recipe.gray_p > 0:
        ops.append(T.RandomGrayscale(recipe.gray_p))
    if recipe.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(size), recipe.blur_sigma)], p=recipe.blur_p))
    ops.append(T.ToTensor())
    if recipe.erase_p > 0:
        ops.append(T.RandomErasing(recipe.erase_p, recipe.erase_scale, recipe.erase_ratio, recipe.erase_value))
    ops.append(T.Normalize(mean, std))
    return T.Compose(ops)
