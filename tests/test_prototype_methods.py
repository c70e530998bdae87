"""barlow-twins, vicreg, twist and spcl: one step of each, what each feeds its loss, their heads and
config keys; SPCL's clustering, prototype batches, epoch hook and resumable state; CLI runs."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stopgrad.cli import make_parser
from stopgrad.config import ConfigError, build_config
from stopgrad.data import RECIPES
from stopgrad.gsg import derangement
from stopgrad.losses import barlow_twins, nt_xent, siamese_metric, symmetric_ce, twist, vicreg
from stopgrad.methods import METHODS, build_method
from stopgrad.methods.spcl import kmeans, match_to_previous, prototype_batches
from stopgrad.epochs import EpochContext, make_views

NAMES = ("barlow-twins", "vicreg", "twist", "spcl")
B, N = 8, 24  # batch, training images of the SPCL tests


def tiny(method, **overrides):
    cfg = build_config(overrides={"method": method, "width": 4, "batch_size": B, **overrides})
    model = build_method(cfg, in_channels=1)
    if hasattr(model, "set_num_images"):
        model.set_num_images(N)
    return model


def images(n=N, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def context(imgs, labels, steps=3, seed=0, epoch=1, batch=B):
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    view = lambda x: make_views(x, 1, RECIPES["fashion-mnist"], (0.5,), (0.5,), None, g)[0]  # noqa: E731
    return EpochContext(epoch, seed, imgs, labels, batch, steps, g, torch.device("cpu"), False, None, view)


def clustered(model, seed=0):
    """Run SPCL's epoch hook on N random images; returns (views, indices) of the epoch's first batch."""
    imgs, labels = images(), torch.arange(N) % 3
    order, _ = model.begin_epoch(context(imgs, labels, seed=seed), torch.randperm(N))
    idx = order[:B]
    g = torch.Generator().manual_seed(1)
    return make_views(imgs[idx], 2, RECIPES["fashion-mnist"], (0.5,), (0.5,), None, g), idx


def step_inputs(model, views=2):
    if hasattr(model, "begin_epoch"):
        x, idx = clustered(model)
    else:
        x, idx = torch.randn(2, B, 1, 8, 8), torch.arange(B)
    if views == 4:
        x = torch.cat((x, x))
    return x, derangement(B, torch.Generator().manual_seed(0)), idx


def test_registered():
    assert set(NAMES) <= set(METHODS)


@pytest.mark.parametrize("method,weights", [(m, None) for m in NAMES] + [
    ("spcl", w) for w in ((1, 1, 0), (1, 0, 1), (0, 1, 1), (0, 0, 1), (0.1, 1, 1))])
def test_one_training_step(method, weights):
    model = tiny(method, **({"spcl_weights": weights} if weights else {}))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    x, partners, idx = step_inputs(model)
    loss, stats = model(x, partners, torch.Generator().manual_seed(0), idx)
    assert loss.shape == () and torch.isfinite(loss)
    assert all(v.shape == () and torch.isfinite(v) for v in stats.values()), stats
    assert 0 < stats["collapse_std"].item() <= 1
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in trainable)  # no parameter without a gradient (DDP-safe)
    opt.step()
    model.update_momentum(0.99)  # a no-op, part of the interface
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))


@pytest.mark.parametrize("method", NAMES)
def test_four_views_is_a_clear_error(method):
    with pytest.raises(ConfigError, match="two views.*drop --views 4"):
        tiny(method, views=4)


@pytest.mark.parametrize("method", NAMES)
def test_loss_is_float32_under_bfloat16_autocast(method):
    model = tiny(method)
    x, partners, idx = step_inputs(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(x, partners, None, idx)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("method,loss_fn", [
    ("barlow-twins", lambda z1, z2: barlow_twins(z1, z2, 0.01)),
    ("vicreg", lambda z1, z2: vicreg(z1, z2, 2.0, 3.0, 0.5)),
    ("twist", twist)])
def test_loss_is_the_public_function_of_the_projections_of_views_0_and_1(method, loss_fn):
    model = tiny(method, bt_lambda=0.01, vicreg_weights=(2.0, 3.0, 0.5))
    x, partners, idx = step_inputs(model)
    loss, stats = model(x, partners, None, idx, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    z = model.projector(model.backbone(x[:2].flatten(0, 1)))  # train mode: the same batch statistics
    torch.testing.assert_close(loss, loss_fn(z[:B], z[B:]))
    assert {"tp_similarity", "fn_similarity", "tn_similarity"} <= set(stats)


def test_vicreg_and_twist_report_their_terms():
    model = tiny("vicreg")
    _, stats = model(*step_inputs(model))
    assert {"invariance", "variance", "covariance"} <= set(stats)
    model = tiny("twist", twist_classes=16)
    _, stats = model(*step_inputs(model))
    assert 0 <= stats["sharpness"].item() <= math.log(16) + 1e-5 and 0 <= stats["diversity"].item() <= math.log(16)


def test_heads():
    from stopgrad.heads import expander_sizes
    linear = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.Linear)]  # noqa: E731
    for method in ("barlow-twins", "vicreg"):
        small = linear(tiny(method).projector)
        assert [layer.out_features for layer in small] == [512, 512, 512] and small[-1].bias is None
        assert not isinstance(tiny(method).projector[-1], torch.nn.BatchNorm1d)  # plain last layer
        assert expander_sizes(method) == [8192, 8192, 8192]  # --heads barlow-twins / vicreg: the papers'
        assert [layer.out_features for layer in linear(tiny(method, heads="cifar").projector)] == [2048, 2048]
    head = tiny("twist", twist_classes=32).projector
    assert [layer.out_features for layer in linear(head)] == [512, 512, 32]
    assert isinstance(head[-1], torch.nn.BatchNorm1d) and not head[-1].affine
    spcl = tiny("spcl", spcl_prototypes=7)
    assert spcl.prototype_head.out_features == 7 and spcl.metric_head.out_features == 1


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("overrides,message", [
    ({"twist_classes": 1}, "twist_classes must be a whole number >= 2"),
    ({"spcl_prototypes": 1}, "spcl_prototypes must be a whole number >= 2"),
    ({"spcl_anchor_fraction": 0.0}, r"spcl_anchor_fraction must be in \(0, 1\)"),
    ({"spcl_anchor_fraction": 1.0}, r"spcl_anchor_fraction must be in \(0, 1\)"),
    ({"spcl_weights": (0, 0, 0)}, "spcl_weights are all 0"),
    ({"spcl_weights": (1, 1)}, r"spcl_weights must be 3 numbers >= 0 \(contrastive, metric, prototype\)"),
    ({"spcl_weights": (1, -1, 1)}, "spcl_weights must be 3 numbers >= 0"),
    ({"vicreg_weights": (25, float("nan"), 1)}, "vicreg_weights must be 3 numbers >= 0"),
    ({"spcl_symmetric_ce": (0.1,)}, r"spcl_symmetric_ce must be 2 numbers >= 0 \(alpha, beta\)"),
    ({"spcl_targets": "gt"}, "invalid spcl_targets 'gt'; choose one of kmeans, labels"),
    ({"bt_lambda": -1.0}, "bt_lambda must be >= 0"),
])
def test_bad_values_are_one_line_errors_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_lists_from_yaml_become_tuples_and_are_written_back_as_lists(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: spcl\nspcl_weights: [1, 0.1, 1]\nspcl_symmetric_ce: [0.1, 1.0]\n")
    cfg = build_config(str(preset))
    assert cfg.spcl_weights == (1, 0.1, 1) and cfg.spcl_symmetric_ce == (0.1, 1.0)
    assert cfg.to_dict()["spcl_weights"] == [1, 0.1, 1]


def test_vicreg_defaults_to_its_papers_optimiser():
    cfg = build_config(overrides={"method": "vicreg"})  # LARS, base lr 0.2 x batch / 256, weight decay 1e-6
    assert (cfg.optimizer, cfg.lr, cfg.lr_scaling, cfg.weight_decay) == ("lars", 0.2, "linear", 1e-6)
    assert build_config(overrides={"method": "vicreg", "lr": 0.3}).lr == 0.3
    sgd = build_config(overrides={"method": "vicreg", "optimizer": "sgd"})  # plain SGD diverges at 0.2
    assert (sgd.lr, sgd.lr_scaling, sgd.weight_decay) == (0.05, "none", 5e-4)
    other = build_config(overrides={"method": "barlow-twins"})
    assert (other.optimizer, other.lr, other.lr_scaling) == ("sgd", 0.2, "none")


def test_cli_flags(run_cli):
    args = make_parser().parse_args(["train", "--spcl-weights", "1,1,0.1", "--vicreg-weights", "25,25,1",
                                     "--spcl-symmetric-ce", "0.1,1", "--spcl-targets", "labels"])
    assert args.spcl_weights == (1.0, 1.0, 0.1) and args.vicreg_weights == (25.0, 25.0, 1.0)
    assert args.spcl_symmetric_ce == (0.1, 1.0) and args.spcl_targets == "labels"
    code, _, err = run_cli("train", "--spcl-weights", "1,1")
    assert code == 2 and "expected 3 comma-separated numbers, got '1,1'" in err and len(err.splitlines()) == 1
    code, _, err = run_cli("train", "--method", "spcl", "--spcl-anchor-fraction", "1.5", "--dataset", "digits")
    assert code == 2 and "spcl_anchor_fraction must be in (0, 1)" in err


def test_spcl_anchor_share_must_fit_the_batch():
    with pytest.raises(ConfigError, match="spcl_anchor_fraction 0.1 takes 1 of a batch of 8"):
        tiny("spcl", spcl_anchor_fraction=0.1)


def test_spcl_needs_fewer_prototypes_than_images():
    model = build_method(build_config(overrides={"method": "spcl", "width": 4, "spcl_prototypes": 30}), 1)
    with pytest.raises(ConfigError, match="spcl_prototypes 30 must be below the 24 training images"):
        model.set_num_images(24)


# ------------------------------------------------------------------ SPCL: clustering and batches
def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    truth = np.repeat(np.arange(4), 50)
    x = (centres[truth] + rng.normal(size=(200, 16))).astype(np.float32)
    a = kmeans(x, 4, seed=3)
    from sklearn.metrics import adjusted_rand_score
    assert a.shape == (200,) and a.dtype == np.int64 and adjusted_rand_score(truth, a) == 1.0
    assert np.array_equal(a, kmeans(x, 4, seed=3))


def test_matching_restores_the_previous_ids():
    old = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    renamed = torch.tensor([2, 2, 0, 0, 1, 1, 1])  # the same clusters under other ids
    new, agreement = match_to_previous(renamed, old, 3)
    assert new.tolist() == old.tolist() and agreement == 1.0
    moved = torch.tensor([2, 2, 0, 0, 1, 1, 0])  # one image changed cluster
    new, agreement = match_to_previous(moved, old, 3)
    assert new.tolist() == [0, 0, 1, 1, 2, 2, 1] and agreement == pytest.approx(6 / 7)
    first, agreement = match_to_previous(renamed, torch.full((7,), -1), 3)
    assert first is renamed and agreement is None  # nothing to match at the first epoch


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_prototype_batches(fraction):
    labels = torch.tensor([0] * 40 + [1] * 30 + [2] * 20 + [3] * 1 + [4] * 3)  # 4 is smaller than the share
    steps, batch = 200, 16
    order = prototype_batches(labels, 6, steps, batch, fraction, torch.Generator().manual_seed(0))
    assert order.shape == (steps * batch,) and order.dtype == torch.long
    want = round(fraction * batch)
    anchors = []
    for b in order.view(steps, batch):
        lab = labels[b]
        count = int((lab == lab[0]).sum())
        assert len(set(b.tolist())) == batch  # no image twice in a batch
        assert (lab[:count] == lab[0]).all() and (lab[count:] != lab[0]).all()  # anchor images first, then fill
        assert count == min(want, int((labels == lab[0]).sum()))
        anchors.append(int(lab[0]))
    counts = np.bincount(anchors, minlength=6)
    assert counts[3] == 0 and counts[5] == 0  # a singleton and an empty prototype are never anchors
    assert counts[0] > counts[1] > counts[2] > counts[4] > 0  # in proportion to size
    again = prototype_batches(labels, 6, steps, batch, fraction, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_prototype_batches_with_a_single_prototype_still_fill_the_batches():
    order = prototype_batches(torch.zeros(20, dtype=torch.long), 3, 4, 8, 0.25, torch.Generator().manual_seed(0))
    assert order.shape == (32,) and order.min() >= 0 and order.max() < 20


def test_epoch_context_batches_cover_the_training_set_in_order():
    imgs = images(10)
    ctx = context(imgs, torch.zeros(10, dtype=torch.long))
    batches = list(ctx.batches(4))
    assert [len(b) for b in batches] == [4, 4, 2] and torch.equal(torch.cat(batches), imgs)


def test_begin_epoch_clusters_and_returns_the_epochs_order():
    model = tiny("spcl", spcl_prototypes=3)
    model.train()
    assert (model.pseudo_labels == -1).all()
    order, stats = model.begin_epoch(context(images(), torch.arange(N) % 3, steps=5), torch.randperm(N))
    assert model.training and order.shape == (5 * B,) and 0 <= order.min() and order.max() < N
    assert set(stats) == {"embed_seconds", "cluster_seconds", "cluster_nmi", "num_prototypes"}
    assert all(isinstance(v, float) for v in stats.values()) and stats["num_prototypes"] <= 3
    assert model.pseudo_labels.min() >= 0 and model.pseudo_labels.max() < 3
    assert all(p.grad is None for p in model.parameters())  # embedding passes are no-grad
    # the next epoch matches its clusters to these
    _, stats = model.begin_epoch(context(images(), torch.arange(N) % 3, steps=5, epoch=2), torch.randperm(N))
    assert 0 <= stats["cluster_agreement"] <= 1


def test_begin_epoch_is_deterministic():
    a, b = tiny("spcl"), tiny("spcl")
    b.load_state_dict(a.state_dict())
    order_a, _ = a.begin_epoch(context(images(), torch.arange(N) % 3), torch.randperm(N))
    order_b, _ = b.begin_epoch(context(images(), torch.arange(N) % 3), torch.randperm(N))
    assert torch.equal(order_a, order_b) and torch.equal(a.pseudo_labels, b.pseudo_labels)


def test_ground_truth_targets_are_the_labels():
    model = tiny("spcl", spcl_targets="labels", spcl_prototypes=4)
    labels = torch.arange(N) % 4
    _, stats = model.begin_epoch(context(images(), labels), torch.randperm(N))
    assert torch.equal(model.pseudo_labels, labels) and stats["cluster_seconds"] == 0.0
    with pytest.raises(ConfigError, match="the 5 classes are the prototypes; set --spcl-prototypes 5"):
        model.begin_epoch(context(images(), torch.arange(N) % 5), torch.randperm(N))


# ------------------------------------------------------------------ SPCL: the step
def representations(model, x):
    return model.backbone(x[:2].flatten(0, 1))  # (2B, F) in train mode: the forward's batch statistics


def test_contrastive_term_alone_is_nt_xent_of_the_projections():
    model = tiny("spcl", spcl_weights=(1, 0, 0), temperature=0.3)
    assert model.metric_head is None and model.prototype_head is None
    x, partners, idx = step_inputs(model)
    loss, stats = model(x, partners, None, idx)
    z = model.projector(representations(model, x))
    torch.testing.assert_close(loss, nt_xent(z[:B], z[B:], 0.3))
    assert set(stats) == {"collapse_std", "contrastive_loss"}


@pytest.mark.parametrize("sce", [None, (0.1, 1.0)])
def test_prototype_term_is_the_cross_entropy_of_both_views_on_the_pseudo_labels(sce):
    model = tiny("spcl", spcl_weights=(0, 0, 1), spcl_symmetric_ce=sce)
    x, partners, idx = step_inputs(model)
    loss, _ = model(x, partners, None, idx)
    logits = model.prototype_head(representations(model, x))
    target = model.pseudo_labels[idx].repeat(2)
    want = F.cross_entropy(logits, target) if sce is None else symmetric_ce(logits, target, *sce)
    torch.testing.assert_close(loss, want)
    assert not any(p.requires_grad for p in model.projector.parameters())  # λ_c = 0: frozen, statistics only


def test_metric_term_pairs_anchor_images_with_a_same_prototype_positive_and_an_other_prototype_negative():
    model = tiny("spcl", spcl_weights=(0, 1, 0))
    x = torch.randn(2, 4, 1, 8, 8)
    model.pseudo_labels[:4] = torch.tensor([5, 5, 1, -1])  # anchors 0, 1; 2 the only known negative
    loss, _ = model(x, None, None, torch.arange(4))
    u = F.normalize(representations(model, x), dim=1)
    u1, u2 = u[:4], u[4:]
    want = siamese_metric(torch.stack((u1[0], u1[1], u2[0], u2[1])), torch.stack((u2[1], u2[0], u1[1], u1[0])),
                          torch.stack((u2[2], u2[2], u1[2], u1[2])), model.metric_head)
    torch.testing.assert_close(loss, want)


def test_before_the_first_clustering_only_the_contrastive_term_acts():
    model = tiny("spcl")  # pseudo-labels all -1
    x = torch.randn(2, B, 1, 8, 8)
    loss, stats = model(x, None, None, torch.arange(B))
    assert stats["metric_loss"].item() == 0 and stats["prototype_loss"].item() == 0
    torch.testing.assert_close(loss, stats["contrastive_loss"])


def test_spcl_needs_the_indices():
    model = tiny("spcl")
    with pytest.raises(ValueError, match="pass indices"):
        model(torch.randn(2, B, 1, 8, 8), None)


def test_pseudo_labels_are_saved_and_restored():
    model = tiny("spcl")
    clustered(model)
    state = model.state_dict()
    assert torch.equal(state["pseudo_labels"], model.pseudo_labels) and (state["pseudo_labels"] >= 0).all()
    sized = tiny("spcl")
    sized.load_state_dict(state)
    unsized = build_method(build_config(overrides={"method": "spcl", "width": 4, "batch_size": B}), 1)
    unsized.load_state_dict(state)  # an unsized model takes the checkpoint's size
    assert torch.equal(sized.pseudo_labels, model.pseudo_labels) and torch.equal(unsized.pseudo_labels,
                                                                                 model.pseudo_labels)


# ------------------------------------------------------------------ the training loop and the CLI
@pytest.mark.parametrize("method", NAMES)
def test_cli_train_runs(method, tmp_path, run_cli):
    code, _, err = run_cli("train", "--method", method, "--dataset", "digits", "--epochs", "1", "--batch-size",
                           "64", "--width", "4", "--train-subset", "256", "--no-progress", "--knn-k", "20",
                           "--threads", "1", "--out", str(tmp_path / method))
    assert code == 0, err
    row = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["epoch"] == 1 and math.isfinite(row["loss"]) and -1 <= row["fn_similarity"] <= 1
    extra = {"spcl": ("cluster_seconds", "embed_seconds", "num_prototypes", "cluster_nmi", "metric_loss"),
             "vicreg": ("invariance", "variance", "covariance"), "twist": ("sharpness", "diversity"),
             "barlow-twins": ()}[method]
    assert all(key in row for key in extra)


@pytest.mark.parametrize("targets", ["kmeans", "labels"])
def test_spcl_resumed_run_repeats_the_uninterrupted_run(tmp_path, targets):
    from safetensors.torch import load_file

    from stopgrad.data import load_dataset
    from stopgrad.train import train
    digits = load_dataset("digits")
    cfg = build_config(overrides={"method": "spcl", "dataset": "digits", "width": 4, "epochs": 3, "batch_size": 64,
                                  "train_subset": 512, "knn_k": 20, "spcl_targets": targets, "threads": 1})
    whole = train(cfg, tmp_path / "whole", quiet=True, progress=False, data=digits)
    train(cfg, tmp_path / "parts", stop_after=1, quiet=True, progress=False, data=digits)
    rest = train(cfg, tmp_path / "parts", resume=True, quiet=True, progress=False, data=digits)
    assert rest["finished"]
    keys = ("epoch", "loss", "knn_top1", "tp_similarity", "fn_similarity", "metric_loss", "prototype_loss",
            "cluster_nmi", "cluster_agreement", "num_prototypes")
    rows = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [[r.get(k) for k in keys] for r in rows] == [[r.get(k) for k in keys] for r in whole["metrics"]]
    a = load_file(str(tmp_path / "whole" / "backbone.safetensors"))
    b = load_file(str(tmp_path / "parts" / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
