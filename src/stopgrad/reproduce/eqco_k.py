"""EqCo's claim on real images: with the equivalent rule, accuracy no longer depends on K.

For each method (SiMo: K negatives per query sampled from the batch; MoCo v2: a queue of K keys)
and each K, the same training run is done with the EqCo margin m = T log(alpha / K) and without
it, and the backbone is evaluated by weighted kNN on the test set. EqCo's claim (its Tables 2-3
on ImageNet) is that with the rule the result stays flat as K shrinks, and without it drops. At
K = alpha the margin is 0, so the two runs are the same run.

Every run is the library's own training loop with the settings of the budget, trained in worker
processes by :func:`stopgrad.reproduce.training.run_configurations` (one folder per run under
``OUT/runs/``; running the command again continues an interrupted experiment). Per seed every run
starts from the same weights and sees the same batches, so the differences between K and between
EqCo and InfoNCE are paired: the table gives them with their standard errors over seeds.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import Report, format_mean_std, format_paired, markdown_table
from .gsg import EARLIER_RECIPE, device_note
from .shootout import METHOD_RECIPES
from .shootout_recipes import DEFAULT_LR
from .training import pixel_rows, run_configurations, values

TITLE = "Accuracy vs the number of negatives K, with and without EqCo (SiMo and MoCo v2 on Fashion-MNIST)"
PAPER = "Zhu et al., EqCo: Equivalent Rules for Self-supervised Contrastive Learning, Figures 3-4"
DEFAULT_SEEDS = 3
ALPHA = 256  # the paper's alpha for SiMo
KS = (4, 16, 64, 256)

# settings of every run; the rest is the earlier default recipe (small-cnn width 16, small heads, cosine lr).
# Batch 512 so that K = 256 in-batch negatives exist (SiMo caps K at B - 1).
SETTINGS = {
    "smoke": dict(dataset="digits", methods=("simo",), ks=(4, 16), epochs=1, batch_size=64, lr=0.2, width=4,
                  knn_k=20, backbone=EARLIER_RECIPE["backbone"]),
    "cpu": dict(dataset="fashion-mnist", methods=("simo", "moco-v2"), ks=KS, epochs=2, batch_size=512, lr=0.4,
                width=16, knn_k=200, backbone=EARLIER_RECIPE["backbone"]),
    "gpu": dict(dataset="cifar10", methods=("simo", "moco-v2"), ks=KS, epochs=200, batch_size=512, lr=0.06,
                width=16, knn_k=200, backbone="resnet18-cifar", heads="cifar", augment="cifar"),
}
# each method's CPU recipe (the shootout's METHOD_RECIPES; MoCo v2: half the common lr), its lr scaled to this batch
METHOD_OVERRIDES = {"cpu": {m: {"lr": round(SETTINGS["cpu"]["lr"] * METHOD_RECIPES["cpu"][m]["lr"] / DEFAULT_LR, 6)}
                            for m in ("moco-v2",)}}
BUDGETS = {
    "smoke": "SiMo on scikit-learn digits, K in {4, 16}, one epoch at width 4: a pipeline check, not a result",
    "cpu": "SiMo and MoCo v2 on all 60,000 Fashion-MNIST images, K in {4, 16, 64, 256}, two epochs, batch 512 "
           "(lr 0.4: the default 0.2 scaled with the square root of the batch; MoCo v2 0.2, its CPU recipe), "
           "small CNN width 16; about 30 minutes for 3 seeds on 2 cores",
    "gpu": "SiMo and MoCo v2 on CIFAR-10 with the CIFAR ResNet-18, 200 epochs, batch 512, lr 0.06, "
           "K in {4, 16, 64, 256} (needs the CIFAR-10 files)",
}
_RUN_KEYS = ("dataset", "epochs", "batch_size", "lr", "width", "knn_k", "backbone", "heads", "augment")


def _name(method: str, k: int, eqco: bool) -> str:
    return f"{method}-k{k}-{'eqco' if eqco else 'infonce'}"


def configurations(budget: str) -> list[dict]:
    """The distinct training configurations of ``budget`` (EqCo at K = alpha is the InfoNCE run)."""
    s = SETTINGS[budget]
    out = []
    for method in s["methods"]:
        for k in s["ks"]:
            for eqco in (False, True):
                if eqco and k == ALPHA:
                    continue
                overrides = {**{key: s[key] for key in _RUN_KEYS if key in s}, "method": method,
                             "num_negatives": k, "eqco_alpha": ALPHA if eqco else 0, "eval_every": s["epochs"],
                             **METHOD_OVERRIDES.get(budget, {}).get(method, {})}
                out.append({"name": _name(method, k, eqco), "method": method, "k": k, "eqco": eqco,
                            "overrides": overrides})
    return out


def run(budget: str, seeds: list[int], out_dir: Path, log) -> Report:
    from ..config import build_config
    from ..runs import read_metrics

    s = SETTINGS[budget]
    trained = run_configurations(configurations(budget), seeds, out_dir, budget, log,
                                 "cuda" if budget == "gpu" else "cpu")
    for c in trained:  # the loss's own figures at the last epoch
        for r in c["runs"]:
            last = read_metrics(Path(r["run_dir"]))[-1]
            r.update({key: last.get(key) for key in ("mi_bound", "margin", "loss", "collapse_std")})
    by = {(c["method"], c["k"], c["eqco"]): c for c in trained}
    configs = []
    for method in s["methods"]:
        for k in s["ks"]:
            for eqco in (False, True):
                c = by[(method, k, eqco and k != ALPHA)]
                temperature = build_config(None, c["overrides"]).temperature
                configs.append({**c, "eqco": eqco, "alpha": ALPHA if eqco else None,
                                "margin": temperature * math.log(ALPHA / k) if eqco else 0.0,
                                "knn_top1": values(c, "knn_top1")})
    settings = dict(s, alpha=ALPHA, method_overrides=METHOD_OVERRIDES.get(budget, {}))
    return Report(configurations=configs, table=_table(configs, s, seeds), settings=settings,
                  device=device_note(budget), figures=[_plot(configs, s, out_dir)], notes=_notes(s))


def _table(configs: list[dict], s: dict, seeds: list[int]) -> str:
    by = {(c["method"], c["k"], c["eqco"]): c for c in configs}
    ks = s["ks"]
    rows, diffs = [], []
    for method in s["methods"]:
        for eqco in (False, True):
            label = f"{method}, {'EqCo (α = %d)' % ALPHA if eqco else 'InfoNCE'}"
            rows.append([label] + [format_mean_std([100 * v for v in by[(method, k, eqco)]["knn_top1"]])
                                   for k in ks])
            rows[-1].append(format_paired(by[(method, ks[0], eqco)]["knn_top1"], by[(method, ks[-1], eqco)]["knn_top1"],
                                         100))
        diffs.append([f"{method}, EqCo − InfoNCE"] + [
            "+0.00 (same run)" if k == ALPHA else
            format_paired(by[(method, k, True)]["knn_top1"], by[(method, k, False)]["knn_top1"], 100) for k in ks])
    first = configs[0]
    # the baselines do not depend on K: one number each, in the first column
    rows.append(["random init (same backbone)", format_mean_std(values(first, "init.knn_top1", 100))]
                + ["–"] * len(ks))
    rows += pixel_rows(first, {"1": "knn_top1"}, len(ks) + 2)
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    head = markdown_table(["kNN top-1 (%)"] + [f"K = {k}" for k in ks] + [f"K = {ks[0]} − K = {ks[-1]} (paired)"],
                          rows)
    paired = markdown_table(["paired difference (points)"] + [f"K = {k}" for k in ks], diffs)
    return (f"{head}\n\nkNN top-1 on the test set after training (k = {first['overrides'].get('knn_k', 200)}), "
            f"{spread}. The last column and the table below are paired differences (same seed: same initial "
            f"weights and batches), mean ± their standard error.\n\n{paired}")


def _notes(s: dict) -> list[str]:
    return ["The paper's claim: with EqCo the accuracy stays flat as K shrinks (its Figures 3-4, ImageNet, "
            "200 epochs); without it, accuracy drops for small K. At K = α the margin is zero and the two rows "
            "share one run.",
            "The number of negatives acts through the loss only: SiMo samples K of the batch's other images per "
            "query, MoCo v2 keeps a queue of K keys."]


def _plot(configurations: list[dict], s: dict, out_dir: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in s["methods"]:
        for eqco, style in ((False, "--"), (True, "-")):
            cs = [c for c in configurations if c["method"] == method and c["eqco"] == eqco]
            ax.plot([c["k"] for c in cs], [100 * sum(c["knn_top1"]) / len(c["knn_top1"]) for c in cs], style,
                    marker="o", label=f"{method} {'EqCo' if eqco else 'InfoNCE'}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("negatives per query K")
    ax.set_ylabel("kNN top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = "knn_vs_k.png"
    fig.savefig(out_dir / name, dpi=120)
    plt.close(fig)
    return name
