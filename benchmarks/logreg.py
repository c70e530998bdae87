"""stopgrad's L-BFGS logistic regression vs scikit-learn's on the same features.

The linear probe and the transfer protocol fit multinomial logistic regression on frozen
features with scikit-learn's objective (C = 1/wd). This script fits both solvers on the same
Fashion-MNIST features (a trained run's backbone with --run DIR, else a randomly initialised
small CNN whose BatchNorm statistics are estimated on the training images) and prints, per
weight decay: seconds, the objective reached (lower is better; both minimise the same
function), and test accuracy.

    python benchmarks/logreg.py [--run DIR] [--wd 1 100] [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def features(run: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from stopgrad.backbones import build_backbone
    from stopgrad.data import load_dataset
    from stopgrad.data.augment import prepare
    from stopgrad.evaluate.features import embed

    if run:
        from stopgrad.evaluate.saved import load_run
        r = load_run(Path(run), "cpu")
        net, d = r.backbone, r.data
    else:
        d = load_dataset("fashion-mnist")
        torch.manual_seed(0)
        net = build_backbone("small-cnn", 1, 16)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batches below
        net.train()
        with torch.no_grad():
            for chunk in d.train_x[:10000].split(500):
                net(prepare(chunk, d.mean, d.std))
    f_train = embed(net, d.train_x, d.mean, d.std, normalize=False)
    f_test = embed(net, d.test_x, d.mean, d.std, normalize=False)
    return f_train, d.train_y, f_test, d.test_y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run directory whose backbone gives the features")
    parser.add_argument("--wd", type=float, nargs="+", default=[1.0, 100.0])
    parser.add_argument("--threads", type=int, help="CPU threads for both solvers")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sklearn.linear_model import LogisticRegression

    from stopgrad.evaluate.logreg import LinearClassifier, fit_logistic, objective, standardizer

    f_train, y_train, f_test, y_test = features(args.run)
    shift, scale = standardizer(f_train)  # both solvers see the same standardised features
    x, xt = (f_train - shift) / scale, (f_test - shift) / scale
    x_np, y_np = x.numpy().astype(np.float64), y_train.numpy()
    print(f"features: {tuple(x.shape)} train, {tuple(xt.shape)} test, {torch.get_num_threads()} threads")
    print("| wd | solver | seconds | iterations | objective | test top-1 |")
    print("|---|---|---|---|---|---|")
    rows = []
    for wd in args.wd:
        t0 = time.perf_counter()
        sk = LogisticRegression(C=1.0 / wd, max_iter=args.max_iter).fit(x_np, y_np)
        sk_s = time.perf_counter() - t0
        sk_clf = LinearClassifier(torch.from_numpy(sk.coef_).float(), torch.from_numpy(sk.intercept_).float())
        t0 = time.perf_counter()
        ours = fit_logistic(x, y_train, 10, wd, args.max_iter)
        ours_s = time.perf_counter() - t0
        for name, clf, seconds, iters in (("scikit-learn lbfgs", sk_clf, sk_s, int(sk.n_iter_[0])),
                                          ("stopgrad L-BFGS", ours, ours_s, ours.iterations)):
            acc = (clf.predict(xt) == y_test).float().mean().item()
            obj = objective(clf, x, y_train, wd)
            rows.append({"wd": wd, "solver": name, "seconds": round(seconds, 2), "iterations": iters,
                         "objective": obj, "top1": acc})
            print(f"| {wd:g} | {name} | {seconds:.2f} | {iters} | {obj:.6f} | {100 * acc:.2f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
