"""GSG Figure 5, "preventing collapse": SimSiam and BYOL without a predictor.

Without a predictor (h = identity) SimSiam and BYOL are known to collapse; the paper reports
that with GSG they do not (its Figure 5, up to 400 epochs on CIFAR-10). Both methods, symmetric
and guided, no predictor; kNN after every epoch, the projection's collapse std (scaled by sqrt(D):
~1 spread out, 0 collapsed), its effective rank, and each run's status.

Status of a run, decided by rules fixed in advance (:func:`stopgrad.reproduce.training.collapse_status`):
*collapsed* when its final kNN top-1 is within 5 points of chance (the paper's notion) or the
collapse alarm was raised; *below init* when it ends worse than the same backbone at random
initialisation; else *learned*.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import Report, format_mean_std, markdown_table
from .gsg import PAPER as GSG_PAPER, configuration, device_note, label
from .training import cell, collapse_status, plot_curves, run_configurations

TITLE = "Preventing collapse: SimSiam and BYOL without a predictor, symmetric vs guided stop-gradient"
PAPER = GSG_PAPER + ", Figure 5 (§6.2)"
DEFAULT_SEEDS = 3
EPOCHS = {"smoke": 2, "cpu": 10, "gpu": 400}
BUDGETS = {
    "smoke": "digits, width-4 small CNN, 2 epochs, four views: a pipeline check, not a result",
    "cpu": "Fashion-MNIST, the earlier default recipe (small-cnn) with four views and no predictor, 10 epochs, kNN and geometry "
           "after every epoch; ~1 h for 3 seeds on 2 idle cores",
    "gpu": "CIFAR-10, the paper's recipe without predictor, 400 epochs (as the paper's Figure 5), kNN every 10 epochs",
}
POLICIES = ("symmetric", "guided")
STYLE = {"symmetric": {"color": "black"}, "guided": {"color": "tab:red"}}


def configurations(budget: str) -> list[dict]:
    every = 10 if budget == "gpu" else 1
    return [configuration(budget, method, {"stopgrad": policy, "predictor": False, "epochs": EPOCHS[budget],
                                           "eval_every": every},
                          name=f"{method}-{policy}-nopred", stopgrad=policy)
            for method in ("simsiam", "byol") for policy in POLICIES]


def _proj_dim(c: dict) -> int:
    """D of the projection (the head preset's output): small 512, cifar/imagenet 2048."""
    from ..config import build_config
    from ..heads import HEAD_PRESETS
    cfg = build_config(c["preset"], c["overrides"])
    return HEAD_PRESETS[cfg.heads]["projector"][-1]


def run(budget: str, seeds: list[int], out_dir: Path, log) -> Report:
    configs = run_configurations(configurations(budget), seeds, out_dir, budget, log,
                                 "cuda" if budget == "gpu" else "cpu")
    for c in configs:  # sqrt(D) x collapse std per epoch: ~1 spread out, 0 collapsed
        scale = math.sqrt(_proj_dim(c))
        for r in c["runs"]:
            for point in r["curve"]:
                point["collapse_level"] = None if point.get("proj_collapse_std") is None \
                    else point["proj_collapse_std"] * scale
    panels = [(label(m, predictor=False), [c for c in configs if c["method"] == m]) for m in ("simsiam", "byol")]
    kw = dict(label=lambda c: c["stopgrad"], style=lambda c: STYLE[c["stopgrad"]])
    figures = [plot_curves(panels, "knn_top1", "kNN top-1 (%), k = knn_k", out_dir / "knn_per_epoch.png", **kw),
               plot_curves(panels, "collapse_level", "sqrt(D) x collapse std (projection, test)",
                           out_dir / "collapse_per_epoch.png", scale=1.0, **kw),
               plot_curves(panels, "proj_effective_rank", "effective rank (projection, test)",
                           out_dir / "effective_rank_per_epoch.png", scale=1.0, **kw)]
    return Report(configurations=configs, table=_table(configs, seeds), device=device_note(budget),
                  settings={"epochs": EPOCHS[budget],
                            "configurations": {c["name"]: {"preset": c["preset"], **c["overrides"]} for c in configs}},
                  figures=figures, notes=_notes())


def _table(configs: list[dict], seeds: list[int]) -> str:
    k = configs[0]["overrides"].get("knn_k", 200)
    rows = []
    for c in configs:
        levels = [r["curve"][-1]["collapse_level"] for r in c["runs"] if r["curve"][-1].get("collapse_level") is not None]
        best = [max(p["knn_top1"] for p in r["curve"]) * 100 for r in c["runs"]]
        statuses = [collapse_status(r) for r in c["runs"]]
        rows.append([label(c["method"], c["stopgrad"], predictor=False), cell(c, "init.knn_top1"), format_mean_std(best),
                     cell(c, "knn_top1"), cell(c, "knn1_top1"), format_mean_std(levels, 3) if levels else "–",
                     cell(c, "proj_effective_rank", 1.0, 1), cell(c, "fn_similarity", 1.0, 3),
                     ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))])
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    return (markdown_table(["method (no predictor)", "kNN at init (%)", "best kNN (%)", f"final kNN, k = {k} (%)",
                            "final kNN, k = 1 (%)", "sqrt(D) x collapse std", "effective rank (proj.)",
                            "FN similarity (train)", "runs"], rows)
            + f"\n\n{spread}. Collapse std and effective rank of the projection of test images after the last "
              "epoch; FN similarity: mean cosine similarity of two images of the same class in the last epoch's "
              "training batches (1 when everything maps to one point).")


def _notes() -> list[str]:
    return ["The paper trains 400 epochs on CIFAR-10 to confirm complete collapse; the cpu budget's 10 epochs "
            "show the start of the trajectories.",
            "Figures: kNN per epoch (`knn_per_epoch.png`), sqrt(D) x collapse std (`collapse_per_epoch.png`) and "
            "effective rank (`effective_rank_per_epoch.png`) of the projection, mean over seeds, ± std shaded."]

