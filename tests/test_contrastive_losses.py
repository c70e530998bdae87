"""The contrastive losses against plain per-anchor transcriptions of their papers' formulas.

Each reference below is written loop by loop with math.exp / math.log on Python floats; none
calls the function under test.
"""
import math

import pytest
import torch

from stopgrad.losses import (deputy_distance, eqco_margin, fnc_false_negatives, fnc_loss, info_nce,
                             info_nce_in_batch, nt_xent, nt_xent_margin, truncated_triplet)


# ------------------------------------------------------------------ plain references
def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def cos(a, b):
    a, b = unit(a), unit(b)
    return sum(x * y for x, y in zip(a, b))


def rows(t):
    return [[float(x) for x in row] for row in t]


def ref_info_nce(q, k_pos, k_neg, temperature, margin=0.0):
    """EqCo Eq. 1: L = -log(e^{(q.k+ - m)/T} / (e^{(q.k+ - m)/T} + sum_i e^{q.k_i/T})), averaged."""
    total = 0.0
    for b in range(len(q)):
        pos = math.exp((cos(q[b], k_pos[b]) - margin) / temperature)
        neg = sum(math.exp(cos(q[b], k) / temperature) for k in k_neg[b])
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def ref_nt_xent(z1, z2, temperature, margin=0.0):
    """SimCLR: anchor a of the 2B, positive its image's other view, denominator every other embedding."""
    z, b = z1 + z2, len(z1)
    total = 0.0
    for a in range(2 * b):
        p = (a + b) % (2 * b)
        num = math.exp((cos(z[a], z[p]) - margin) / temperature)
        den = sum(math.exp((cos(z[a], z[n]) - (margin if n == p else 0.0)) / temperature)
                  for n in range(2 * b) if n != a)
        total += -math.log(num / den)
    return total / (2 * b)


def ref_false_negatives(z1, z2, support, top_k):
    """FNC: image i scores candidate n (not its own views) by max_s cos(support_s_i, z_n); top k."""
    z, b = z1 + z2, len(z1)
    picked = []
    for i in range(b):
        scores = []
        for n in range(2 * b):
            if n in (i, i + b):
                continue
            scores.append((max(cos(s[i], z[n]) for s in support), n))
        scores.sort(reverse=True)
        picked.append({n for _, n in scores[:top_k]})
    return [picked[a % b] for a in range(2 * b)]


def ref_fnc(z1, z2, false_neg, temperature, mode, margin=0.0):
    """FNC Eqs.: elimination drops F_a from the denominator; attraction averages the log-probabilities
    of the positive and of F_a over the full denominator."""
    z, b = z1 + z2, len(z1)
    total = 0.0
    for a in range(2 * b):
        p = (a + b) % (2 * b)

        def e(n):
            return math.exp((cos(z[a], z[n]) - (margin if n == p else 0.0)) / temperature)

        if mode == "elimination":
            den = sum(e(n) for n in range(2 * b) if n != a and n not in false_neg[a])
            total += -math.log(e(p) / den)
        else:
            den = sum(e(n) for n in range(2 * b) if n != a)
            terms = [math.log(e(f) / den) for f in [p, *sorted(false_neg[a])]]
            total += -sum(terms) / len(terms)
    return total / (2 * b)


def ref_triplet(anchor, keys, rank, smoothed, margin):
    """Truncated triplet: d = ||a - b||^2 of unit vectors; deputy = rank-k negative (1 = closest), or
    the mean of ranks 2..2k+1; L_i = max(0, d(a_i, k_i) - d(a_i, deputy) + margin)."""
    total = 0.0
    for i in range(len(anchor)):
        a = unit(anchor[i])

        def d(v):
            return sum((x - y) ** 2 for x, y in zip(a, unit(v)))

        negs = sorted(d(keys[j]) for j in range(len(keys)) if j != i)
        deputy = sum(negs[1:2 * rank + 1]) / (2 * rank) if smoothed else negs[rank - 1]
        total += max(0.0, d(keys[i]) - deputy + margin)
    return total / len(anchor)


# ------------------------------------------------------------------ InfoNCE and EqCo
@pytest.mark.parametrize("margin", [0.0, 0.3, -0.2])
def test_info_nce_matches_the_formula(margin):
    q, kp, kn = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 4, 7)
    got = info_nce(q, kp, kn, 0.2, margin).item()
    want = ref_info_nce(rows(q), rows(kp), [rows(k) for k in kn], 0.2, margin)
    assert got == pytest.approx(want, rel=1e-5)


def test_info_nce_is_invariant_to_the_order_of_the_negatives():
    q, kp, kn = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 6, 7)
    perm = torch.stack([torch.randperm(6) for _ in range(5)])  # a different order per query
    shuffled = torch.gather(kn, 1, perm[..., None].expand_as(kn))
    torch.testing.assert_close(info_nce(q, kp, shuffled, 0.1), info_nce(q, kp, kn, 0.1))
    shared = torch.randn(6, 7)
    torch.testing.assert_close(info_nce(q, kp, shared[torch.randperm(6)], 0.1), info_nce(q, kp, shared, 0.1))


def test_margin_zero_is_plain_info_nce_and_the_margin_raises_the_loss():
    q, kp, kn = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 4, 7)
    torch.testing.assert_close(info_nce(q, kp, kn, 0.2, margin=0.0), info_nce(q, kp, kn, 0.2))
    assert info_nce(q, kp, kn, 0.2, margin=0.1) > info_nce(q, kp, kn, 0.2)
    torch.testing.assert_close(nt_xent_margin(q, kp, 0.2, 0.0), nt_xent(q, kp, 0.2))
    torch.testing.assert_close(info_nce_in_batch(q, kp, 0.2, 0.0),
                               info_nce(q, kp, torch.stack([kp[torch.arange(5) != i] for i in range(5)]), 0.2))


def test_shared_negatives_equal_the_same_negatives_repeated_per_query():
    q, kp, kn = torch.randn(5, 7), torch.randn(5, 7), torch.randn(6, 7)
    torch.testing.assert_close(info_nce(q, kp, kn, 0.2, 0.1), info_nce(q, kp, kn.expand(5, 6, 7), 0.2, 0.1))


def test_eqco_margin_is_the_formula_and_scales_the_negatives_sum_by_alpha_over_k():
    t, alpha, k = 0.2, 4096.0, 16
    m = eqco_margin(t, alpha, k)
    assert m == pytest.approx(t * math.log(alpha / k))
    # the margin is the same as multiplying the negatives' sum by alpha / K
    q, kp, kn = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, k, 5)
    want = 0.0
    for b in range(3):
        pos = math.exp(cos(rows(q)[b], rows(kp)[b]) / t)
        neg = sum(math.exp(cos(rows(q)[b], v) / t) for v in rows(kn[b]))
        want += -math.log(pos / (pos + alpha / k * neg)) / 3
    assert info_nce(q, kp, kn, t, m).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("k", [1, 16, 255, 4096, 65536])
@pytest.mark.parametrize("alpha", [256.0, 65536.0])
def test_eqco_rule_makes_k_and_alpha_interchangeable_in_the_bound(k, alpha):
    t = 0.07
    m = eqco_margin(t, alpha, k)
    assert math.log(k) + m / t == pytest.approx(math.log(alpha))  # I >= log K + m/T - L = log alpha - L


def test_eqco_margin_rejects_non_positive_arguments():
    with pytest.raises(ValueError):
        eqco_margin(0.2, 0.0, 16)
    with pytest.raises(ValueError):
        eqco_margin(0.2, 256.0, 0)


def test_info_nce_in_batch_matches_the_formula_with_the_other_keys_as_negatives():
    q, k = torch.randn(6, 5), torch.randn(6, 5)
    for margin in (0.0, 0.25):
        negs = [[row for j, row in enumerate(rows(k)) if j != i] for i in range(6)]
        want = ref_info_nce(rows(q), rows(k), negs, 0.3, margin)
        assert info_nce_in_batch(q, k, 0.3, margin).item() == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ NT-Xent
@pytest.mark.parametrize("margin", [0.0, 0.4])
def test_nt_xent_matches_the_formula(margin):
    z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
    want = ref_nt_xent(rows(z1), rows(z2), 0.5, margin)
    assert nt_xent_margin(z1, z2, 0.5, margin).item() == pytest.approx(want, rel=1e-5)
    if margin == 0:
        assert nt_xent(z1, z2, 0.5).item() == pytest.approx(want, rel=1e-5)


def test_nt_xent_is_symmetric_in_its_arguments():
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(nt_xent(z1, z2, 0.2), nt_xent(z2, z1, 0.2))
    torch.testing.assert_close(nt_xent_margin(z1, z2, 0.2, 0.3), nt_xent_margin(z2, z1, 0.2, 0.3))


def test_nt_xent_ignores_the_scale_of_the_embeddings():
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(nt_xent(3 * z1, 0.5 * z2, 0.2), nt_xent(z1, z2, 0.2))


def test_gradients_reach_every_input_of_the_info_nce_losses():
    q, kp, kn = (torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True),
                 torch.randn(4, 3, 5, requires_grad=True))
    info_nce(q, kp, kn, 0.2, 0.1).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, kp, kn))
    z1, z2 = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    (nt_xent(z1, z2, 0.2) + nt_xent_margin(z1, z2, 0.2, 0.3) + info_nce_in_batch(z1, z2, 0.2, 0.3)).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


# ------------------------------------------------------------------ FNC
@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_fnc_false_negatives_match_the_reference(top_k):
    z1, z2, support = torch.randn(5, 4), torch.randn(5, 4), torch.randn(3, 5, 4)
    mask = fnc_false_negatives(z1, z2, support, top_k)
    want = ref_false_negatives(rows(z1), rows(z2), [rows(s) for s in support], top_k)
    assert [set(torch.nonzero(r).flatten().tolist()) for r in mask] == want
    b = 5
    assert (mask.sum(1) == top_k).all()
    own = torch.eye(b, dtype=torch.bool).repeat(2, 2)  # an anchor's own image, views 1 and 2
    assert not (mask & own).any()


@pytest.mark.parametrize("mode", ["elimination", "attraction"])
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_fnc_loss_matches_the_formula(mode, margin):
    z1, z2, support = torch.randn(5, 4), torch.randn(5, 4), torch.randn(2, 5, 4)
    fn = ref_false_negatives(rows(z1), rows(z2), [rows(s) for s in support], 2)
    want = ref_fnc(rows(z1), rows(z2), fn, 0.5, mode, margin)
    assert fnc_loss(z1, z2, support, 0.5, 2, mode, margin).item() == pytest.approx(want, rel=1e-5)


def _fnc_example():
    """Image 0 at e1, image 1 at 10 degrees from e1 (its likely false negative), image 2 at e2."""
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    z = torch.tensor([[1.0, 0.0], [c, s], [0.0, 1.0]])
    return z, z.clone(), c


def test_fnc_hand_made_example_flags_the_near_image_and_eliminates_it():
    z1, z2, _ = _fnc_example()
    mask = fnc_false_negatives(z1, z2, torch.stack((z1, z2)), top_k=2)
    # anchors 0 and 3 (image 0): image 1's views (columns 1, 4); image 1 <- image 0; image 2 <- image 1
    assert [set(torch.nonzero(r).flatten().tolist()) for r in mask] == [{1, 4}, {0, 3}, {1, 4}] * 2
    # image 0, T = 1: positive sim 1; eliminated: image 1; left in the denominator: image 2 (sim 0) twice
    per_anchor0 = -math.log(math.e / (math.e + 2.0))
    loss = fnc_loss(z1, z2, torch.stack((z1, z2)), 1.0, 2, "elimination")
    # image 1: image 0 eliminated, image 2 kept (sim sin 10 deg); image 2: image 1 eliminated, image 0 kept (sim 0)
    s = math.sin(math.radians(10))
    per_anchor1 = -math.log(math.e / (math.e + 2 * math.exp(s)))
    per_anchor2 = -math.log(math.e / (math.e + 2.0))
    assert loss.item() == pytest.approx((per_anchor0 + per_anchor1 + per_anchor2) / 3, rel=1e-5)


def test_fnc_hand_made_example_attraction():
    z1, z2, c = _fnc_example()
    s = math.sin(math.radians(10))
    # T = 1; false negatives: image 0 <- image 1 (sim c), image 1 <- image 0 (sim c), image 2 <- image 1 (sim s)
    den0 = math.e + 2 * math.exp(c) + 2.0  # own view, image 1 twice, image 2 twice (sim 0)
    den1 = math.e + 2 * math.exp(c) + 2 * math.exp(s)
    den2 = math.e + 2.0 + 2 * math.exp(s)
    per_image = [-(math.log(math.e / den0) + 2 * (c - math.log(den0))) / 3,
                 -(math.log(math.e / den1) + 2 * (c - math.log(den1))) / 3,
                 -(math.log(math.e / den2) + 2 * (s - math.log(den2))) / 3]
    got = fnc_loss(z1, z2, torch.stack((z1, z2)), 1.0, 2, "attraction").item()
    assert got == pytest.approx(sum(per_image) / 3, rel=1e-5)


def test_fnc_support_views_decide_the_false_negatives():
    e = torch.eye(3)
    z1 = z2 = e  # image i at e_i: nothing is closer to image 0 than anything else
    support = torch.stack((e, e, torch.stack((e[2], e[1], e[2]))))  # image 0's extra view looks like image 2
    mask = fnc_false_negatives(z1, z2, support, top_k=2)
    assert set(torch.nonzero(mask[0]).flatten().tolist()) == {2, 5}


def test_fnc_elimination_lowers_the_loss_below_nt_xent():
    z1, z2, support = torch.randn(6, 8), torch.randn(6, 8), torch.randn(2, 6, 8)
    plain = nt_xent(z1, z2, 0.3)
    assert fnc_loss(z1, z2, support, 0.3, 3, "elimination") < plain  # fewer denominator terms


def test_fnc_gradient_reaches_the_views_but_not_the_support():
    z1, z2 = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    support = torch.randn(2, 4, 5, requires_grad=True)
    for mode in ("elimination", "attraction"):
        z1.grad = z2.grad = None
        fnc_loss(z1, z2, support, 0.2, 2, mode).backward()
        assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
        assert support.grad is None


def test_fnc_rejects_bad_arguments():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError):
        fnc_loss(z, z, z[None], 0.2, 5, "elimination")  # 2B - 2 = 4 candidates
    with pytest.raises(ValueError):
        fnc_loss(z, z, z[None], 0.2, 1, "repulsion")


# ------------------------------------------------------------------ truncated triplet
def test_deputy_distance_hand_made():
    d = torch.tensor([[3.0, 1.0, 4.0, 2.0, 5.0]])
    assert deputy_distance(d, 1).item() == 1.0  # the hardest negative
    assert deputy_distance(d, 2).item() == 2.0
    assert deputy_distance(d, 3).item() == 3.0
    assert deputy_distance(d, 1, smoothed=True).item() == pytest.approx(2.5)  # ranks 2, 3
    assert deputy_distance(d, 2, smoothed=True).item() == pytest.approx(3.5)  # ranks 2..5
    with pytest.raises(ValueError):
        deputy_distance(d, 6)
    with pytest.raises(ValueError):
        deputy_distance(d, 3, smoothed=True)  # ranks 2..7 of 5


def test_truncated_triplet_hand_made():
    # all anchors at e1; keys at 0, 60 and 90 degrees: d = 2 - 2 cos = 0, 1, 2
    anchor = torch.tensor([[1.0, 0.0]] * 3)
    keys = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    # rank 2: anchor 0: 0 - 2 + .5 -> 0; anchor 1: 1 - 2 + .5 -> 0; anchor 2: 2 - 1 + .5 = 1.5
    assert truncated_triplet(anchor, keys, 2, margin=0.5).item() == pytest.approx(0.5, abs=1e-6)
    # rank 1 (the hardest): 0 - 1 + .5 -> 0; 1 - 0 + .5 = 1.5; 2 - 0 + .5 = 2.5
    assert truncated_triplet(anchor, keys, 1, margin=0.5).item() == pytest.approx(4 / 3, abs=1e-6)


@pytest.mark.parametrize("rank,smoothed", [(1, False), (2, False), (5, False), (1, True), (2, True)])
def test_truncated_triplet_matches_the_formula(rank, smoothed):
    a, k = torch.randn(6, 4), torch.randn(6, 4)
    want = ref_triplet(rows(a), rows(k), rank, smoothed, 0.3)
    assert truncated_triplet(a, k, rank, smoothed, 0.3).item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_truncated_triplet_rejects_a_rank_beyond_the_batch():
    a = torch.randn(4, 3)
    truncated_triplet(a, a, 3)
    with pytest.raises(ValueError):
        truncated_triplet(a, a, 4)
    with pytest.raises(ValueError):
        truncated_triplet(a, a, 2, smoothed=True)


def test_truncated_triplet_gradient_reaches_only_active_anchors_positives_and_deputies():
    # the hand-made example: only anchor 2's hinge is active (rank 2, margin 0.5); its positive is
    # key 2 and its deputy key 1 (rank 2 of d = 0 for key 0, 1 for key 1); key 0 is its hardest negative
    anchor = torch.tensor([[1.0, 0.0]] * 3, requires_grad=True)
    keys = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]], requires_grad=True)
    truncated_triplet(anchor, keys, 2, margin=0.5).backward()
    assert [bool(g.abs().sum() > 0) for g in keys.grad] == [False, True, True]
    assert [bool(g.abs().sum() > 0) for g in anchor.grad] == [False, False, True]
