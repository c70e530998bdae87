"""TP / FN / TN similarity: every method's label statistics, on constructed inputs and in a run."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from stopgrad.config import build_config
from stopgrad.data import load_dataset
from stopgrad.methods import METHODS, build_method
from stopgrad.methods.common import embedding_stats, view_similarities
from stopgrad.train import train


def test_similarities_of_a_constructed_batch():
    # four images, labels 0 0 1 1; view 2 of each image is its view 1 rotated a little
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    z2 = 3.0 * z1  # scale does not matter: cosine similarity
    s = view_similarities(z1, z2, torch.tensor([0, 0, 1, 1]))
    assert s["tp_similarity"].item() == pytest.approx(1.0)
    # same label: (0, 1) and (2, 3) are orthogonal -> 0; different labels: pairs (0, 2) and (1, 3)
    # are opposite (-1), the other four orthogonal (0): mean over 8 ordered pairs = -4 / 8
    assert s["fn_similarity"].item() == pytest.approx(0.0, abs=1e-7)
    assert s["tn_similarity"].item() == pytest.approx(-0.5)


def test_similarities_match_a_loop_over_pairs():
    torch.manual_seed(3)
    z1, z2 = torch.randn(12, 5), torch.randn(12, 5)
    labels = torch.randint(0, 3, (12,))
    s = view_similarities(z1, z2, labels)
    tp, fn, tn = [], [], []
    for i in range(12):
        for j in range(12):
            c = F.cosine_similarity(z1[i], z2[j], dim=0).item()
            (tp if i == j else fn if labels[i] == labels[j] else tn).append(c)
    for key, ref in (("tp_similarity", tp), ("fn_similarity", fn), ("tn_similarity", tn)):
        assert s[key].item() == pytest.approx(sum(ref) / len(ref), abs=1e-6)


def test_a_batch_without_same_label_pairs_has_no_fn_similarity():
    s = view_similarities(torch.randn(4, 3), torch.randn(4, 3), torch.arange(4))
    assert math.isnan(s["fn_similarity"].item()) and not math.isnan(s["tn_similarity"].item())


def test_embedding_stats_read_views_one_and_two_of_a_view_major_batch():
    torch.manual_seed(0)
    z = torch.randn(4 * 6, 8)  # four views of six images, view-major
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    stats = embedding_stats(z, labels)
    assert stats["tp_similarity"] == view_similarities(z[:6], z[6:12], labels)["tp_similarity"]
    assert set(embedding_stats(z)) == {"collapse_std"}  # no labels, no label statistics


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reports_label_statistics(method):
    cfg = build_config(overrides={"method": method, "width": 4, "batch_size": 8, "num_negatives": 4,
                                  "train_subset": 64, "fnc_top_k": 2, "triplet_rank": 2})
    model = build_method(cfg, in_channels=1)
    if hasattr(model, "set_num_images"):
        model.set_num_images(64)
    views = torch.rand(2, 8, 1, 16, 16)
    partners = torch.roll(torch.arange(8), 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    _, stats = model(views, partners, torch.Generator().manual_seed(0), torch.arange(8), labels)
    for key in ("tp_similarity", "fn_similarity", "tn_similarity"):
        assert -1.0 <= stats[key].item() <= 1.0, (key, stats[key])
    _, stats = model(views, partners, torch.Generator().manual_seed(0), torch.arange(8))
    assert "fn_similarity" not in stats


def test_the_training_loop_logs_them_per_epoch(tmp_path):
    cfg = build_config(overrides={"dataset": "digits", "width": 4, "epochs": 1, "batch_size": 64, "knn_k": 20})
    result = train(cfg, tmp_path / "run", quiet=True, progress=False, data=load_dataset("digits"))
    row = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert row == result["metrics"][-1]
    assert 0 < row["tp_similarity"] <= 1 and -1 <= row["fn_similarity"] <= 1 and -1 <= row["tn_similarity"] <= 1
