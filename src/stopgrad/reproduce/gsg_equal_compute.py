"""Four views or two: is the authors' faithful mode worth its compute?

The authors' code draws four crops per image: two for its own role and two fresh ones for its
role as another image's partner. stopgrad's equal-compute mode reuses the partner's own two
views (``--views 2``), half the encoder work per image. This compares, for SimSiam and BYOL with
GSG: four views for E epochs; two views for E epochs (equal epochs: half the compute); two views
for 2E epochs (equal compute: the same number of encoded views, about the same wall-clock time;
the measured training seconds are reported so that this can be checked). kNN and linear top-1.
This experiment is ours; the paper only uses four views.
"""
from __future__ import annotations

from pathlib import Path

from . import Report, format_mean_std, format_paired, markdown_table, select
from .gsg import LINEAR, configuration, device_note, label
from .training import cell, pixel_rows, run_configurations, values

TITLE = "Four views vs two: equal epochs and equal compute (SimSiam and BYOL with GSG)"
PAPER = "stopgrad's own question about the faithful mode of the GSG code (four crops per image)"
DEFAULT_SEEDS = 3
EPOCHS = {"smoke": 1, "cpu": 4, "gpu": 100}
BUDGETS = {
    "smoke": "digits, width-4 small CNN, E = 1: a pipeline check, not a result",
    "cpu": "Fashion-MNIST, the earlier default recipe (small-cnn), E = 4 (views 4 for 4 epochs, views 2 for 4 and for 8 epochs); "
           "kNN and fast linear probe; ~30 min for 3 seeds on 2 idle cores",
    "gpu": "CIFAR-10, the paper's recipe, E = 100 (views 4 for 100 epochs, views 2 for 100 and 200)",
}
VARIANTS = (("4 views, E epochs", 4, 1), ("2 views, E epochs (equal epochs)", 2, 1),
            ("2 views, 2E epochs (equal compute)", 2, 2))


def configurations(budget: str) -> list[dict]:
    e = EPOCHS[budget]
    return [configuration(budget, method, {"stopgrad": "guided", "views": views, "epochs": factor * e,
                                           "eval_every": factor * e},
                          name=f"{method}-v{views}-e{factor * e}", variant=name,
                          linear=LINEAR[budget], cost=views * factor)
            for method in ("simsiam", "byol") for name, views, factor in VARIANTS]


def names(budget: str) -> list[str]:
    return [c["name"] for c in configurations(budget)]


def run(budget: str, seeds: list[int], out_dir: Path, log, only: list[str] | None = None) -> Report:
    """``only``: some configurations (e.g. ``["simsiam"]``: more seeds for one method; the runs already in
    ``out_dir`` are re-read, so a later run of all of them keeps these)."""
    chosen = select(names(budget), only)
    configs = run_configurations([c for c in configurations(budget) if c["name"] in chosen], seeds, out_dir,
                                 budget, log, "cuda" if budget == "gpu" else "cpu")
    return Report(configurations=configs, table=_table(configs, budget, seeds), device=device_note(budget),
                  settings={"E": EPOCHS[budget],
                            "configurations": {c["name"]: {"preset": c["preset"], **c["overrides"]} for c in configs}},
                  notes=["The equal-compute comparison is the one that decides the default: at a fixed time "
                         "budget, which mode gives the better representation."])


def _table(configs: list[dict], budget: str, seeds: list[int]) -> str:
    rows = []
    for c in configs:
        rows.append([label(c["method"], "guided"), c["variant"], c["overrides"]["epochs"], cell(c, "knn_top1"),
                     cell(c, "knn1_top1"), cell(c, "linear.top1"), format_mean_std(values(c, "train_seconds"), 1)])
    init = configs[0]
    rows.append(["random init (same backbone)", "–", 0, cell(init, "init.knn_top1"), cell(init, "init.knn1_top1"),
                 "–", "–"])
    rows += pixel_rows(init, {"3": "knn_top1", "4": "knn1_top1", "5": "linear_top1"}, 7)
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    k = configs[0]["overrides"].get("knn_k", 200)
    keys = ("knn_top1", "knn1_top1", "linear.top1")
    diff_rows = []
    for method in dict.fromkeys(c["method"] for c in configs):
        by = {c["variant"]: c for c in configs if c["method"] == method}
        if len(by) < len(VARIANTS):  # --only a part of a method's variants: no pairs to show
            continue
        four, two, two_long = (by[name] for name, _, _ in VARIANTS)
        for name, a, b in (("2 views 2E − 4 views E (equal compute)", two_long, four),
                           ("2 views E − 4 views E (equal epochs)", two, four)):
            diff_rows.append([label(method, "guided"), name]
                             + [format_paired(values(a, key, 100), values(b, key, 100)) for key in keys])
    diff = markdown_table(["method", "difference (points)", f"kNN k = {k}", "kNN k = 1", "linear"], diff_rows)
    return (markdown_table(["method", "variant", "epochs", f"kNN top-1, k = {k} (%)", "kNN top-1, k = 1 (%)",
                            "linear top-1 (%)", "training seconds"], rows)
            + f"\n\nE = {EPOCHS[budget]}. Test-set top-1, {spread}; training seconds exclude evaluation.\n\n"
            + diff + "\n\nMean of the per-seed differences ± its standard error (paired over seeds: each seed's "
            "configurations start from the same initial weights).")
