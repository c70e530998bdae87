"""GSG Table 1: SimSiam and BYOL with and without guided stop-gradient, kNN and linear accuracy.

Four configurations, identical but for the stop-gradient policy: SimSiam and BYOL with the
symmetric loss (the baselines) and with GSG. Each is evaluated by weighted kNN on the test set
with k = 1 (the paper's CIFAR-10 setting) and k = 200 (its ImageNet setting), and by a linear
probe (``fast`` on the smoke and cpu budgets, the paper's SGD protocol on gpu); mean ± std over
seeds, the paper's CIFAR-10 numbers beside ours. Also: kNN per evaluated epoch, the difference
GSG − baseline with its standard error, and a t-SNE map of seed 0 of each configuration (the
paper's Figure 6).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from . import Report, device_for, format_paired, markdown_table
from .gsg import LINEAR, PAPER as GSG_PAPER, configuration, device_note, label
from .training import cell, pixel_rows, plot_curves, run_configurations, values

TITLE = "SimSiam and BYOL with and without guided stop-gradient: kNN (k = 1, 200) and linear accuracy"
PAPER = GSG_PAPER + ", Table 1 (and Figure 6)"
DEFAULT_SEEDS = 3
EPOCHS = {"smoke": 2, "cpu": 8, "gpu-quick": 1, "gpu": 200}
EVAL_EVERY = {"smoke": 1, "cpu": 2, "gpu-quick": 1, "gpu": 10}
SEEDS_BY_BUDGET = {"gpu-quick": 1}
BUDGETS = {
    "smoke": "digits, width-4 small CNN, 2 epochs, four views: a pipeline check, not a result",
    "cpu": "Fashion-MNIST, the earlier default recipe (small-cnn width 16, batch 128, lr 0.2 cosine) with four views, "
           "8 epochs; kNN k = 1 and 200, fast linear probe; ~45 min for 3 seeds on 2 idle cores",
    "gpu-quick": "Fashion-MNIST with the CIFAR ResNet-18 (batch 512, lr 0.06 constant, four views), 1 epoch, "
                 "one seed by default: the GPU path of this experiment in minutes, not a result",
    "gpu": "CIFAR-10, the paper's recipe (CIFAR ResNet-18, batch 512, 200 epochs, lr 0.06, four views); "
           "kNN and the paper's linear protocol (SGD lr 30, 90 epochs)",
}
# the paper's CIFAR-10 numbers (Table 1): kNN (k = 1) and linear top-1, mean ± std over 3 runs
PAPER_CIFAR10 = {("simsiam", "symmetric"): ("77.0 ± 0.67", "82.7 ± 0.26"),
                 ("simsiam", "guided"): ("82.2 ± 0.48", "86.4 ± 0.28"),
                 ("byol", "symmetric"): ("85.4 ± 0.24", "88.0 ± 0.09"),
                 ("byol", "guided"): ("89.4 ± 0.21", "90.3 ± 0.16")}
VARIANTS = [(m, p) for m in ("simsiam", "byol") for p in ("symmetric", "guided")]


def configurations(budget: str) -> list[dict]:
    return [configuration(budget, method, {"stopgrad": policy, "epochs": EPOCHS[budget],
                                           "eval_every": EVAL_EVERY[budget]},
                          name=f"{method}-{policy}", stopgrad=policy, linear=LINEAR[budget],
                          tsne=True)
            for method, policy in VARIANTS]


def run(budget: str, seeds: list[int], out_dir: Path, log) -> Report:
    configs = run_configurations(configurations(budget), seeds, out_dir, budget, log, device_for(budget))
    figures = [plot_curves([(label(m), [c for c in configs if c["method"] == m]) for m in ("simsiam", "byol")],
                           "knn_top1", "kNN top-1 (%), k = knn_k", out_dir / "knn_per_epoch.png",
                           label=lambda c: label(c["method"], c["stopgrad"]))]
    for c in configs:  # the t-SNE maps of seed 0, next to the results
        source = c["runs"][0].get("tsne")
        if source:
            name = f"tsne-{c['name']}.png"
            shutil.copyfile(source, out_dir / name)
            figures.append(name)
    return Report(configurations=configs, table=_table(configs, budget, seeds), device=device_note(budget),
                  settings={"epochs": EPOCHS[budget], "eval_every": EVAL_EVERY[budget], "linear": LINEAR[budget],
                            "configurations": {c["name"]: {"preset": c["preset"], **c["overrides"]} for c in configs}},
                  figures=figures, notes=_notes(budget))


def _table(configs: list[dict], budget: str, seeds: list[int]) -> str:
    by = {(c["method"], c["stopgrad"]): c for c in configs}
    k = configs[0]["overrides"].get("knn_k", 200)
    rows = []
    for method, policy in VARIANTS:
        c = by[(method, policy)]
        paper = PAPER_CIFAR10[(method, policy)]
        rows.append([label(method, policy), cell(c, "knn1_top1"), cell(c, "knn_top1"), cell(c, "linear.top1"),
                     f"{paper[0]} / {paper[1]}"])
    init = by[VARIANTS[0]]
    rows.append(["random init (same backbone)", cell(init, "init.knn1_top1"), cell(init, "init.knn_top1"), "–", "–"])
    rows += pixel_rows(init, {"1": "knn1_top1", "2": "knn_top1", "3": "linear_top1"}, 5)
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    head = markdown_table(["method", "kNN top-1, k = 1 (%)", f"kNN top-1, k = {k} (%)",
                           f"linear top-1 ({configs[0]['linear']}, %)", "paper, CIFAR-10: kNN (k = 1) / linear"], rows)
    diff_rows = []
    for method in ("simsiam", "byol"):
        g, s = by[(method, "guided")], by[(method, "symmetric")]
        diff_rows.append([label(method)] + [format_paired(values(g, key, 100), values(s, key, 100))
                                            for key in ("knn1_top1", "knn_top1", "linear.top1")])
    diff = markdown_table(["GSG − baseline (points)", "kNN k = 1", f"kNN k = {k}", "linear"], diff_rows)
    return (f"{head}\n\nTest-set accuracy after training, {spread}. The paper's column is its Table 1 on "
            f"CIFAR-10 with a ResNet-18 (200 epochs); ours is {'the same recipe' if budget == 'gpu' else 'another data set and a far smaller budget'}, "
            f"so compare the direction of the differences, not the numbers.\n\n{diff}\n\n"
            "Mean of the per-seed differences; ± is its standard error, paired over seeds (each seed's two "
            "configurations start from the same initial weights and see the same batches). The paper's differences on CIFAR-10: "
            "SimSiam +5.2 kNN / +3.7 linear, BYOL +4.0 / +2.3.")


def _notes(budget: str) -> list[str]:
    return ["All four configurations share every setting but the stop-gradient policy; each seed's "
            "configurations start from the same initial weights and see the same images in the same order.",
            "`knn_per_epoch.png`: kNN top-1 per evaluated epoch, mean over seeds (shaded: ± std). "
            "`tsne-*.png`: t-SNE of the representations of 2,000 test images (all of them when fewer), seed 0 (the "
            "paper's Figure 6)."]
