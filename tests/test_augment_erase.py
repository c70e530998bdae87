"""Random erasing in the batched augmentation: torchvision's RandomErasing distribution and pixels,
and recipes without it unchanged."""
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2

from stopgrad.data import RECIPES, AugmentRecipe, ViewParams, apply_params, sample_params
from stopgrad.data.augment import sample_erase_boxes


def test_erase_boxes_follow_torchvision():
    recipe = AugmentRecipe(erase_p=1.0)
    ours = sample_erase_boxes(3000, 28, 28, recipe, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    img = torch.zeros(1, 28, 28)
    ref = [v2.RandomErasing.get_params(img, scale=recipe.erase_scale, ratio=recipe.erase_ratio, value=[0.0])
           for _ in range(3000)]
    rh, rw = torch.tensor([r[2] for r in ref]).float(), torch.tensor([r[3] for r in ref]).float()
    w, h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= 28).all() and (ours[:, 3] <= 28).all()
    rarea = torch.where(rh < 28, rh * rw, 0.0)  # torchvision returns the whole image when nothing fits
    for a, b in ((w, rw * (rh < 28)), (h, rh * (rh < 28)), (w * h, rarea)):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3


def test_erase_sets_the_box_and_only_the_box():
    x = torch.rand(2, 1, 8, 8) * 0.5 + 0.5  # no pixel is 0
    m = 2
    params = ViewParams(boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0]] * m), flip=torch.zeros(m, dtype=torch.bool),
                        brightness=torch.ones(m), contrast=torch.ones(m), saturation=torch.ones(m),
                        hue=torch.zeros(m), gray=torch.zeros(m, dtype=torch.bool), sigma=torch.zeros(m),
                        erase=torch.tensor([[1.0, 2.0, 4.0, 3.0], [0.0, 0.0, 0.0, 0.0]]))
    recipe = AugmentRecipe(crop_scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, erase_p=1.0)
    y = apply_params(x, params, recipe, size=8)
    assert torch.equal(y[1], x[1])  # empty box: untouched
    erased = y[0, 0] == 0
    assert erased.sum() == 3 and erased[2, 1:4].all()  # rows 2, columns 1..3
    assert torch.allclose(y[0][~erased[None]], x[0][~erased[None]])


def test_recipes_without_erasing_draw_the_same_parameters():
    a = sample_params(16, RECIPES["fashion-mnist"], 28, 28, torch.Generator().manual_seed(0))
    b = sample_params(16, RECIPES["fashion-mnist-erase"], 28, 28, torch.Generator().manual_seed(0))
    assert a.erase is None and b.erase is not None
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.sigma, b.sigma)
