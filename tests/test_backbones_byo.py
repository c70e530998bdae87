"""Backbones by name: torchvision:NAME and timm:NAME under every method, gray input, feature_dim,
the small-image options, the tiny ViT and its frozen patch projection, and the one-line errors."""
import sys

import pytest
import torch
from torch import nn

from stopgrad.backbones import LibraryBackbone, build_backbone
from stopgrad.config import ConfigError, build_config
from stopgrad.data.datasets import ImageData
from stopgrad.methods import METHODS
from stopgrad.train import build, train_epoch

pytest.importorskip("timm")


def images(c: int, side: int, n: int = 16) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    return ImageData(f"toy{c}x{side}", x, y, x[:8], y[:8], (0.5,) * c, (0.25,) * c)


def steps(backbone: str, method: str, data: ImageData, dataset: str, **overrides):
    """Two training steps through the training loop's own setup; returns (setup, epoch means, backbone before)."""
    cfg = build_config(overrides={"method": method, "backbone": backbone, "dataset": dataset, "batch_size": 8,
                                  "epochs": 1, "spcl_prototypes": 4, "twist_classes": 8, "directclr_dim": 16,
                                  "eval_geometry": False, "threads": 1, **overrides})
    s = build(cfg, data)
    before = {k: v.clone() for k, v in s.model.backbone.state_dict().items()}
    means = train_epoch(s, 1, steps=2)
    return s, means, before


def changed(s, before) -> bool:
    return any(not torch.equal(before[k], v) for k, v in s.model.backbone.state_dict().items()
               if v.dtype.is_floating_point)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_a_torchvision_resnet_with_gray_small_images(method):
    # 1x28x28 images (Fashion-MNIST's shape) seen as 16 px views: the CIFAR stem, gray repeated to RGB
    s, means, before = steps("torchvision:resnet18", method, images(1, 28), "fashion-mnist", image_size=16)
    net = s.model.backbone
    assert isinstance(net, LibraryBackbone) and net.expand_gray and net.changes and net.feature_dim == 512
    assert torch.isfinite(torch.tensor(means["loss"])) and changed(s, before)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_a_timm_backbone(method):
    s, means, before = steps("timm:resnet10t", method, images(1, 16), "fashion-mnist", image_size=16)
    assert s.model.backbone.kwargs == {"in_chans": 1}  # timm takes the channels itself
    assert torch.isfinite(torch.tensor(means["loss"])) and changed(s, before)


@pytest.mark.parametrize("backbone", ["torchvision:resnet18", "timm:vit_tiny_patch16_224", "vit-tiny"])
def test_rgb_32px_views_train_with_moco_v3_and_guided_stopgrad(backbone):
    s, means, before = steps(backbone, "moco-v3", images(3, 32, n=8), "cifar10", batch_size=4,
                             stopgrad="guided", freeze_patch_embed="vit" in backbone)
    assert torch.isfinite(torch.tensor(means["loss"])) and changed(s, before)
    if backbone.startswith("timm"):  # 4-pixel patches at 32 px: an 8x8 grid
        assert s.model.backbone.kwargs == {"img_size": 32, "patch_size": 4}


@pytest.mark.parametrize("backbone,frozen", [("vit-tiny", "model.conv_proj."),
                                             ("timm:vit_tiny_patch16_224", "model.patch_embed.")])
def test_the_frozen_patch_projection_stays_bit_identical_and_outside_the_optimiser(backbone, frozen):
    s, _, before = steps(backbone, "moco-v3", images(1, 28, n=8), "fashion-mnist", batch_size=4,
                         freeze_patch_embed=True, optimizer="adamw", lr=1e-2)
    state = s.model.backbone.state_dict()
    fixed = [k for k in state if k.startswith(frozen)]
    assert fixed and all(torch.equal(before[k], state[k]) for k in fixed)
    assert changed(s, before)  # the rest trains
    optimised = {id(p) for group in s.optimizer.param_groups for p in group["params"]}
    named = dict(s.model.backbone.named_parameters())
    assert all(not named[k].requires_grad and id(named[k]) not in optimised for k in fixed if k in named)


def test_gray_images_are_repeated_to_rgb_and_the_keys_stay_torchvision_s():
    from torchvision.models import resnet18
    net = build_backbone("torchvision:resnet18", 1, image_size=224).eval()
    x = torch.rand(2, 1, 40, 40)
    assert torch.equal(net(x), net(x.expand(-1, 3, -1, -1)))
    reference = resnet18()
    reference.fc = nn.Identity()
    reference.load_state_dict(net.model.state_dict(), strict=True)
    assert torch.allclose(reference.eval()(x.expand(-1, 3, -1, -1)), net(x))


@pytest.mark.parametrize("name,dim", [("torchvision:mobilenet_v3_small", 1024), ("torchvision:squeezenet1_1", 512),
                                      ("torchvision:shufflenet_v2_x0_5", 1024), ("torchvision:regnet_x_400mf", 400),
                                      ("torchvision:efficientnet_b0", 1280), ("timm:resnet10t", 512),
                                      ("vit-tiny", 128)])
def test_feature_dim_is_the_width_of_the_output(name, dim):
    net = build_backbone(name, 3, image_size=32)
    assert net.feature_dim == dim and net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_small_input_options_per_family():
    cifar = build_backbone("torchvision:resnet18", 3, image_size=32)  # automatic at <= 64 px
    assert cifar.model.conv1.kernel_size == (3, 3) and isinstance(cifar.model.maxpool, nn.Identity)
    plain = build_backbone("torchvision:resnet18", 3, image_size=32, small_input=False)
    assert plain.model.conv1.kernel_size == (7, 7) and plain.changes == []
    vit = build_backbone("torchvision:vit_b_32", 3, image_size=40)  # rounded up to a multiple of the patch
    assert vit.kwargs == {"image_size": 64} and vit.input_size == 64
    assert vit.eval()(torch.rand(1, 3, 40, 40)).shape == (1, 768)
    tiny = build_backbone("vit-tiny", 1, image_size=28)
    assert tiny.model.patch_size == 7 and tiny.model.image_size == 28


def test_unknown_names_say_how_to_list_the_names(run_cli):
    with pytest.raises(ConfigError, match=r"did you mean torchvision:resnet18\?.*list_models"):
        build_backbone("torchvision:resnet19")
    with pytest.raises(ConfigError, match=r"timm.list_models\(\)"):
        build_config(overrides={"backbone": "timm:no_such_model"})
    with pytest.raises(ConfigError, match="unknown backbone library"):
        build_config(overrides={"backbone": "keras:resnet50"})
    code, out, err = run_cli("train", "--backbone", "vit", "--epochs", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "torchvision:NAME" in err and "invalid choice" in err
    code, out, err = run_cli("train", "--backbone", "torchvision:resnet19", "--epochs", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "list_models" in err


def test_a_missing_timm_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    for call in (lambda: build_backbone("timm:resnet10t"), lambda: build_config(overrides={"backbone": "timm:x"})):
        with pytest.raises(ConfigError, match=r'pip install "stopgrad\[timm\]"'):
            call()


def test_backbone_options_are_checked():
    with pytest.raises(ConfigError, match="patch projection"):
        build_config(overrides={"backbone": "resnet50", "freeze_patch_embed": True})
    with pytest.raises(ConfigError, match="patch projection"):
        build_backbone("torchvision:resnet18", 3, freeze_patch_embed=True)
    with pytest.raises(ConfigError, match="does not run on 1x28x28"):  # ConvNeXt downsamples 28 px to nothing
        build_backbone("torchvision:convnext_tiny", 1, image_size=28)


def test_the_moco_v3_vit_preset():
    cfg = build_config("fashion-mnist/moco-v3-vit")
    assert (cfg.method, cfg.backbone, cfg.freeze_patch_embed, cfg.ema_schedule, cfg.optimizer) == (
        "moco-v3", "vit-tiny", True, "cosine", "adamw")
