"""The small-CNN shapes and head preset added by the CPU recipe sweep (docs/recipes.md)."""
import torch

import stopgrad as sg
from stopgrad.backbones import SMALL_CNN_VARIANTS
from stopgrad.heads import HEAD_PRESETS


def test_fullres_small_cnn_keeps_the_keys_and_the_feature_size():
    torch.manual_seed(0)
    base = sg.build_backbone("small-cnn", 1, width=4)
    full = sg.build_backbone("small-cnn-fullres", 1, width=4)
    assert list(base.state_dict()) == list(full.state_dict())
    assert full.feature_dim == base.feature_dim == 128
    assert full[0].stride == (1, 1) and full[3].stride == (2, 2)  # first block at full resolution
    assert full(torch.rand(2, 1, 28, 28)).shape == (2, 128)
    for name in SMALL_CNN_VARIANTS:
        net = sg.build_backbone(name, 1, width=4)
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, net.feature_dim)


def test_small_wide_heads_build():
    cfg = sg.build_config(overrides={"heads": "small-wide", "width": 4})
    assert HEAD_PRESETS["small-wide"]["predictor"][-1] == HEAD_PRESETS["small-wide"]["projector"][-1]
    assert cfg.heads == "small-wide"


def test_feature_bn_gives_standardised_features():
    torch.manual_seed(0)
    net = sg.build_backbone("small-cnn-fullres-bn", 1, width=4)
    f = net(torch.rand(64, 1, 28, 28))  # training mode: standardised over the batch
    assert f.shape == (64, 128) and (f < 0).any()
    assert torch.allclose(f.mean(0), torch.zeros(128), atol=1e-4)
    assert not any(p.requires_grad for p in net[-1].parameters())  # no scale or shift


def test_grid_features_are_the_whole_last_map_standardised():
    torch.manual_seed(0)
    net = sg.build_backbone("small-cnn-grid", 1, width=4)  # 8w channels x the 4x4 map of a 28x28 image
    assert net.feature_dim == 8 * 4 * 16
    x = torch.rand(32, 1, 28, 28)
    last_map = torch.nn.Sequential(*list(net)[:12])(x)  # the four conv-BN-ReLU blocks, before the pooling
    assert last_map.shape == (32, 32, 4, 4)  # 28 -> 14 -> 14 -> 7 -> 4: nothing left to pool
    f = net(x)
    expected = torch.nn.functional.batch_norm(last_map.flatten(1), None, None, training=True, eps=net[-1].eps)
    assert torch.allclose(f, expected, atol=1e-5)
    full = sg.build_backbone("small-cnn-fullres-grid", 1, width=4)
    assert full[0].stride == (1, 1) and full(x).shape == (32, full.feature_dim) == (32, 512)
