"""The CUDA path: bfloat16 + channels-last against fp32, fused SGD against foreach, device-side
generators, exact resume on the GPU, roi_align views against the CPU's, kNN on the device.

Every test here needs a CUDA device and is skipped without one (marker ``cuda``);
``benchmarks/gpu_check.sh`` runs them on a GPU machine with ``-m cuda``.
"""
import json

import pytest
import torch

from stopgrad import runs
from stopgrad.config import build_config
from stopgrad.data import RECIPES, load_dataset
from stopgrad.data.augment import ViewParams, apply_params, sample_params
from stopgrad.epochs import epoch_generators, make_views
from stopgrad.gsg import derangement
from stopgrad.optim import make_optimizer
from stopgrad.train import build, train, train_step

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = {"dataset": "digits", "width": 8, "epochs": 2, "batch_size": 64, "knn_k": 20, "eval_geometry": False,
        "device": "cuda"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _one_step(cfg, data, views_cpu, partners):
    """Loss and backbone weights after one training step of a fresh model on the given views."""
    s = build(cfg, data)
    views = views_cpu.to(s.device)
    if s.channels_last:
        views = views.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, views.shape[:2])
    g = torch.Generator(device=s.device).manual_seed(0)
    loss, _ = train_step(s, views, partners.to(s.device), g, lr=0.1, momentum=0.99)
    return float(loss), {k: v.detach().float().cpu() for k, v in s.model.backbone.state_dict().items()}


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_bf16_channels_last_step_matches_fp32(digits, method):
    """The same step in bfloat16 autocast with NHWC activations and in fp32 NCHW: the loss within 2% and
    every updated weight within the rounding of bfloat16 activations."""
    g = torch.Generator().manual_seed(0)
    x = digits.train_x[:64]
    views = make_views(x, 2, RECIPES["fashion-mnist"], digits.mean, digits.std, None, g)
    partners = derangement(64, torch.Generator().manual_seed(1))
    fast = build_config(overrides={**TINY, "method": method, "amp": True, "channels_last": True})
    exact = build_config(overrides={**TINY, "method": method, "amp": False, "channels_last": False})
    loss_a, w_a = _one_step(fast, digits, views, partners)
    loss_b, w_b = _one_step(exact, digits, views, partners)
    assert loss_a == pytest.approx(loss_b, rel=2e-2, abs=2e-3)
    for k in w_b:
        if w_b[k].is_floating_point():
            torch.testing.assert_close(w_a[k], w_b[k], rtol=2e-2, atol=2e-3, msg=k)


def test_fused_sgd_step_equals_foreach():
    """The fused CUDA SGD kernel and the multi-tensor one give the same parameters after three steps."""
    cfg = build_config(overrides={"optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-4})
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()
    twin.load_state_dict(net.state_dict())
    fused = make_optimizer(net.parameters(), cfg, "cuda")
    assert fused.defaults.get("fused") is True
    foreach = torch.optim.SGD(twin.parameters(), lr=0.2, momentum=cfg.sgd_momentum, weight_decay=5e-4,
                              foreach=True)
    x = torch.randn(16, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    for _ in range(3):
        for model, opt in ((net, fused), (twin, foreach)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_device_generators_reproduce_the_views(digits):
    """The augmentation drawn on the GPU from the epoch's generator is the same tensor every time."""
    x = digits.train_x[:128].cuda()
    recipe = RECIPES["fashion-mnist"]
    out = []
    for _ in range(2):
        g, _ = epoch_generators(3, 1, torch.device("cuda"))
        out.append(make_views(x, 2, recipe, digits.mean, digits.std, None, g, channels_last=True))
    assert out[0].device.type == "cuda" and torch.equal(out[0], out[1])
    g, _ = epoch_generators(3, 2, torch.device("cuda"))  # another epoch: other views
    assert not torch.equal(out[0], make_views(x, 2, recipe, digits.mean, digits.std, None, g))


def test_resume_on_cuda_is_exact(tmp_path, digits):
    """Two epochs in one go, and one epoch then a resumed second: the same metrics and weights."""
    cfg = build_config(overrides={**TINY, "method": "byol"})
    whole = train(cfg, tmp_path / "whole", quiet=True, progress=False, data=digits)
    train(cfg, tmp_path / "parts", stop_after=1, quiet=True, progress=False, data=digits)
    train(cfg, tmp_path / "parts", resume=True, quiet=True, progress=False, data=digits)
    rows = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "step", "loss", "knn_top1", "collapse_std")
    assert [[r.get(k) for k in keys] for r in rows] == [[r.get(k) for k in keys] for r in whole["metrics"]]
    a = torch.load(tmp_path / "whole" / runs.CHECKPOINT, weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / runs.CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", ["fashion-mnist", "cifar"])
def test_roi_align_views_on_cuda_match_the_cpu(recipe):
    """The same view parameters applied on the GPU and on the CPU (crop + resize by roi_align, flips,
    jitter, blur): equal within float rounding."""
    g = torch.Generator().manual_seed(0)
    channels = 1 if recipe == "fashion-mnist" else 3
    x = torch.rand(16, channels, 32, 32, generator=g)
    params = sample_params(32, RECIPES[recipe], 32, 32, g)
    source = torch.arange(32) % 16
    cpu = apply_params(x, params, RECIPES[recipe], 24, source)
    moved = ViewParams(**{k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in vars(params).items()})
    gpu = apply_params(x.cuda(), moved, RECIPES[recipe], 24, source.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_knn_on_cuda_matches_the_cpu():
    from stopgrad.evaluate.knn import knn_classify
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(2000, 64, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(300, 64, generator=g), dim=1)
    labels = torch.randint(0, 10, (2000,), generator=g)
    cpu = knn_classify(bank, labels, queries, k=20, temperature=0.1, num_classes=10)
    gpu = knn_classify(bank.cuda(), labels.cuda(), queries.cuda(), k=20, temperature=0.1, num_classes=10)
    assert (cpu == gpu.cpu()).float().mean() > 0.99  # ties in the top-k may break differently
