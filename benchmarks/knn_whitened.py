"""kNN top-1 on whitened features: how much of the kNN accuracy is the geometry of the features.

The library's kNN (cosine, k = 200, T = 0.1) compares L2-normalised features as they come. This
script also PCA-whitens them first, with the mean and covariance of the kNN bank (the training
images; never the test images): every principal direction of the bank gets unit variance, so a few
large, correlated directions no longer decide the neighbours. ``eps`` regularises the small
directions (eigenvalue + eps x the largest). It does the same to the pixels (the same kNN on the
flattened images) and to the run's backbone at random initialisation, so the three can be compared
under one treatment:

    .venv/bin/python benchmarks/knn_whitened.py RUN_DIR [RUN_DIR ...]
    .venv/bin/python benchmarks/knn_whitened.py            # pixels only

docs/recipes.md ("What limits the kNN here") gives its output.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from stopgrad import runs
from stopgrad.backbones import backbone_for
from stopgrad.data import load_dataset
from stopgrad.evaluate.baselines import pixels
from stopgrad.evaluate.features import embed
from stopgrad.evaluate.knn import knn_scores
from stopgrad.evaluate.saved import load_run

EPS = (1e-2, 1e-3)


def whitening(values: torch.Tensor, vectors: torch.Tensor, eps: float) -> torch.Tensor:
    """W of PCA whitening, x -> (x - mean) @ W, from the bank covariance's eigenvalues and eigenvectors;
    the eigenvalues floored at eps x the largest."""
    return (vectors / (values + eps * values.max()).sqrt()).float()


def scores(bank, bank_y, queries, query_y, ks=(200, 1)) -> dict:
    return knn_scores(F.normalize(bank, dim=1), bank_y, F.normalize(queries, dim=1), query_y, ks, 0.1,
                      int(bank_y.max()) + 1)


def rows(name: str, bank, queries, data) -> list[str]:
    out = []
    mean = bank.mean(0)
    for label, b, q in (("as they are", bank, queries), ("mean-centred", bank - mean, queries - mean)):
        s = scores(b, data.train_y, q, data.test_y)
        out.append(f"| {name} | {label} | {s[200]['top1']:.4f} | {s[1]['top1']:.4f} |")
    values, vectors = torch.linalg.eigh(torch.cov((bank - mean).T.double()))  # once for every eps
    for eps in EPS:
        w = whitening(values, vectors, eps)
        s = scores((bank - mean) @ w, data.train_y, (queries - mean) @ w, data.test_y)
        out.append(f"| {name} | PCA-whitened, eps {eps:g} | {s[200]['top1']:.4f} | {s[1]['top1']:.4f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run directories (their backbone.safetensors)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist")
    print("| features | treatment | kNN k = 200 | kNN k = 1 |\n|---|---|---|---|")
    for line in rows("pixels", pixels(data.train_x), pixels(data.test_x), data):
        print(line, flush=True)
    for run_dir in args.runs:
        run = load_run(run_dir, device="cpu")
        cfg = runs.read_config(run_dir)
        torch.manual_seed(cfg.seed)  # the run's initial weights: the same seed builds the same network
        init = backbone_for(cfg, data.channels)
        for name, net in ((f"{run_dir.name}, random init", init), (run_dir.name, run.backbone)):
            bank = embed(net, data.train_x, data.mean, data.std, normalize=False)
            queries = embed(net, data.test_x, data.mean, data.std, normalize=False)
            for line in rows(name, bank, queries, data):
                print(line, flush=True)


if __name__ == "__main__":
    main()
