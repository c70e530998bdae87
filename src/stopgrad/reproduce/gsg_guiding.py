"""GSG Figure 4, "importance of guiding": where the stop-gradient goes matters.

SimSiam and BYOL, each with the four stop-gradient policies of :mod:`stopgrad.gsg`: symmetric
(the baseline), guided (GSG), random (one of the four cases per pair) and reverse (the complement
of guided, the worst case by GSG's argument). kNN top-1 on the test set after every epoch, mean
± std over seeds. The paper's claims: guided is best throughout; random is about the baseline;
reverse is clearly worse (and SimSiam with reverse collapses on CIFAR-10).
"""
from __future__ import annotations

from pathlib import Path

from . import Report, markdown_table
from .gsg import PAPER as GSG_PAPER, configuration, device_note, label
from .training import cell, collapse_status, curve, plot_curves, run_configurations

TITLE = "Importance of guiding: symmetric, guided, random and reverse stop-gradient, kNN per epoch"
PAPER = GSG_PAPER + ", Figure 4 (§6.1)"
DEFAULT_SEEDS = 3
POLICIES = ("symmetric", "guided", "random", "reverse")
EPOCHS = {"smoke": 2, "cpu": 5, "gpu": 200}
BUDGETS = {
    "smoke": "digits, width-4 small CNN, 2 epochs, four views: a pipeline check, not a result",
    "cpu": "Fashion-MNIST, the earlier default recipe (small-cnn) with four views, 5 epochs, kNN after every epoch; "
           "~1 h for 3 seeds on 2 idle cores",
    "gpu": "CIFAR-10, the paper's recipe (CIFAR ResNet-18, batch 512, 200 epochs, lr 0.06, four views), "
           "kNN every 10 epochs",
}
STYLE = {"symmetric": {"color": "black"}, "guided": {"color": "tab:red"}, "random": {"color": "tab:blue"},
         "reverse": {"color": "tab:gray", "linestyle": "--"}}


def configurations(budget: str) -> list[dict]:
    every = 10 if budget == "gpu" else 1
    return [configuration(budget, method, {"stopgrad": policy, "epochs": EPOCHS[budget], "eval_every": every},
                          name=f"{method}-{policy}", stopgrad=policy)
            for method in ("simsiam", "byol") for policy in POLICIES]


def run(budget: str, seeds: list[int], out_dir: Path, log) -> Report:
    configs = run_configurations(configurations(budget), seeds, out_dir, budget, log,
                                 "cuda" if budget == "gpu" else "cpu")
    panels = [(label(m), [c for c in configs if c["method"] == m]) for m in ("simsiam", "byol")]
    figures = [plot_curves(panels, "knn_top1", "kNN top-1 (%), k = knn_k", out_dir / "knn_per_epoch.png",
                           label=lambda c: c["stopgrad"], style=lambda c: STYLE[c["stopgrad"]]),
               plot_curves(panels, "knn1_top1", "kNN top-1 (%), k = 1", out_dir / "knn1_per_epoch.png",
                           label=lambda c: c["stopgrad"], style=lambda c: STYLE[c["stopgrad"]])]
    return Report(configurations=configs, table=_table(configs, seeds), device=device_note(budget),
                  settings={"epochs": EPOCHS[budget],
                            "configurations": {c["name"]: {"preset": c["preset"], **c["overrides"]} for c in configs}},
                  figures=figures, notes=_notes())


def _table(configs: list[dict], seeds: list[int]) -> str:
    k = configs[0]["overrides"].get("knn_k", 200)
    epochs, _, _ = curve(configs[0], "knn_top1")
    rows = []
    for c in configs:
        _, mean, _ = curve(c, "knn_top1")
        best = max(range(len(mean)), key=lambda i: mean[i])
        statuses = sorted({collapse_status(r) for r in c["runs"]})
        rows.append([label(c["method"], c["stopgrad"]), *[f"{m:.2f}" for m in mean], cell(c, "knn_top1"),
                     cell(c, "knn1_top1"), f"epoch {epochs[best]}", ", ".join(statuses)])
    spread = f"mean over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    head = ["method"] + [f"ep. {e}" for e in epochs] + [f"final, k = {k}", "final, k = 1", "best epoch", "runs"]
    return (markdown_table(head, rows) + f"\n\nkNN top-1 (%, k = {k}) on the test set after each epoch, {spread} "
            "(epoch 0: random initialisation); the final columns give mean ± std. \"runs\": collapsed (within 5 "
            "points of chance, or the collapse alarm), below init (worse than the untrained backbone), or learned.")


def _notes() -> list[str]:
    return ["Within a method and seed, the four policies start from the same initial weights and see the same "
            "batches; only which loss terms are kept differs (random also draws its cases from the run's generator, "
            "so its later augmentations differ).",
            "Figures: kNN per epoch with k = knn_k (`knn_per_epoch.png`) and with k = 1 (`knn1_per_epoch.png`), "
            "mean over seeds, ± std shaded; one panel per method, as the paper's Figure 4."]
