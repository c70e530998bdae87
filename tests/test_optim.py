"""Optimisers: LARS against the published update rule and timm's Lars, the parameter groups of LARS and
AdamW, the linear scaling rule, warm-up with every optimiser, per-method defaults, and the config's
option groups."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stopgrad.config import FIELDS, OPTION_GROUPS, ConfigError, Config, build_config, option_groups
from stopgrad.data import load_dataset
from stopgrad.optim import LARS, make_optimizer, param_groups, scaled_lr
from stopgrad.schedules import lr_at
from stopgrad.train import train

ROOT = Path(__file__).resolve().parents[1]


def reference_lars(params, grads_per_step, lr, momentum, weight_decay, eta):
    """You et al. 2017 as the BYOL / Barlow Twins / VICReg code applies it, transcribed independently:
    for every parameter of two or more dimensions g <- g + wd*w, g <- g * eta*||w||/||g||; biases and norm
    parameters (one dimension) neither; then v <- m*v + g, w <- w - lr*v."""
    w = [p.detach().clone().double() for p in params]
    v = [torch.zeros_like(x) for x in w]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = g.double()
            if w[i].ndim > 1:
                g = g + weight_decay * w[i]
                w_norm, g_norm = w[i].norm().item(), g.norm().item()
                g = g * (eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0)
            v[i] = momentum * v[i] + g
            w[i] = w[i] - lr * v[i]
    return w


def some_params():
    torch.manual_seed(1)
    return [torch.nn.Parameter(torch.randn(8, 3, 3, 3)), torch.nn.Parameter(torch.randn(5, 8)),
            torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.zeros(4, 4))]  # ||w|| = 0: trust 1


@pytest.mark.parametrize("foreach", [True, False])
def test_lars_follows_the_published_update_rule(foreach):
    params = some_params()
    steps = [[torch.randn_like(p) * (0.1 + s) for p in params] for s in range(5)]
    expected = reference_lars(params, steps, lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.02)
    opt = LARS(param_groups(params, 1e-2, adapt=False), lr=0.5, momentum=0.9, eta=0.02, foreach=foreach)
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)


def test_lars_matches_timm():
    timm_optim = pytest.importorskip("timm.optim")
    ours, theirs = some_params(), some_params()
    # timm's trust ratio divides by ||g|| + wd*||w|| (an upper bound of ||g + wd*w||): equal without decay
    opt = LARS(param_groups(ours, 0.0, adapt=False), lr=0.3, momentum=0.9, eta=0.001)
    ref = timm_optim.Lars([{"params": [p for p in theirs if p.ndim > 1], "always_adapt": True},
                           {"params": [p for p in theirs if p.ndim <= 1]}], lr=0.3, momentum=0.9, trust_coeff=0.001,
                          eps=0.0)
    for step in range(4):
        grads = [torch.randn_like(p) for p in ours]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_the_optimisers_and_their_parameter_groups():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    sgd = make_optimizer(net.parameters(), Config())  # the default run: one group, decay on every parameter
    assert type(sgd) is torch.optim.SGD and len(sgd.param_groups) == 1 and sgd.param_groups[0]["foreach"]
    assert sgd.param_groups[0]["lr"] == 0.4 and sgd.param_groups[0]["weight_decay"] == 5e-4  # BYOL on small-cnn-grid
    adamw = make_optimizer(net.parameters(), Config(optimizer="adamw", adamw_betas=(0.9, 0.95), batch_size=512))
    decay, rest = adamw.param_groups
    assert type(adamw) is torch.optim.AdamW and decay["betas"] == (0.9, 0.95) and decay["lr"] == 1.5e-4 * 2
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in rest["params"]) and rest["weight_decay"] == 0.0 and len(rest["params"]) == 4
    lars = make_optimizer(net.parameters(), Config(optimizer="lars", lars_eta=0.01, lr=0.4, lr_scaling="none"))
    assert [(g["adapt"], g["weight_decay"], g["eta"], g["lr"]) for g in lars.param_groups] == [
        (True, 1.5e-6, 0.01, 0.4), (False, 0.0, 0.01, 0.4)]


def test_the_linear_scaling_rule():
    assert scaled_lr(Config(lr=0.3, lr_scaling="linear", batch_size=4096)) == pytest.approx(4.8)
    assert scaled_lr(Config(lr=0.3, lr_scaling="none", batch_size=4096)) == 0.3
    assert Config(optimizer="lars").lr_scaling == "linear" and Config(optimizer="sgd").lr_scaling == "none"


def test_per_method_and_per_optimiser_defaults():
    vicreg = build_config(overrides={"method": "vicreg"})
    assert (vicreg.optimizer, vicreg.lr, vicreg.lr_scaling, vicreg.weight_decay) == ("lars", 0.2, "linear", 1e-6)
    default = build_config()
    assert (default.optimizer, default.lr, default.lr_scaling, default.weight_decay) == ("sgd", 0.4, "none", 5e-4)
    # lr 0.4 is BYOL's and SimSiam's on the grid backbones only; elsewhere SGD's 0.2, as published before
    assert build_config(overrides={"method": "simsiam"}).lr == 0.4
    assert build_config(overrides={"backbone": "small-cnn"}).lr == 0.2
    assert build_config(overrides={"method": "simclr"}).lr == 0.2
    assert build_config(overrides={"backbone": "small-cnn", "lr": 0.4}).lr == 0.4  # given values always win
    adamw = build_config(overrides={"method": "moco-v3", "optimizer": "adamw", "weight_decay": 0.05})
    assert (adamw.lr, adamw.lr_scaling, adamw.weight_decay) == (1.5e-4, "linear", 0.05)
    assert Config(**Config(method="vicreg").to_dict()) == Config(method="vicreg")  # resolved values round-trip


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer": "adam"}, "invalid optimizer 'adam'; choose one of sgd, lars, adamw"),
    ({"lr_scaling": "sqrt"}, "invalid lr_scaling 'sqrt'; choose one of none, linear"),
    ({"adamw_betas": [0.9, 1.5]}, "adamw_betas must be two numbers in [0, 1) (beta1, beta2), got (0.9, 1.5)"),
    ({"lars_eta": 0.0}, "lars_eta must be a positive number (the papers' 0.001), got 0.0"),
])
def test_bad_optimiser_keys_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=overrides)
    assert str(err.value) == message


def test_an_old_run_without_optimiser_keys_loads_as_sgd(tmp_path):
    """config.yaml of runs from before the optimiser keys: their VICReg trained with SGD and must resume so."""
    from stopgrad.runs import read_config
    old = Config(method="vicreg", optimizer="sgd").to_dict()
    for key in ("optimizer", "lr_scaling", "lars_eta", "adamw_betas"):
        del old[key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"config": old}))
    cfg = read_config(tmp_path)
    assert (cfg.optimizer, cfg.lr, cfg.lr_scaling) == ("sgd", 0.05, "none")


@pytest.mark.parametrize("optimizer", ["lars", "adamw"])
def test_warm_up_and_scaling_reach_every_optimiser(tmp_path, optimizer):
    """One warm-up epoch then cosine: the lr each epoch logs is lr_at of the scaled lr, and the model learns
    something (the loss changes)."""
    cfg = build_config(overrides={"dataset": "digits", "width": 4, "epochs": 2, "batch_size": 64, "train_subset": 512,
                                  "knn_k": 20, "eval_geometry": False, "optimizer": optimizer, "warmup_epochs": 1.0,
                                  "log": "jsonl"})
    result = train(cfg, tmp_path / "run", quiet=True, progress=False, data=load_dataset("digits"))
    rows = result["metrics"]
    base = scaled_lr(cfg)
    assert base == cfg.lr * 64 / 256
    assert [r["lr"] for r in rows[1:]] == [lr_at(7, 16, base, "cosine", 8), lr_at(15, 16, base, "cosine", 8)]
    assert rows[1]["lr"] == base and rows[1]["loss"] != rows[2]["loss"]
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert record["lr_after_scaling"] == base and record["config"]["optimizer"] == optimizer


def test_every_key_is_in_exactly_one_group_and_documented():
    groups = option_groups()
    keys = [k for group in groups.values() for k in group]
    assert sorted(keys) == sorted(FIELDS) and len(keys) == len(set(keys))
    reference = (ROOT / "docs" / "reference.md").read_text()
    missing = [k for k in keys if f"`{k}`" not in reference]
    assert not missing, f"docs/reference.md does not list {missing}"


def test_train_help_lists_the_flags_by_group(run_cli):
    code, out, _ = run_cli("train", "--help")
    assert code == 0
    titles = [title for _, title in OPTION_GROUPS.values()]
    positions = [out.index(f"\n{title}:") for title in titles]
    assert positions == sorted(positions)
    optimisation = out[positions[3]:positions[4]]
    for flag in ("--optimizer", "--lr-scaling", "--lars-eta", "--adamw-betas", "--warmup-epochs", "--ema-schedule"):
        assert flag in optimisation
