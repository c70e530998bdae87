"""The batched augmentation against torchvision's per-image transforms: same parameter
distributions, and the same pixels for the same parameters."""
import math

import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from stopgrad.data import RECIPES, AugmentRecipe, apply_params, sample_params
from stopgrad.data.augment import blur_kernel_size, sample_crop_boxes

N = 4000


def _reference_boxes(n, height, width, scale, ratio):
    torch.manual_seed(1)
    img = torch.zeros(1, height, width)
    rows = [v2.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]
    i, j, h, w = map(torch.tensor, zip(*rows))
    return torch.stack((j, i, j + w, i + h), 1).float()


@pytest.mark.parametrize("height,width,scale,ratio", [
    (28, 28, (0.25, 1.0), (3 / 4, 4 / 3)),   # Fashion-MNIST recipe
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),   # CIFAR recipe
    (20, 40, (0.08, 1.0), (3 / 4, 4 / 3)),   # wide image
    (32, 32, (0.9, 1.0), (2.0, 3.0)),        # most draws do not fit: the fallback matters
])
def test_crop_boxes_follow_torchvision(height, width, scale, ratio):
    ours = sample_crop_boxes(N, height, width, scale, ratio, torch.Generator().manual_seed(0))
    ref = _reference_boxes(N, height, width, scale, ratio)
    assert ours.dtype == torch.float32 and torch.equal(ours, ours.round())
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    w, h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    for a, b in ((w, rw), (h, rh), (ours[:, 0], ref[:, 0]), (ours[:, 1], ref[:, 1]), (w * h, rw * rh)):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3
    # the fallback (central crop) is taken as often as torchvision takes it
    full = ((w == width) & (h == height)).float().mean()
    assert abs(full - ((rw == width) & (rh == height)).float().mean()) < 0.03


def test_clamping_instead_of_rejection_would_be_caught():
    """The test above can fail: a sampler that clamps oversize crops has a visibly different law."""
    g = torch.Generator().manual_seed(0)
    area = torch.empty(N).uniform_(0.08, 1.0, generator=g) * 1024
    r = torch.empty(N).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
    clamped_w = (area * r).sqrt().round().clamp(max=32)
    ref = _reference_boxes(N, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    assert ks_2samp(clamped_w.numpy(), (ref[:, 2] - ref[:, 0]).numpy()).pvalue < 1e-3


def test_colour_parameters_follow_torchvision():
    recipe = RECIPES["cifar"]
    p = sample_params(N, recipe, 32, 32, torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    b, c, s, h = recipe.jitter
    ref = [v2.ColorJitter.get_params([1 - b, 1 + b], [1 - c, 1 + c], [1 - s, 1 + s], [-h, h]) for _ in range(N)]
    applied = p.brightness != 1
    assert abs(applied.float().mean() - recipe.jitter_p) < 0.03
    for ours, k in ((p.brightness, 1), (p.contrast, 2), (p.saturation, 3), (p.hue, 4)):
        theirs = torch.tensor([float(r[k]) for r in ref])
        assert ks_2samp(ours[applied].numpy(), theirs.numpy()).pvalue > 1e-3
    assert abs(p.flip.float().mean() - recipe.flip_p) < 0.03
    assert abs(p.gray.float().mean() - recipe.gray_p) < 0.03
    blur = sample_params(N, RECIPES["imagenet"], 64, 64, torch.Generator().manual_seed(0)).sigma
    assert abs((blur > 0).float().mean() - 0.5) < 0.03
    ref_sigma = torch.tensor([v2.GaussianBlur(3, (0.1, 2.0)).make_params([])["sigma"][0] for _ in range(N)])
    assert ks_2samp(blur[blur > 0].numpy(), ref_sigma.numpy()).pvalue > 1e-3


def _reference_view(img, p, i, recipe, size):
    x0, y0, x1, y1 = (int(v) for v in p.boxes[i])
    y = TF.resized_crop(img, y0, x0, y1 - y0, x1 - x0, [size, size], antialias=True)
    if p.flip[i]:
        y = TF.horizontal_flip(y)
    y = TF.adjust_brightness(y, float(p.brightness[i]))
    y = TF.adjust_contrast(y, float(p.contrast[i]))
    if y.shape[0] == 3:
        y = TF.adjust_saturation(y, float(p.saturation[i]))
        if p.gray[i]:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if p.sigma[i] > 0:
        k = blur_kernel_size(size)
        y = TF.gaussian_blur(y, [k, k], [float(p.sigma[i])] * 2)
    return y


@pytest.mark.parametrize("channels,size,out", [(1, 28, 28), (3, 32, 32), (3, 64, 48)])
def test_pixels_match_torchvision_for_the_same_parameters(channels, size, out):
    """Same crop, flip, brightness, contrast, saturation, grayscale and blur as torchvision's
    functional ops (hue is excluded: ours is a YIQ rotation, theirs an HSV one)."""
    recipe = AugmentRecipe(jitter=(0.4, 0.4, 0.4, 0.0), blur_p=0.5)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(64, channels, size, size, generator=g)
    imgs = TF.gaussian_blur(imgs, [5, 5], [1.5, 1.5])  # natural images are smooth at the pixel scale
    p = sample_params(64, recipe, size, size, g)
    ours = apply_params(imgs, p, recipe, out)
    ref = torch.stack([_reference_view(imgs[i], p, i, recipe, out) for i in range(64)])
    diff = (ours - ref).abs()
    assert diff.mean() < 1.5e-3, diff.mean()  # a wrongly flipped view differs by ~0.06
    # away from the border (where a crop's resampling may read one pixel beyond it) they agree closely
    assert diff[..., 2:-2, 2:-2].mean() < 1e-3
