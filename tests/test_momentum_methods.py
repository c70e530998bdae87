"""InstDisc, MoCo v2, MoCo v3 (with the stop-gradient policies) and SiMo: steps, memories, losses, state."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from stopgrad.config import ConfigError, build_config
from stopgrad.gsg import POLICIES, derangement, select_sources
from stopgrad.losses import eqco_margin, info_nce, info_nce_in_batch
from stopgrad.methods import build_method
from stopgrad.methods.instdisc import sample_negatives
from stopgrad.methods.moco import ghost_groups, grouped_encode, info_nce_terms, policy_terms
from stopgrad.methods.simo import sample_in_batch_negatives

B = 6
MOMENTUM_METHODS = ("moco-v2", "moco-v3", "simo")


def tiny(method, **overrides):
    values = {"method": method, "width": 4, "train_subset": 20, **overrides}
    return build_method(build_config(overrides=values), in_channels=1)


def batch(views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(views, B, 1, 8, 8, generator=g), derangement(B, g), torch.randperm(20, generator=g)[:B]


def key_params(model):
    return [p.detach().clone() for p in model.key_encoder.parameters()]


@pytest.mark.parametrize("method,views,policy", [
    ("instdisc", 2, "guided"), ("instdisc", 4, "guided"), ("moco-v2", 2, "guided"), ("simo", 2, "guided"),
    *[("moco-v3", v, p) for v in (2, 4) for p in POLICIES]])
def test_one_training_step(method, views, policy):
    model = tiny(method, views=views, stopgrad=policy)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    backbone_before = [p.detach().clone() for p in model.backbone.parameters()]
    x, partners, indices = batch(views)
    loss, stats = model(x, partners, torch.Generator().manual_seed(0), indices)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(stats) == {"mi_bound", "margin", "collapse_std"}
    assert all(s.shape == () and torch.isfinite(s) for s in stats.values())
    assert 0 <= stats["collapse_std"].item() <= 1
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    if method in MOMENTUM_METHODS:
        assert not {id(p) for p in model.key_encoder.parameters()} & {id(p) for p in trainable}
        keys_before = key_params(model)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(backbone_before, model.backbone.parameters()))
    if method in MOMENTUM_METHODS:
        assert all(p.grad is None for p in model.key_encoder.parameters())
        assert all(torch.equal(a, b) for a, b in zip(keys_before, model.key_encoder.parameters()))  # optimiser: no
        model.update_momentum(0.9)
        online = torch.nn.Sequential(model.backbone, model.projector)
        for old, new, o in zip(keys_before, model.key_encoder.parameters(), online.parameters()):
            torch.testing.assert_close(new, 0.9 * old + 0.1 * o.detach())  # update_momentum: the EMA rule
        assert any(not torch.equal(a, b) for a, b in zip(keys_before, model.key_encoder.parameters()))


@pytest.mark.parametrize("method", ["moco-v2", "simo"])
def test_two_view_methods_refuse_four_views(method):
    with pytest.raises(ConfigError, match="--views 2"):
        tiny(method, views=4)


def test_moco_v3_without_predictor_uses_identity():
    model = tiny("moco-v3", predictor=False)
    assert isinstance(model.predictor, torch.nn.Identity)
    x, partners, _ = batch()
    assert torch.isfinite(model(x, partners)[0])


@pytest.mark.parametrize("method", ["instdisc", "moco-v2", "moco-v3", "simo"])
def test_bfloat16_autocast_keeps_the_loss_and_the_memories_in_float32(method):
    model = tiny(method, num_negatives=16)
    x, partners, indices = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(x, partners, torch.Generator().manual_seed(0), indices)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(s.dtype == torch.float32 for s in stats.values())
    loss.backward()
    assert all(b.dtype in (torch.float32, torch.long) for b in model.buffers())


# ----------------------------------------------------------------------------- InfoNCE pieces and EqCo
def test_in_batch_info_nce_matches_info_nce_with_the_other_keys_as_negatives():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(B, 5, generator=g), torch.randn(B, 5, generator=g)
    others = torch.stack([torch.cat((k[:i], k[i + 1:])) for i in range(B)])  # (B, B-1, D)
    expected = info_nce(q, k, others, 0.3, margin=0.1)
    per_query = info_nce_in_batch(q, k, 0.3, margin=0.1, reduction="none")
    assert per_query.shape == (B,)
    torch.testing.assert_close(per_query.mean(), expected)
    torch.testing.assert_close(info_nce_in_batch(q, k, 0.3, margin=0.1), expected)
    all_others = torch.tensor([[j for j in range(B) if j != i] for i in range(B)])
    torch.testing.assert_close(info_nce_in_batch(q, k, 0.3, 0.1, all_others, reduction="none"), per_query)
    neg = sample_in_batch_negatives(B, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(info_nce_in_batch(q, k, 0.3, 0.1, neg), info_nce(q, k, k[neg], 0.3, 0.1))


def test_sampled_in_batch_negatives_are_distinct_other_images_and_follow_the_generator():
    neg = sample_in_batch_negatives(8, 5, torch.Generator().manual_seed(3))
    assert neg.shape == (8, 5)
    for i, row in enumerate(neg.tolist()):
        assert i not in row and len(set(row)) == 5 and all(0 <= j < 8 for j in row)
    assert torch.equal(neg, sample_in_batch_negatives(8, 5, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("alpha,expected_alpha", [(None, 256.0), (0.0, None), (1000.0, 1000.0)])
def test_simo_eqco_margin_default_256_zero_off_and_mi_bound(alpha, expected_alpha):
    model = tiny("simo", eqco_alpha=alpha, num_negatives=3)
    x, partners, _ = batch()
    g = torch.Generator().manual_seed(0)
    loss, stats = model(x, partners, g)
    t, k = model.temperature, 3
    m = eqco_margin(t, expected_alpha, k) if expected_alpha else 0.0
    torch.testing.assert_close(stats["mi_bound"], math.log(k) + m / t - loss.detach())
    # the loss by hand: same embeddings, same negatives (same generator draws), margin m
    flat = x.flatten(0, 1)
    with torch.no_grad():
        q = model.encode(flat).unflatten(0, (2, B))
        key = model.key_encoder(flat).unflatten(0, (2, B))
        g = torch.Generator().manual_seed(0)
        n0, n1 = sample_in_batch_negatives(B, k, g), sample_in_batch_negatives(B, k, g)
        expected = 0.5 * (info_nce(q[0], key[1], key[1][n0], t, m) + info_nce(q[1], key[0], key[0][n1], t, m))
    torch.testing.assert_close(loss.detach(), expected)


def test_simo_default_uses_all_other_images_as_negatives():
    model = tiny("simo", eqco_alpha=0.0)
    x, partners, _ = batch()
    loss, stats = model(x, partners)
    torch.testing.assert_close(stats["mi_bound"], math.log(B - 1) - loss.detach())


@pytest.mark.parametrize("method", ["moco-v2", "moco-v3", "instdisc"])
def test_eqco_margin_reaches_every_infonce_method(method):
    model = tiny(method, eqco_alpha=64.0, num_negatives=16)
    x, partners, indices = batch()
    loss, stats = model(x, partners, torch.Generator().manual_seed(0), indices)
    info = loss.detach() / (4 * model.temperature) if method == "moco-v3" else loss.detach()
    torch.testing.assert_close(stats["mi_bound"], math.log(64.0) - info)  # log K + m/T - L = log alpha - L


# ----------------------------------------------------------------------------- MoCo v2: queue and shuffle-BN
def moco_queries(model, x):
    groups = ghost_groups(x.shape[1])
    return torch.stack([grouped_encode(model.encode, v, groups) for v in x])


def test_moco_v2_loss_uses_the_queue_before_the_batch_is_enqueued():
    model = tiny("moco-v2", num_negatives=16)
    x, partners, _ = batch()
    old = model.queue.clone()
    loss, _ = model(x, partners)
    with torch.no_grad():
        q, k = moco_queries(model, x), model.keys(x)
    t = model.temperature
    torch.testing.assert_close(loss.detach(), 0.5 * (info_nce(q[0], k[1], old, t) + info_nce(q[1], k[0], old, t)))


def test_moco_v2_queue_pointer_advances_and_wraps():
    model = tiny("moco-v2", num_negatives=16)
    old = model.queue.clone()
    x1, p, _ = batch(seed=1)
    model(x1, p)
    k1 = model.keys(x1).flatten(0, 1)  # 2B = 12 keys
    assert model.queue_ptr.item() == 12
    torch.testing.assert_close(model.queue[:12], k1)
    assert torch.equal(model.queue[12:], old[12:])
    x2, p, _ = batch(seed=2)
    model(x2, p)
    k2 = model.keys(x2).flatten(0, 1)
    assert model.queue_ptr.item() == (12 + 12) % 16 == 8  # wrapped
    torch.testing.assert_close(model.queue[12:], k2[:4])
    torch.testing.assert_close(model.queue[:8], k2[4:])
    torch.testing.assert_close(model.queue[8:12], k1[8:12])  # the oldest survivors
    model.eval()  # evaluation never changes the queue
    before = model.queue.clone()
    model(x1, p)
    assert torch.equal(model.queue, before) and model.queue_ptr.item() == 8


def test_moco_v2_queue_smaller_than_the_keys_keeps_the_newest():
    model = tiny("moco-v2", num_negatives=8)
    x, p, _ = batch()
    model(x, p)
    torch.testing.assert_close(model.queue, model.keys(x).flatten(0, 1)[-8:])
    assert model.queue_ptr.item() == 0


def test_grouped_encode_gives_each_group_its_own_statistics_in_batch_order():
    x = torch.arange(8.0)[:, None]

    def centre(v):  # output depends on the group's batch statistics, like BatchNorm
        return v - v.mean(0, keepdim=True)

    blocks = grouped_encode(centre, x, 2)
    torch.testing.assert_close(blocks[:4, 0], x[:4, 0] - 1.5)  # rows 0-3 together
    torch.testing.assert_close(blocks[4:, 0], x[4:, 0] - 5.5)
    strided = grouped_encode(centre, x, 2, strided=True)
    torch.testing.assert_close(strided[0::2, 0], x[0::2, 0] - 3.0)  # rows 0, 2, 4, 6 together, back in order
    torch.testing.assert_close(strided[1::2, 0], x[1::2, 0] - 4.0)
    assert ghost_groups(2) == 1 and ghost_groups(6) == 2 and ghost_groups(512) == 8


def test_moco_v2_query_and_key_batch_statistics_come_from_different_images():
    model = tiny("moco-v2")
    x = torch.randn(2, 8, 1, 8, 8)  # 8 images: query blocks {0..3}, {4..7}; key groups {0,2,4,6}, {1,3,5,7}
    with torch.no_grad():
        q, k = moco_queries(model, x), model.keys(x)
        y = x.clone()
        y[:, 4] += 3.0  # another query block, image 0's key group
        q4, k4 = moco_queries(model, y), model.keys(y)
        z = x.clone()
        z[:, 1] += 3.0  # image 0's query block, another key group
        q1, k1 = moco_queries(model, z), model.keys(z)
    torch.testing.assert_close(q4[:, 0], q[:, 0])
    assert not torch.allclose(k4[:, 0], k[:, 0])
    assert not torch.allclose(q1[:, 0], q[:, 0])
    torch.testing.assert_close(k1[:, 0], k[:, 0])


# ----------------------------------------------------------------------------- InstDisc: the memory bank
def test_instdisc_loss_reads_the_bank_then_moves_the_rows_by_the_momentum_rule():
    model = tiny("instdisc", bank_momentum=0.5)
    x, partners, indices = batch(views=2)
    old = model.bank.clone()
    loss, _ = model(x, partners, torch.Generator().manual_seed(5), indices)
    with torch.no_grad():
        z = F.normalize(model.encode(x.flatten(0, 1)), dim=1)
        neg = sample_negatives(20, 20 - B, indices, torch.Generator().manual_seed(5))
        expected_loss = info_nce(z, old[indices].repeat(2, 1), old[neg], model.temperature)
    torch.testing.assert_close(loss.detach(), expected_loss)
    new = F.normalize(z.unflatten(0, (2, B)).mean(0), dim=1)
    torch.testing.assert_close(model.bank[indices], F.normalize(0.5 * old[indices] + 0.5 * new, dim=1))
    rest = torch.ones(20, dtype=torch.bool)
    rest[indices] = False
    assert torch.equal(model.bank[rest], old[rest])
    # toward the new embedding
    assert ((model.bank[indices] * new).sum(1) > (old[indices] * new).sum(1)).all()
    model.eval()
    before = model.bank.clone()
    model(x, partners, None, indices)
    assert torch.equal(model.bank, before)


def test_instdisc_negatives_are_distinct_rows_outside_the_batch_and_capped():
    indices = torch.tensor([0, 3, 4, 9, 11, 19])
    neg = sample_negatives(20, 14, indices, torch.Generator().manual_seed(0))
    assert sorted(neg.tolist()) == sorted(set(range(20)) - set(indices.tolist()))
    model = tiny("instdisc", num_negatives=4096)
    x, partners, idx = batch()
    loss, stats = model(x, partners, None, idx)
    torch.testing.assert_close(stats["mi_bound"], math.log(20 - B) - loss.detach())  # K = N - B


def test_instdisc_needs_indices_and_a_sized_bank():
    model = tiny("instdisc", train_subset=None)
    assert model.num_images == 0
    x, partners, indices = batch()
    with pytest.raises(RuntimeError, match="set_num_images"):
        model(x, partners, None, indices)
    model.set_num_images(20)
    assert model.bank.shape == (20, 128)
    torch.testing.assert_close(model.bank.norm(dim=1), torch.ones(20))
    with pytest.raises(ValueError, match="indices"):
        model(x, partners, None, None)
    assert torch.isfinite(model(x, partners, None, indices)[0])


# ----------------------------------------------------------------------------- MoCo v3 and the policies
def moco_v3_embeddings(model, x):
    flat = x.flatten(0, 1)
    with torch.no_grad():
        p = model.predictor(model.encode(flat)).unflatten(0, x.shape[:2])
        k = model.key_encoder(flat).unflatten(0, x.shape[:2])
    return p, k


def perturb_keys(model):
    with torch.no_grad():
        for p in model.key_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))


def plain_moco_v3(p, k, t):
    """MoCo v3's Algorithm 1: ctr(q1, k2) + ctr(q2, k1), ctr = 2t * CE(q k^T / t, identity)."""
    def ctr(q, key):
        logits = F.normalize(q, dim=1) @ F.normalize(key, dim=1).T / t
        return F.cross_entropy(logits, torch.arange(len(q))) * 2 * t
    return ctr(p[0], k[1]) + ctr(p[1], k[0])


def test_moco_v3_symmetric_is_plain_moco_v3():
    model = tiny("moco-v3", stopgrad="symmetric", temperature=0.5)
    perturb_keys(model)
    x, partners, _ = batch()
    loss, stats = model(x, partners)
    p, k = moco_v3_embeddings(model, x)
    torch.testing.assert_close(loss.detach(), plain_moco_v3(p, k, 0.5))
    torch.testing.assert_close(stats["mi_bound"], math.log(B - 1) - loss.detach() / (4 * 0.5))
    x4, partners, _ = batch(views=4)  # four views: the mean of plain MoCo v3 over views (1,2) and (3,4)
    loss4, _ = model(x4, partners)
    p, k = moco_v3_embeddings(model, x4)
    torch.testing.assert_close(loss4.detach(), 0.5 * (plain_moco_v3(p[:2], k[:2], 0.5)
                                                      + plain_moco_v3(p[2:], k[2:], 0.5)))


@pytest.mark.parametrize("views", [2, 4])
@pytest.mark.parametrize("policy", ["guided", "reverse"])
def test_moco_v3_guided_keeps_the_terms_select_sources_picks(policy, views):
    t = 0.2
    model = tiny("moco-v3", stopgrad=policy, temperature=t)
    perturb_keys(model)
    x, partners, _ = batch(views)
    loss, _ = model(x, partners)
    p, k = moco_v3_embeddings(model, x)
    role_b = slice(2, 4) if views == 4 else slice(0, 2)

    def terms(pv, kv):  # (2, B): row v = CE of query view v against key view 1-v, in-batch negatives
        return torch.stack([F.cross_entropy(F.normalize(pv[v], dim=1) @ F.normalize(kv[1 - v], dim=1).T / t,
                                            torch.arange(B), reduction="none") for v in (0, 1)])
    ta, tb = terms(p[:2], k[:2]), terms(p[role_b], k[role_b])[:, partners]
    src_a, src_b = select_sources(k[:2], k[role_b][:, partners], policy)
    rows = torch.arange(B)
    expected = 4 * t * (0.5 * (ta[src_a, rows] + tb[src_b, rows])).mean()
    torch.testing.assert_close(loss.detach(), expected)
    if policy == "guided":  # the guided sources are the closest cross-pair of keys
        d = torch.cdist(k[:2].transpose(0, 1), k[role_b][:, partners].transpose(0, 1))  # (B, 2, 2)
        closest = d.flatten(1).argmin(1)
        assert torch.equal(src_a, closest // 2) and torch.equal(src_b, closest % 2)


def test_policy_terms_weights_like_pair_loss():
    g = torch.Generator().manual_seed(2)
    ta, tb = torch.rand(2, B, generator=g), torch.rand(2, B, generator=g)
    ka, kb = torch.randn(2, B, 3, generator=g), torch.randn(2, B, 3, generator=g)
    torch.testing.assert_close(policy_terms(ta, tb, ka, kb, "symmetric"), 0.25 * (ta.sum(0) + tb.sum(0)))
    guided = policy_terms(ta, tb, ka, kb, "guided")
    reverse = policy_terms(ta, tb, ka, kb, "reverse")
    torch.testing.assert_close(guided + reverse, 0.5 * (ta.sum(0) + tb.sum(0)))  # complements
    r1 = policy_terms(ta, tb, ka, kb, "random", torch.Generator().manual_seed(7))
    r2 = policy_terms(ta, tb, ka, kb, "random", torch.Generator().manual_seed(7))
    assert torch.equal(r1, r2)
    terms = info_nce_terms(torch.randn(2, B, 3, generator=g), ka, 0.2)
    assert terms.shape == (2, B) and (terms > 0).all()


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("method", ["instdisc", "moco-v2", "moco-v3", "simo"])
def test_state_survives_a_state_dict_round_trip(method):
    model = tiny(method, num_negatives=16)
    for seed in range(2):
        x, partners, indices = batch(seed=seed)
        model(x, partners, None, indices)[0].backward()
        model.update_momentum(0.5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = tiny(method, num_negatives=16, train_subset=None)  # instdisc: an empty bank takes the saved size
    fresh.load_state_dict(torch.load(buf))
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    names = set(saved)
    assert {"instdisc": {"bank"}, "moco-v2": {"queue", "queue_ptr"}}.get(method, set()) <= names
    if method != "instdisc":
        assert any(n.startswith("key_encoder.") for n in names)
    if method == "moco-v2":
        assert fresh.queue_ptr.item() == (2 * 12) % 16


def test_instdisc_bank_of_another_size_is_refused():
    model = tiny("instdisc", train_subset=30)
    with pytest.raises(RuntimeError, match="bank"):
        model.load_state_dict(tiny("instdisc", train_subset=20).state_dict())


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture
def one_thread():
    """One intra-op thread: tiny steps on a shared 2-core machine run ~10x faster than with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["instdisc", "moco-v2", "moco-v3", "simo"])
def test_cli_trains_each_method(tmp_path, name, one_thread):
    from stopgrad.cli import main
    assert main(["train", "--method", name, "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
                 "--width", "4", "--train-subset", "256", "--no-progress", "--knn-k", "20",
                 "--out", str(tmp_path / name)]) == 0


def test_cli_trains_instdisc_on_the_whole_training_set(tmp_path, one_thread):
    from stopgrad.cli import main
    assert main(["train", "--method", "instdisc", "--dataset", "digits", "--epochs", "1", "--batch-size", "256",
                 "--width", "4", "--no-progress", "--knn-k", "20", "--out", str(tmp_path / "instdisc")]) == 0


@pytest.mark.parametrize("method", ["instdisc", "moco-v2"])
def test_resumed_run_repeats_the_uninterrupted_run(tmp_path, method, one_thread):
    """The queue, its pointer and the memory bank travel in the checkpoint: epoch 2 after a resume
    computes the same losses as without one."""
    from stopgrad.data import load_dataset
    from stopgrad.train import train
    data = load_dataset("digits")
    cfg = build_config(overrides={"method": method, "dataset": "digits", "width": 4, "epochs": 2,
                                  "batch_size": 64, "train_subset": 256, "knn_k": 20, "num_negatives": 200})
    whole = train(cfg, tmp_path / "whole", quiet=True, progress=False, data=data)
    train(cfg, tmp_path / "parts", stop_after=1, quiet=True, progress=False, data=data)
    rest = train(cfg, tmp_path / "parts", resume=True, quiet=True, progress=False, data=data)
    keys = ("epoch", "loss", "mi_bound", "knn_top1")
    assert [[r.get(k) for k in keys] for r in rest["metrics"]] == [[r.get(k) for k in keys] for r in whole["metrics"]]
