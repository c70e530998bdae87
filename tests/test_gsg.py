"""GSG against an independent, loop-by-loop transcription of the paper's Algorithm 1."""

import pytest
import torch

from stopgrad.gsg import POLICIES, derangement, pair_loss


def D(p, z):  # negative cosine similarity of two vectors
    return -(p / p.norm()) @ (z / z.norm())


def algorithm1_case(z11, z12, z21, z22):
    """Which of the four cases the paper's if/elif chain takes."""
    d1121, d1122 = torch.dist(z11, z21), torch.dist(z11, z22)
    d1221, d1222 = torch.dist(z12, z21), torch.dist(z12, z22)
    m = min(d1121, d1122, d1221, d1222)
    if d1121 == m:
        return 0
    elif d1122 == m:
        return 1
    elif d1221 == m:
        return 2
    return 3


def case_loss(case, p11, p12, p21, p22, z11, z12, z21, z22):
    """0.5 * l for one case of Eq. (6): sources by case, the siblings are stop-gradient targets."""
    sg = torch.Tensor.detach
    if case == 0:
        l = D(p11, sg(z12)) + D(p21, sg(z22))
    elif case == 1:
        l = D(p11, sg(z12)) + D(p22, sg(z21))
    elif case == 2:
        l = D(p12, sg(z11)) + D(p21, sg(z22))
    else:
        l = D(p12, sg(z11)) + D(p22, sg(z21))
    return 0.5 * l


def reference(policy, p_a, z_a, p_b, z_b):
    losses = []
    for k in range(p_a.shape[1]):
        p11, p12, p21, p22 = p_a[0, k], p_a[1, k], p_b[0, k], p_b[1, k]
        z11, z12, z21, z22 = z_a[0, k], z_a[1, k], z_b[0, k], z_b[1, k]
        args = (p11, p12, p21, p22, z11, z12, z21, z22)
        if policy == "symmetric":
            sg = torch.Tensor.detach
            losses.append(0.25 * (D(p11, sg(z12)) + D(p12, sg(z11)) + D(p21, sg(z22)) + D(p22, sg(z21))))
        elif policy == "guided":
            losses.append(case_loss(algorithm1_case(z11, z12, z21, z22), *args))
        elif policy == "reverse":  # Eq. (7): the terms guided leaves out
            guided = algorithm1_case(z11, z12, z21, z22)
            losses.append(case_loss(3 - guided, *args))
    return sum(losses) / len(losses)


def tensors(b=16, d=8, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, b, d, generator=g, dtype=torch.float64).requires_grad_(requires_grad) for _ in range(4)]


@pytest.mark.parametrize("policy", ["guided", "reverse", "symmetric"])
@pytest.mark.parametrize("seed", range(5))
def test_matches_algorithm1(policy, seed):
    p_a, z_a, p_b, z_b = tensors(seed=seed)
    ours = pair_loss(p_a, z_a, p_b, z_b, policy)
    ref = reference(policy, p_a, z_a, p_b, z_b)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # the gradient with respect to every prediction matches too
    g_ours = torch.autograd.grad(ours, [p_a, p_b])
    g_ref = torch.autograd.grad(ref, [p_a, p_b])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_ties_take_the_first_case_like_the_if_chain():
    z = torch.ones(2, 1, 4, dtype=torch.float64)  # all four distances equal
    p = torch.randn(2, 1, 4, dtype=torch.float64)
    q = torch.randn(2, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(pair_loss(p, z, q, z, "guided"), case_loss(0, p[0, 0], p[1, 0], q[0, 0], q[1, 0],
                                                                          z[0, 0], z[1, 0], z[0, 0], z[1, 0]))


def selected_views(p_a, p_b):
    """Source view per pair read off the gradient: (B,) for a and b; exactly one view each."""
    nz_a = (p_a.grad.abs().sum(-1) > 0)  # (2, B)
    nz_b = (p_b.grad.abs().sum(-1) > 0)
    assert torch.all(nz_a.sum(0) == 1) and torch.all(nz_b.sum(0) == 1)
    return nz_a.float().argmax(0), nz_b.float().argmax(0)


@pytest.mark.parametrize("policy", ["guided", "reverse", "random"])
def test_gradients_reach_only_selected_predictions_never_targets(policy):
    p_a, z_a, p_b, z_b = tensors(b=32)
    loss = pair_loss(p_a, z_a, p_b, z_b, policy, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert z_a.grad is None and z_b.grad is None
    src_a, src_b = selected_views(p_a, p_b)
    if policy != "random":
        expected = [algorithm1_case(z_a[0, k], z_a[1, k], z_b[0, k], z_b[1, k]) for k in range(32)]
        expected = torch.tensor(expected)
        if policy == "reverse":
            expected = 3 - expected
        assert torch.equal(src_a * 2 + src_b, expected)


def test_symmetric_gradients_reach_every_prediction_never_targets():
    p_a, z_a, p_b, z_b = tensors()
    pair_loss(p_a, z_a, p_b, z_b, "symmetric").backward()
    assert z_a.grad is None and z_b.grad is None
    assert (p_a.grad.abs().sum(-1) > 0).all() and (p_b.grad.abs().sum(-1) > 0).all()


def test_random_is_one_drawn_case_per_pair_and_draws_every_case():
    b = 64
    p_a, z_a, p_b, z_b = tensors(b=b)
    loss = pair_loss(p_a, z_a, p_b, z_b, "random", generator=torch.Generator().manual_seed(3))
    loss.backward()
    src_a, src_b = selected_views(p_a, p_b)
    cases = src_a * 2 + src_b
    # the loss is exactly the mean of the selected case's terms
    ref = sum(case_loss(int(c), p_a[0, k], p_a[1, k], p_b[0, k], p_b[1, k], z_a[0, k], z_a[1, k], z_b[0, k], z_b[1, k])
              for k, c in enumerate(cases)) / b
    torch.testing.assert_close(loss, ref)
    assert set(cases.tolist()) == {0, 1, 2, 3}
    # a different generator draws different cases; the same one repeats them
    again = pair_loss(p_a, z_a, p_b, z_b, "random", generator=torch.Generator().manual_seed(3))
    other = pair_loss(p_a, z_a, p_b, z_b, "random", generator=torch.Generator().manual_seed(4))
    assert again == loss and other != loss


def test_guided_picks_the_closest_cross_pair():
    # views 2 of a and 1 of b are nearly equal: they must be the sources
    z_a = torch.tensor([[[5.0, 0.0]], [[1.0, 1.0]]])
    z_b = torch.tensor([[[1.0, 1.1]], [[-5.0, 0.0]]])
    p_a, p_b = torch.randn(2, 1, 2, requires_grad=True), torch.randn(2, 1, 2, requires_grad=True)
    pair_loss(p_a, z_a, p_b, z_b, "guided").backward()
    assert selected_views(p_a, p_b) == (torch.tensor([1]), torch.tensor([0]))


def test_bad_shapes_and_policy_are_errors():
    p_a, z_a, p_b, z_b = tensors(requires_grad=False)
    with pytest.raises(ValueError, match="choose one of"):
        pair_loss(p_a, z_a, p_b, z_b, "sideways")
    with pytest.raises(ValueError, match=r"\(2, B, D\)"):
        pair_loss(p_a[0], z_a[0], p_b[0], z_b[0], "guided")
    assert set(POLICIES) == {"guided", "random", "reverse", "symmetric"}


@pytest.mark.parametrize("n", list(range(2, 40)) + [257])
def test_derangement_has_no_fixed_points(n):
    g = torch.Generator().manual_seed(n)
    for _ in range(20):
        perm = derangement(n, g)
        assert sorted(perm.tolist()) == list(range(n))
        assert not (perm == torch.arange(n)).any()


def test_derangement_is_uniform_for_n3():
    # n = 3 has exactly two derangements, (1, 2, 0) and (2, 0, 1); both must appear about equally
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(2000):
        key = tuple(derangement(3, g).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}
    assert abs(counts[(1, 2, 0)] - 1000) < 150


@pytest.mark.parametrize("n", [-1, 0, 1])
def test_derangement_rejects_n_below_2(n):
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(n)
