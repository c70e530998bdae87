"""The in-batch contrastive methods: simclr, end-to-end, directclr, fnc, triplet.

One training step of each (tiny networks), what each feeds its loss, the EqCo statistics, and a
short CLI run.
"""
import math

import pytest
import torch

from stopgrad.cli import main
from stopgrad.config import ConfigError, build_config
from stopgrad.gsg import derangement
from stopgrad.losses import fnc_loss, info_nce_in_batch, nt_xent, nt_xent_margin, truncated_triplet
from stopgrad.methods import METHODS, build_method

NAMES = ("simclr", "end-to-end", "directclr", "fnc", "triplet")
INFO_NCE = ("simclr", "end-to-end", "directclr", "fnc")
B = 6


def tiny(method, **overrides):
    cfg = build_config(overrides={"method": method, "width": 4, **overrides})
    return build_method(cfg, in_channels=1)


def step_inputs(views, batch=B):
    return torch.randn(views, batch, 1, 8, 8), derangement(batch, torch.Generator().manual_seed(0))


def test_registered():
    assert set(NAMES) <= set(METHODS)


@pytest.mark.parametrize("views", [2, 4])
@pytest.mark.parametrize("method", NAMES)
def test_one_training_step(method, views):
    model = tiny(method, views=views)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    x, partners = step_inputs(views)
    loss, stats = model(x, partners, torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss)
    assert all(v.shape == () and torch.isfinite(v) for v in stats.values())
    assert 0 < stats["collapse_std"].item() <= 1
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    opt.step()
    model.update_momentum(0.99)  # a no-op, but part of the interface
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))


@pytest.mark.parametrize("method", NAMES)
def test_loss_is_float32_under_bfloat16_autocast(method):
    model = tiny(method)
    x, partners = step_inputs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(x, partners)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_simclr_is_nt_xent_of_the_projections_of_views_0_and_1():
    model = tiny("simclr", temperature=0.3)
    x, partners = step_inputs(4)
    loss, _ = model(x, partners)
    z = model.projector(model.backbone(x[:2].flatten(0, 1)))  # same batch statistics: same two views
    torch.testing.assert_close(loss, nt_xent(z[:B], z[B:], 0.3))


def test_end_to_end_keys_carry_gradient_and_the_loss_is_view0_queries_on_view1_keys():
    model = tiny("end-to-end", temperature=0.2)
    x, partners = step_inputs(2)
    x.requires_grad_()
    loss, _ = model(x, partners)
    (g,) = torch.autograd.grad(loss, x)
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0  # queries and keys both back-propagate
    with torch.no_grad():
        z = model.projector(model.backbone(x[:2].flatten(0, 1)))
        torch.testing.assert_close(loss.detach(), info_nce_in_batch(z[:B], z[B:], 0.2))


def test_directclr_has_no_projector_and_reads_the_first_dims_of_the_representation():
    model = tiny("directclr", directclr_dim=12, temperature=0.1)
    assert isinstance(model.projector, torch.nn.Identity)
    assert not any(True for _ in model.projector.parameters())
    x, partners = step_inputs(2)
    loss, _ = model(x, partners)
    with torch.no_grad():
        r = model.backbone(x.flatten(0, 1))[:, :12]
        want = 0.5 * (info_nce_in_batch(r[:B], r[B:], 0.1) + info_nce_in_batch(r[B:], r[:B], 0.1))
    torch.testing.assert_close(loss.detach(), want)


def test_directclr_dim_must_fit_the_backbone():
    with pytest.raises(ConfigError, match="directclr_dim"):
        tiny("directclr", directclr_dim=10_000)


@pytest.mark.parametrize("mode", ["elimination", "attraction"])
@pytest.mark.parametrize("views", [2, 4])
def test_fnc_is_fnc_loss_with_support_from_all_views(mode, views):
    model = tiny("fnc", fnc_mode=mode, fnc_top_k=2, temperature=0.5)
    x, partners = step_inputs(views)
    loss, _ = model(x, partners)
    with torch.no_grad():
        z = model.projector(model.backbone(x.flatten(0, 1))).unflatten(0, (views, B))
        torch.testing.assert_close(loss.detach(), fnc_loss(z[0], z[1], z, 0.5, 2, mode))


def test_fnc_top_k_must_leave_negatives():
    with pytest.raises(ConfigError, match="fnc_top_k"):
        tiny("fnc", batch_size=4, fnc_top_k=6)


@pytest.mark.parametrize("smoothed", [False, True])
def test_triplet_is_the_symmetrised_truncated_triplet(smoothed):
    model = tiny("triplet", triplet_rank=2, triplet_smoothed=smoothed, triplet_margin=0.5)
    x, partners = step_inputs(2)
    loss, _ = model(x, partners)
    with torch.no_grad():
        z = model.projector(model.backbone(x.flatten(0, 1)))
        want = 0.5 * (truncated_triplet(z[:B], z[B:], 2, smoothed, 0.5)
                      + truncated_triplet(z[B:], z[:B], 2, smoothed, 0.5))
    torch.testing.assert_close(loss.detach(), want)


def test_triplet_rank_must_fit_the_batch():
    with pytest.raises(ConfigError, match="triplet_rank"):
        tiny("triplet", batch_size=4, triplet_rank=2, triplet_smoothed=True)  # ranks 2..5 of 3 negatives


# negatives per query of each method with B = 6 (fnc: top-k 2)
PHYSICAL_K = {"simclr": 2 * B - 2, "end-to-end": B - 1, "directclr": B - 1,
              ("fnc", "elimination"): 2 * B - 2 - 2, ("fnc", "attraction"): 2 * B - 2}


@pytest.mark.parametrize("key", list(PHYSICAL_K))
@pytest.mark.parametrize("alpha", [None, 0.0, 256.0])
def test_eqco_margin_uses_the_physical_k_and_mi_bound_is_log_k_plus_m_over_t_minus_loss(key, alpha):
    method, mode = key if isinstance(key, tuple) else (key, "elimination")
    model = tiny(method, eqco_alpha=alpha, temperature=0.2, fnc_mode=mode, fnc_top_k=2)
    x, partners = step_inputs(2)
    loss, stats = model(x, partners)
    k = PHYSICAL_K[key]
    m = 0.2 * math.log(256.0 / k) if alpha else 0.0
    assert stats["margin"].item() == pytest.approx(m, abs=1e-6)
    if key == ("fnc", "attraction"):
        # the bound reads the InfoNCE term of the image's own positive: NT-Xent with the margin
        with torch.no_grad():
            z = model.projector(model.backbone(x.flatten(0, 1)))
            term = nt_xent_margin(z[:B], z[B:], 0.2, m).item()
    else:
        term = loss.item()
    assert stats["mi_bound"].item() == pytest.approx(math.log(k) + m / 0.2 - term, abs=1e-5)
    if alpha:  # the rule: log K + m/T = log alpha, whatever K
        assert stats["mi_bound"].item() == pytest.approx(math.log(256.0) - term, abs=1e-5)


def test_eqco_margin_raises_the_loss_of_the_same_step():
    for method in INFO_NCE:
        torch.manual_seed(0)
        x, partners = step_inputs(2)
        torch.manual_seed(1)
        off, _ = tiny(method, temperature=0.2)(x, partners)
        torch.manual_seed(1)
        on, _ = tiny(method, temperature=0.2, eqco_alpha=4096.0)(x, partners)  # alpha > K: a positive margin
        assert on > off, method


@pytest.mark.parametrize("method", NAMES)
def test_cli_train_runs(method, tmp_path):
    argv = ["train", "--method", method, "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
            "--width", "4", "--train-subset", "256", "--no-progress", "--knn-k", "20", "--threads", "1",
            "--out", str(tmp_path / method)]
    assert main(argv) == 0
    assert (tmp_path / method / "metrics.jsonl").exists() and (tmp_path / method / "backbone.safetensors").exists()
