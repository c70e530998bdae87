"""The benchmark's two pipelines compute the same step; `stopgrad bench` reports every figure."""
import copy
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stopgrad.backbones import build_backbone
from stopgrad.bench import bench, conventional_model, conventional_step, synthetic_data
from stopgrad.cli import main
from stopgrad.config import build_config
from stopgrad.data import RECIPES, load_dataset
from stopgrad.train import build, make_views, train_step

REQUIRED = ("device", "method", "backbone", "batch_size", "aug_img_per_s", "train_img_per_s",
            "conventional_train_img_per_s", "speedup", "knn_seconds", "peak_memory_mb")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _views(s, channels_last=False):
    g = torch.Generator().manual_seed(3)
    return make_views(s.train_x[:32], 2, RECIPES["cifar"], s.data.mean, s.data.std, None, g, channels_last)


@pytest.mark.parametrize("method,policy,channels_last", [("byol", "guided", False), ("simsiam", "symmetric", False),
                                                        ("byol", "guided", True)])
def test_both_pipelines_give_the_same_step_on_the_same_views(digits, method, policy, channels_last):
    """The fast step (foreach SGD; channels-last as on CUDA) = the conventional fp32 step."""
    cfg = build_config(overrides={"method": method, "stopgrad": policy, "dataset": "digits", "width": 8,
                                  "batch_size": 32, "channels_last": channels_last, "amp": False})
    s = build(cfg, digits)
    model, opt = conventional_model(cfg, digits.channels, torch.device("cpu"), len(digits.train_x))
    assert all(torch.equal(a, b) for a, b in zip(s.model.state_dict().values(), model.state_dict().values()))
    views, fast_views = _views(s), _views(s, channels_last=channels_last)
    assert torch.equal(views, fast_views)
    assert fast_views.flatten(0, 1).is_contiguous(memory_format=torch.channels_last if channels_last else
                                                  torch.contiguous_format)
    partners = torch.roll(torch.arange(32), 1)
    for _ in range(2):
        fast, _ = train_step(s, fast_views, partners, None, 0.1, 0.9)
        slow = conventional_step(model, opt, views, partners, 0.1, 0.9)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    # NHWC convolutions sum in another order: weights agree to rounding (~1e-4 after two steps)
    tol = dict(rtol=1e-3, atol=3e-4) if channels_last else dict(rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(s.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, **tol, msg=name)


def test_bfloat16_autocast_path_runs_on_cpu(digits):
    """The CUDA fast path (bf16 autocast, channels-last) exercised on CPU: close to the fp32 loss."""
    base = {"dataset": "digits", "width": 8, "batch_size": 32}
    s32 = build(build_config(overrides={**base, "amp": False, "channels_last": False}), digits)
    s16 = build(build_config(overrides={**base, "amp": True, "channels_last": True}), digits)
    assert s16.amp and s16.channels_last and not s32.amp and not s32.channels_last
    partners = torch.roll(torch.arange(32), 1)
    l32, _ = train_step(s32, _views(s32), partners, None, 0.1, 0.99)
    l16, stats = train_step(s16, _views(s16, channels_last=True), partners, None, 0.1, 0.99)
    assert torch.isfinite(l16) and abs(l16.item() - l32.item()) < 0.05
    assert all(p.dtype == torch.float32 for p in s16.model.parameters())  # fp32 master weights


def test_resnet18_cifar_forward_is_0555_gmac():
    net = build_backbone("resnet18-cifar", 3).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(0.555, rel=0.01)


def test_bench_reports_every_figure(digits):
    cfg = build_config(overrides={"dataset": "digits", "width": 4, "batch_size": 64})
    r = bench(cfg, digits, steps=2, warmup=1, rounds=1, workers=0, knn_shape=(2000, 500), log=lambda m: None)
    for key in REQUIRED:
        assert key in r
    for key in ("aug_img_per_s", "train_img_per_s", "conventional_train_img_per_s", "speedup", "knn_seconds",
                "peak_memory_mb", "mfu", "gflop_per_step"):
        assert r[key] > 0, key
    assert r["speedup"] == pytest.approx(r["train_img_per_s"] / r["conventional_train_img_per_s"], rel=0.01)


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--synthetic", "3x16x16", "--width", "4", "--batch-size", "32", "--steps", "2",
                 "--warmup", "1", "--rounds", "1", "--conventional-workers", "0", "--no-knn", "--augment", "cifar",
                 "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["image_shape"] == [3, 16, 16] and r["batch_size"] == 32 and r["conventional_workers"] == 0
    assert "| training step |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--synthetic", "5x32x32"], "invalid --synthetic"),
    (["--synthetic", "3x32"], "invalid --synthetic"),
    (["--dataset", "digits", "--batch-size", "512"], "too few"),
])
def test_bench_bad_input_is_one_line(capsys, argv, needle):
    code = main(["bench", "--no-knn", "--no-conventional", *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_synthetic_data_shape():
    d = synthetic_data("1x28x28", 300)
    assert d.train_x.shape == (300, 1, 28, 28) and d.train_x.dtype == torch.uint8 and d.channels == 1
    assert copy.copy(d).name == "synthetic:1x28x28"


@pytest.mark.slow
def test_compiled_model_gives_the_same_loss(digits):
    """--compile: torch.compile of the model computes the same step (~30 s of compilation on CPU)."""
    base = {"dataset": "digits", "width": 4, "batch_size": 32, "stopgrad": "random", "amp": False}
    eager = build(build_config(overrides=base), digits)
    compiled = build(build_config(overrides={**base, "compile": True}), digits)
    partners = torch.roll(torch.arange(32), 1)
    for _ in range(2):
        views = _views(eager)
        a, _ = train_step(eager, views, partners, torch.Generator().manual_seed(1), 0.1, 0.99)
        b, _ = train_step(compiled, views, partners, torch.Generator().manual_seed(1), 0.1, 0.99)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bench_streams_an_image_folder(tmp_path):
    """Both pipelines read a streamed folder: stopgrad through decoding workers, conventional per image."""
    import numpy as np
    from PIL import Image
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(40):
            img = np.random.default_rng(c * 100 + i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / f"c{c}" / f"{i}.png")
    cfg = build_config(overrides={"dataset": f"folder:{tmp_path}", "image_size": 16, "stream": True, "workers": 0,
                                  "width": 4, "batch_size": 16, "augment": "cifar"})
    r = bench(cfg, steps=2, warmup=1, rounds=1, workers=0, knn=False, log=lambda m: None)
    assert r["image_shape"] == [3, 16, 16] and r["train_img_per_s"] > 0 and r["conventional_train_img_per_s"] > 0
