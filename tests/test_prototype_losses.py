"""Barlow Twins, VICReg, TWIST and SPCL's metric and symmetric cross-entropy losses against plain
transcriptions of their papers' formulas, and their invariants.

Each reference below is written entry by entry on Python floats (math.sqrt / math.exp / math.log);
none calls the function under test or torch's reductions.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from stopgrad.losses import (BARLOW_TWINS_EPS, barlow_twins, siamese_metric, symmetric_ce, twist, twist_terms,
                             vicreg, vicreg_terms)


def cols(t):
    """(B, D) tensor -> list of D columns, each a list of B floats."""
    return [[float(x) for x in t[:, j]] for j in range(t.shape[1])]


def mean(v):
    return sum(v) / len(v)


# ------------------------------------------------------------------ Barlow Twins
def ref_barlow_twins(z1, z2, lambd):
    """Zbontar et al. Eqs. 1-2 with the authors' batch-norm standardisation (biased variance, eps)."""
    def standardise(t):
        out = []
        for c in cols(t):
            m = mean(c)
            var = sum((x - m) ** 2 for x in c) / len(c)
            out.append([(x - m) / math.sqrt(var + BARLOW_TWINS_EPS) for x in c])
        return out

    a, b = standardise(z1), standardise(z2)
    n, d = z1.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
    return loss


@pytest.mark.parametrize("lambd", [5e-3, 0.0, 1.0])
def test_barlow_twins_matches_the_formula(lambd):
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 5), torch.randn(7, 5) * 3 + 1
    got = barlow_twins(z1.double(), z2.double(), lambd).item()
    assert got == pytest.approx(ref_barlow_twins(z1, z2, lambd), rel=1e-9)
    assert barlow_twins(z1, z2, lambd).item() == pytest.approx(got, rel=1e-5)  # float32 too


def test_barlow_twins_default_lambda_is_the_papers():
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 4).double(), torch.randn(6, 4).double()
    assert barlow_twins(z1, z2).item() == pytest.approx(ref_barlow_twins(z1, z2, 5e-3), rel=1e-9)


def test_barlow_twins_is_invariant_to_a_per_dimension_affine_change():
    torch.manual_seed(2)
    z1, z2 = torch.randn(16, 6).double(), torch.randn(16, 6).double()
    scale1, scale2 = torch.rand(6).double() * 4 + 0.5, torch.rand(6).double() * 4 + 0.5
    shift1, shift2 = torch.randn(6).double() * 10, torch.randn(6).double() * 10
    before = barlow_twins(z1, z2)
    after = barlow_twins(z1 * scale1 + shift1, z2 * scale2 + shift2)
    assert after.item() == pytest.approx(before.item(), rel=1e-4)  # exact but for the eps in the variance
    # not invariant to mixing dimensions: the loss does see the embedding
    mixed = barlow_twins(z1 @ torch.randn(6, 6).double(), z2)
    assert abs(mixed.item() - before.item()) > 1e-2


def test_barlow_twins_is_zero_for_identical_decorrelated_standardised_views():
    # four columns of an 8x8 Hadamard matrix: zero mean, unit (biased) variance, orthogonal: C = I
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)))
    z = h[:, 1:5].double()
    assert barlow_twins(z, z, lambd=1.0).item() == pytest.approx(0.0, abs=1e-8)
    # the same views with one dimension copied into another: redundancy costs lambda per off-diagonal pair
    z_red = torch.cat((z[:, :3], z[:, :1]), 1)
    loss = barlow_twins(z_red, z_red, lambd=1.0).item()
    assert loss == pytest.approx(2.0, abs=1e-4)  # C_03 = C_30 = 1


def test_barlow_twins_gradient_reaches_both_views():
    z1, z2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    barlow_twins(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [barlow_twins, vicreg])
def test_batch_size_one_is_a_clear_error(loss):
    with pytest.raises(ValueError, match="at least 2 images.*--batch-size"):
        loss(torch.randn(1, 8), torch.randn(1, 8))


@pytest.mark.parametrize("loss", [barlow_twins, vicreg])
@pytest.mark.parametrize("shapes", [((4, 3), (4, 5)), ((4, 3), (5, 3)), ((4,), (4,)), ((2, 4, 3), (2, 4, 3))])
def test_redundancy_losses_reject_mismatched_shapes(loss, shapes):
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        loss(torch.randn(*shapes[0]), torch.randn(*shapes[1]))


# ------------------------------------------------------------------ VICReg
def ref_vicreg(z1, z2, lam, mu, nu, gamma, eps):
    """Bardes et al. Eqs. 1-6, the variance term averaged over the branches (the authors' code)."""
    n, d = z1.shape
    a, b = cols(z1), cols(z2)
    invariance = sum((a[j][k] - b[j][k]) ** 2 for j in range(d) for k in range(n)) / (n * d)

    def var(c):
        m = mean(c)
        return sum((x - m) ** 2 for x in c) / (n - 1)

    def v(z):
        return sum(max(0.0, gamma - math.sqrt(var(c) + eps)) for c in z) / d

    def c(z):
        means = [mean(col) for col in z]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[i][k] - means[i]) * (z[j][k] - means[j]) for k in range(n)) / (n - 1)
                    total += cov ** 2
        return total / d

    return lam * invariance + mu * 0.5 * (v(a) + v(b)) + nu * (c(a) + c(b))


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                                     (2.0, 3.0, 0.5)])
@pytest.mark.parametrize("gamma,eps", [(1.0, 1e-4), (2.0, 0.1)])
def test_vicreg_matches_the_formula(weights, gamma, eps):
    torch.manual_seed(3)
    z1, z2 = torch.randn(9, 5) * 0.7, torch.randn(9, 5) * 1.5 + 2
    got = vicreg(z1.double(), z2.double(), *weights, gamma=gamma, eps=eps).item()
    assert got == pytest.approx(ref_vicreg(z1, z2, *weights, gamma, eps), rel=1e-9, abs=1e-12)


def test_vicreg_defaults_are_the_papers():
    torch.manual_seed(4)
    z1, z2 = torch.randn(6, 3).double(), torch.randn(6, 3).double()
    assert vicreg(z1, z2).item() == pytest.approx(ref_vicreg(z1, z2, 25.0, 25.0, 1.0, 1.0, 1e-4), rel=1e-9)


def test_vicreg_terms_are_the_unweighted_parts():
    torch.manual_seed(5)
    z1, z2 = torch.randn(6, 3).double(), torch.randn(6, 3).double()
    inv, var, cov = vicreg_terms(z1, z2)
    assert inv.item() == pytest.approx(ref_vicreg(z1, z2, 1, 0, 0, 1.0, 1e-4), rel=1e-9)
    assert var.item() == pytest.approx(ref_vicreg(z1, z2, 0, 1, 0, 1.0, 1e-4), rel=1e-9)
    assert cov.item() == pytest.approx(ref_vicreg(z1, z2, 0, 0, 1, 1.0, 1e-4), rel=1e-9)


def test_vicreg_variance_term_is_zero_when_every_std_reaches_gamma():
    torch.manual_seed(6)
    z1 = torch.randn(32, 8)
    z1 = (z1 - z1.mean(0)) / z1.std(0) * torch.linspace(1.0, 5.0, 8)  # unbiased stds 1 .. 5 >= gamma = 1
    z2 = torch.randn(32, 8) * 10
    assert vicreg_terms(z1, z2)[1].item() == 0.0
    assert vicreg(z1, z2, sim_weight=0.0, cov_weight=0.0).item() == 0.0
    # one dimension of one branch below gamma: only it counts, halved (the mean of the two branches)
    z1[:, 0] = 3.0  # constant: std = sqrt(eps)
    assert vicreg_terms(z1, z2)[1].item() == pytest.approx(0.5 * (1.0 - math.sqrt(1e-4)) / 8, rel=1e-5)


def test_vicreg_gradient_reaches_both_views():
    z1, z2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    vicreg(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


# ------------------------------------------------------------------ TWIST
def ref_twist(l1, l2):
    """Wang et al. 2021 (TWIST) Eq. 5, each term the mean of the two views' (the authors' code)."""
    def softmax(row):
        top = max(row)
        e = [math.exp(x - top) for x in row]
        return [x / sum(e) for x in e]

    p1 = [softmax([float(x) for x in row]) for row in l1]
    p2 = [softmax([float(x) for x in row]) for row in l2]

    def kl(p, q):
        return mean([sum(a * math.log(a / b) for a, b in zip(pr, qr)) for pr, qr in zip(p, q)])

    def mean_entropy(p):
        return mean([-sum(a * math.log(a) for a in row) for row in p])

    def entropy_of_mean(p):
        avg = [mean(col) for col in zip(*p)]
        return -sum(a * math.log(a) for a in avg)

    return (0.5 * (kl(p1, p2) + kl(p2, p1)) + 0.5 * (mean_entropy(p1) + mean_entropy(p2))
            - 0.5 * (entropy_of_mean(p1) + entropy_of_mean(p2)))


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_twist_matches_the_formula(scale):
    torch.manual_seed(7)
    l1, l2 = torch.randn(6, 5) * scale, torch.randn(6, 5) * scale
    assert twist(l1.double(), l2.double()).item() == pytest.approx(ref_twist(l1, l2), rel=1e-9)
    consistency, sharpness, diversity = twist_terms(l1.double(), l2.double())
    assert (consistency + sharpness - diversity).item() == pytest.approx(ref_twist(l1, l2), rel=1e-9)


def test_twist_rewards_confident_consistent_diverse_predictions_and_not_collapse():
    c = 8
    confident = 60.0 * torch.eye(c).double()  # each image its own class, both views agree
    assert twist(confident, confident).item() == pytest.approx(-math.log(c), abs=1e-6)  # the minimum
    collapsed = torch.randn(1, c).double().repeat(c, 1)  # every image the same distribution
    assert twist(collapsed, collapsed).item() == pytest.approx(0.0, abs=1e-9)  # sharpness = diversity
    consistency, sharpness, diversity = twist_terms(confident, confident.roll(1, 0))
    assert consistency.item() > 10 and sharpness.item() < 1e-6  # confident but disagreeing views


def test_twist_is_finite_for_extreme_logits_and_its_gradient_reaches_both_views():
    l1 = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    l2 = torch.tensor([[-200.0, 200.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    loss = twist(l1, l2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(l1.grad).all() and l1.grad.abs().sum() > 0
    assert l2.grad.abs().sum() > 0


@pytest.mark.parametrize("shapes", [((4, 3), (4, 5)), ((4, 1), (4, 1)), ((4,), (4,))])
def test_twist_rejects_bad_shapes(shapes):
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        twist(torch.randn(*shapes[0]), torch.randn(*shapes[1]))


# ------------------------------------------------------------------ SPCL: metric and symmetric CE
def ref_siamese(anchor, positive, negative, w, bias):
    """Koch et al. 2015: s = sum_j w_j |u_j - v_j| + b; BCE(sigmoid(s), 1) for positives, 0 for negatives."""
    total = []
    for a, p, n in zip(anchor.tolist(), positive.tolist(), negative.tolist()):
        s_pos = sum(wj * abs(x - y) for wj, x, y in zip(w, a, p)) + bias
        s_neg = sum(wj * abs(x - y) for wj, x, y in zip(w, a, n)) + bias
        bce_pos = -math.log(1 / (1 + math.exp(-s_pos)))
        bce_neg = -math.log(1 - 1 / (1 + math.exp(-s_neg)))
        total.append(0.5 * (bce_pos + bce_neg))
    return total


def test_siamese_metric_matches_kochs_verification_loss():
    torch.manual_seed(8)
    head = torch.nn.Linear(4, 1).double()
    a, p, n = (torch.randn(5, 4).double() for _ in range(3))
    want = ref_siamese(a, p, n, head.weight[0].tolist(), head.bias.item())
    assert siamese_metric(a, p, n, head).item() == pytest.approx(mean(want), rel=1e-9)
    per = siamese_metric(a, p, n, head, reduction="none")
    assert per.shape == (5,) and per.tolist() == pytest.approx(want, rel=1e-9)


def test_siamese_metric_trains_the_head_and_every_embedding():
    head = torch.nn.Linear(3, 1)
    a, p, n = (torch.randn(4, 3, requires_grad=True) for _ in range(3))
    siamese_metric(a, p, n, head).backward()
    assert all(t.grad.abs().sum() > 0 for t in (a, p, n, head.weight, head.bias))


def test_siamese_metric_is_low_when_the_head_separates_pairs():
    a = torch.zeros(3, 2)
    near, far = torch.full((3, 2), 0.01), torch.full((3, 2), 5.0)
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():  # logit = 10 - 10 * L1 distance: near pairs "same", far pairs "different"
        head.weight.fill_(-10.0)
        head.bias.fill_(10.0)
    assert siamese_metric(a, near, far, head).item() < 1e-3
    assert siamese_metric(a, far, near, head).item() > 10  # the swapped labels cost


def test_siamese_metric_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(M, D\)"):
        siamese_metric(torch.randn(3, 2), torch.randn(3, 2), torch.randn(4, 2), torch.nn.Linear(2, 1))


def ref_symmetric_ce(logits, target, alpha, beta, log_zero):
    """Wang et al. 2019: alpha * CE(q, p) + beta * RCE(p, q) = -sum_k p_k log q_k, log 0 := A."""
    out = []
    for row, y in zip(logits.tolist(), target.tolist()):
        top = max(row)
        e = [math.exp(x - top) for x in row]
        p = [x / sum(e) for x in e]
        ce = -math.log(p[y])
        rce = -sum(pk * (0.0 if k == y else log_zero) for k, pk in enumerate(p))
        out.append(alpha * ce + beta * rce)
    return out


@pytest.mark.parametrize("alpha,beta,log_zero", [(0.1, 1.0, -4.0), (6.0, 0.1, -4.0), (1.0, 1.0, -9.21)])
def test_symmetric_ce_matches_the_formula(alpha, beta, log_zero):
    torch.manual_seed(9)
    logits, target = torch.randn(7, 4).double() * 2, torch.randint(0, 4, (7,))
    want = ref_symmetric_ce(logits, target, alpha, beta, log_zero)
    assert symmetric_ce(logits, target, alpha, beta, log_zero).item() == pytest.approx(mean(want), rel=1e-9)
    assert symmetric_ce(logits, target, alpha, beta, log_zero, reduction="none").tolist() == pytest.approx(want)


def test_symmetric_ce_defaults_and_special_cases():
    torch.manual_seed(10)
    logits, target = torch.randn(5, 3).double(), torch.randint(0, 3, (5,))
    assert symmetric_ce(logits, target).item() == pytest.approx(mean(ref_symmetric_ce(logits, target, 0.1, 1.0, -4.0)))
    torch.testing.assert_close(symmetric_ce(logits, target, 1.0, 0.0), F.cross_entropy(logits, target))
    # the reverse term is bounded: at most -A whatever the logits (robust to noisy labels)
    wrong = torch.tensor([[-50.0, 50.0, 0.0]]).double()
    assert symmetric_ce(wrong, torch.tensor([0]), 0.0, 1.0).item() == pytest.approx(4.0)


def test_symmetric_ce_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        symmetric_ce(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
