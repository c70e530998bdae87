"""Evaluators: kNN with several k, logistic regression, linear probes (frozen backbone), transfer,
geometry on constructed inputs with known answers, t-SNE, and the collapse alarm."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stopgrad.backbones import build_backbone
from stopgrad.data import load_dataset
from stopgrad.evaluate.geometry import (alignment, collapse_std, describe, effective_rank, geometry, spectrum,
                                        uniformity)
from stopgrad.evaluate.knn import knn_classify, knn_scores, nearest
from stopgrad.evaluate.linear import FrozenBackboneError, check_unchanged, linear_fast, linear_paper, snapshot
from stopgrad.evaluate.logreg import (LinearClassifier, accuracy, fit_logistic, objective,
                                      sweep_weight_decay)
from stopgrad.evaluate.online import CollapseAlarm, collapse_level
from stopgrad.evaluate.transfer import WD_GRID, TransferData, to_input, transfer
from stopgrad.data.augment import RECIPES


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_backbone(seed=0, width=4, calibrate=None):
    """A random small CNN; with ``calibrate`` (a data set) its BatchNorm running statistics are
    estimated on those images, as training would have left them (eval-mode features then have
    unit scale instead of the ~0.004 of untouched statistics)."""
    torch.manual_seed(seed)
    net = build_backbone("small-cnn", 1, width)
    if calibrate is not None:
        from stopgrad.data.augment import prepare
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the calibration batches
        net.train()
        with torch.no_grad():
            for chunk in calibrate.train_x.split(256):
                net(prepare(chunk, calibrate.mean, calibrate.std))
    return net


# ---------------------------------------------------------------------------------------------- kNN
def brute_force_votes(bank, labels, query, k, t, classes):
    sims = sorted(((float(query @ b), int(y)) for b, y in zip(bank, labels)), key=lambda s: -s[0])[:k]
    votes = [0.0] * classes
    for s, y in sims:
        votes[y] += math.exp(s / t)
    return votes


def test_several_k_in_one_pass_match_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(80, 6, generator=g), dim=1)
    labels = torch.randint(0, 7, (80,), generator=g)
    queries = F.normalize(torch.randn(30, 6, generator=g), dim=1)
    truth = torch.randint(0, 7, (30,), generator=g)
    scores = knn_scores(bank, labels, queries, truth, ks=(1, 5, 20), temperature=0.1, num_classes=7, chunk=8)
    for k in (1, 5, 20):
        top1 = top5 = 0
        for q, y in zip(queries, truth):
            votes = brute_force_votes(bank, labels, q, k, 0.1, 7)
            order = sorted(range(7), key=lambda c: -votes[c])
            top1 += order[0] == y
            top5 += int(y) in [c for c in order[:5] if votes[c] > 0]  # ties at zero votes are no guesses
        assert scores[k]["top1"] == pytest.approx(top1 / 30)
        assert scores[k]["top5"] == (pytest.approx(top5 / 30) if k >= 5 else None)
        assert (knn_classify(bank, labels, queries, k, 0.1, 7) == truth).float().mean().item() == \
            pytest.approx(scores[k]["top1"])


def test_bank_blocks_give_the_same_neighbours_as_one_block():
    g = torch.Generator().manual_seed(1)
    bank = F.normalize(torch.randn(1000, 16, generator=g), dim=1)
    queries = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    s1, i1 = nearest(bank, queries, 25)
    s2, i2 = nearest(bank, queries, 25, chunk=7, bank_chunk=64)  # 16 bank blocks, merged
    torch.testing.assert_close(s1, s2)
    assert torch.equal(i1, i2)
    assert bool((s1[:, :-1] >= s1[:, 1:]).all())  # sorted, best first


# ---------------------------------------------------------------------------------------- logistic regression
def test_lbfgs_reaches_scikit_learns_optimum():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)  # pixels in [0, 1]
    wd = 10.0
    sk = LogisticRegression(C=1 / wd, max_iter=10000, tol=1e-10).fit(x, y)  # C = 1/wd, Ericsson's convention
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    ours = fit_logistic(xt, yt, 10, wd)
    ref = LinearClassifier(torch.from_numpy(sk.coef_).float(), torch.from_numpy(sk.intercept_).float())
    assert objective(ours, xt, yt, wd) <= objective(ref, xt, yt, wd) + 1e-5
    assert (ours.predict(xt).numpy() == sk.predict(x)).mean() > 0.995


def test_sweep_prefers_the_smallest_weight_decay_among_equal_scores():
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long()  # separable: every small wd scores 100% on validation
    best, records = sweep_weight_decay(x[:150], y[:150], x[150:], y[150:], 2, [1e-3, 1e-2, 1e4])
    assert [r["wd"] for r in records] == [1e-3, 1e-2, 1e4]
    assert records[0]["val_score"] == records[1]["val_score"] == 1.0 and best == 1e-3


def test_per_class_accuracy_is_the_mean_over_classes():
    y = torch.tensor([0, 0, 0, 0, 1])
    pred = torch.tensor([0, 0, 0, 0, 0])
    assert accuracy(pred, y) == pytest.approx(0.8) and accuracy(pred, y, "per-class") == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- linear probes
def test_fast_linear_probe_leaves_the_backbone_bit_identical(digits):
    net = small_backbone()
    net.train()
    before = snapshot(net)
    d = digits
    result = linear_fast(net, d.train_x, d.train_y, d.test_x, d.test_y, d.mean, d.std)
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    # frozen random features of digits (measured 0.775; chance is 0.1)
    assert 0.6 < result["top1"] <= result["top5"] <= 1.0


def test_paper_linear_probe_trains_only_the_classifier(digits):
    net = small_backbone(calibrate=digits)
    net.train()  # the probe must switch to eval mode itself: in train mode BatchNorm statistics would move
    flags = [p.requires_grad for p in net.parameters()]
    before = snapshot(net)
    d = digits
    result = linear_paper(net, d.train_x, d.train_y, d.test_x, d.test_y, d.mean, d.std, epochs=3, lr=0.1,
                          batch_size=128, crop_scale=(0.5, 1.0))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in net.parameters()] == flags and net.training
    assert result["protocol"] == "paper" and result["top1"] > 0.25  # chance is 0.1 (measured 0.40 after 5 epochs)


class Rogue(nn.Module):
    """A 'backbone' that changes its own weights when called: the freeze check must catch it."""
    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 4)

    def forward(self, x):
        with torch.no_grad():
            self.lin.weight.add_(1e-3)
        return self.lin(x.flatten(1))


def test_a_backbone_that_changes_is_caught(digits):
    d = digits
    with pytest.raises(FrozenBackboneError, match="lin.weight changed"):
        linear_fast(Rogue(), d.train_x, d.train_y, d.test_x, d.test_y, d.mean, d.std)
    net = small_backbone()
    before = snapshot(net)
    net[1].running_mean.add_(1.0)  # a buffer counts too
    with pytest.raises(FrozenBackboneError, match="running_mean"):
        check_unchanged(net, before)


# ---------------------------------------------------------------------------------------------- transfer
def test_transfer_to_digits_chooses_the_weight_decay_on_validation(digits):
    net = small_backbone(width=8)
    d = digits
    target = TransferData("digits", d.train_x, d.train_y, d.test_x, d.test_y)
    result = transfer(net, target, d.mean, d.std, size=8, channels=1)
    assert len(result["sweep"]) == 45 and result["best_wd"] in [pytest.approx(w) for w in WD_GRID]
    assert min(WD_GRID) == pytest.approx(1e-6) and max(WD_GRID) == pytest.approx(1e5)
    best = max(r["val_score"] for r in result["sweep"])
    assert [r["val_score"] for r in result["sweep"] if r["wd"] == result["best_wd"]] == [best]
    assert result["train"] + result["val"] == len(d.train_x) and result["val"] == int(0.2 * len(d.train_x))
    assert result["score"] > 0.85  # frozen random features of digits, refitted on train + val
    per_class = transfer(net, target, d.mean, d.std, size=8, channels=1, metric="per-class", wds=[result["best_wd"]])
    assert 0.8 < per_class["score"] <= 1.0


def test_target_images_are_resized_cropped_and_channel_mapped():
    rgb = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    out = to_input(rgb, 1, 32)
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.uint8
    gray = torch.full((1, 1, 8, 8), 200, dtype=torch.uint8)
    assert torch.equal(to_input(gray, 3, 8), gray.expand(1, 3, 8, 8))
    white = torch.full((1, 3, 10, 10), 255, dtype=torch.uint8)
    assert int(to_input(white, 1, 10).min()) == 255  # luma weights sum to 1


# ---------------------------------------------------------------------------------------------- geometry
def test_a_collapsed_batch():
    z = torch.randn(1, 16).repeat(500, 1) * 3
    assert collapse_std(z) == 0.0
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-6)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-9)  # every pair at distance 0
    assert alignment(z, z) == 0.0
    assert spectrum(z).max() < 1e-12
    assert collapse_level({"proj_collapse_std": collapse_std(z)}, 16) == 0.0


def sphere_uniformity(d: int, t: float = 2.0) -> float:
    """log E exp(-t ||x - y||^2) for x, y uniform on the unit sphere of R^d: ||x - y||^2 = 2 - 2c, and
    the cosine c of two uniform points has density proportional to (1 - c^2)^((d - 3) / 2)."""
    from scipy.integrate import quad
    weight = lambda c: (1 - c * c) ** ((d - 3) / 2)  # noqa: E731
    num = quad(lambda c: math.exp(-t * (2 - 2 * c)) * weight(c), -1, 1)[0]
    return math.log(num / quad(weight, -1, 1)[0])


@pytest.mark.parametrize("d", [8, 64])
def test_an_isotropic_gaussian(d):
    torch.manual_seed(d)
    z = torch.randn(20000, d)
    assert collapse_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.01)
    assert effective_rank(z) == pytest.approx(d, rel=0.01)
    assert uniformity(z) == pytest.approx(sphere_uniformity(d), abs=0.02)
    eig = spectrum(z)
    assert eig.sum().item() == pytest.approx(1.0, rel=0.01)  # trace of the covariance of unit vectors
    assert eig.max().item() / eig.min().item() < 1.3  # no direction dominates
    assert collapse_level({"rep_collapse_std": collapse_std(z)}, d) == pytest.approx(1.0, rel=0.01)


def test_effective_rank_counts_equally_used_directions():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 32))[0][:, :5]  # 5 orthonormal directions
    signs = torch.randint(0, 2, (4000, 5)).float() * 2 - 1
    z = signs @ basis.T  # every row has the same norm and uses the 5 directions equally
    assert effective_rank(z) == pytest.approx(5.0, rel=0.02)


def test_alignment_of_known_pairs():
    z = F.normalize(torch.randn(100, 8), dim=1)
    assert alignment(z, z) == 0.0
    assert alignment(z, -z) == pytest.approx(4.0)  # antipodal unit vectors are 2 apart
    assert describe(z, z, -z)["alignment"] == pytest.approx(4.0)


def test_geometry_of_a_model_reports_both_spaces(digits):
    from stopgrad.config import build_config
    from stopgrad.methods import build_method
    torch.manual_seed(0)
    model = build_method(build_config(overrides={"width": 4, "backbone": "small-cnn"}), in_channels=1)  # 128 features
    d = digits
    out = geometry(model, d.test_x, d.test_y, d.mean, d.std, RECIPES["fashion-mnist"], pairs=200, keep_spectra=True)
    for space in ("rep", "proj"):
        for key in ("collapse_std", "effective_rank", "alignment", "uniformity"):
            assert math.isfinite(out[f"{space}_{key}"])
    assert -1 <= out["test_fn_similarity"] <= 1 and 0 < out["test_tp_similarity"] <= 1
    assert len(out["spectra"]["rep"]) == 128 and len(out["spectra"]["proj"]) == 512
    again = geometry(model, d.test_x, d.test_y, d.mean, d.std, RECIPES["fashion-mnist"], pairs=200)
    assert again["proj_alignment"] == out["proj_alignment"]  # the same views every time (seeded)


# ---------------------------------------------------------------------------------------------- t-SNE
def test_tsne_writes_a_png(digits, tmp_path):
    from stopgrad.evaluate.tsne import stratified_sample, tsne_plot
    d = digits
    idx = stratified_sample(d.test_y, 100)
    assert len(idx) == 100 and torch.bincount(d.test_y[idx]).tolist() == [10] * 10
    path = tsne_plot(small_backbone(), d.test_x, d.test_y, d.mean, d.std, tmp_path / "t.png", n=100)
    assert path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- collapse alarm
def test_the_alarm_needs_consecutive_low_evaluations():
    alarm = CollapseAlarm(threshold=0.2, patience=3, dim=100)
    low, high = {"proj_collapse_std": 0.01}, {"proj_collapse_std": 0.09}  # levels 0.1 and 0.9
    assert [alarm.update(e, r) for e, r in enumerate([low, low, high, low, low, low, low], 1)] == \
        [False, False, False, False, False, True, True]
    assert "epochs 4-7" in alarm.message()
    assert not alarm.update(8, {"knn_top1": 0.5})  # an evaluation without geometry changes nothing


def test_describe_needs_both_views_or_neither():
    import torch
    from stopgrad.evaluate.geometry import describe
    z = torch.randn(16, 4)
    with pytest.raises(ValueError, match="both views"):
        describe(z, z)
    assert "alignment" in describe(z, z, z) and "alignment" not in describe(z)


def test_a_mistyped_evaluation_option_is_an_error(tmp_path):
    from stopgrad.config import ConfigError, build_config
    from stopgrad.evaluate.saved import evaluate_saved
    from stopgrad.runs import write_config
    write_config(tmp_path, build_config(overrides={"dataset": "digits", "width": 4}), device="cpu")
    with pytest.raises(ConfigError, match="knn takes no option k;"):
        evaluate_saved("knn", tmp_path, device="cpu", save=False, k=20)
