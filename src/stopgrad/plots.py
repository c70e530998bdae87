"""PNG plots of a run's curves from its metrics: one figure per quantity, several lines where they belong together."""
from __future__ import annotations

from pathlib import Path

CURVES = {
    "loss": "training loss",
    "knn_top1": "kNN top-1 (test)",
    "collapse_std": "std of normalised projections",
    "similarity": "similarity in the projection space (training)",
    "effective_rank": "effective rank (test images)",
}
# figure -> the metrics drawn in it, with their legend labels
LINES = {
    "loss": {"loss": None},
    "knn_top1": {"knn_top1": "k = knn_k", "knn1_top1": "k = 1"},
    "collapse_std": {"collapse_std": "training batches", "proj_collapse_std": "test images (projection)"},
    "similarity": {"tp_similarity": "TP: other view", "fn_similarity": "FN: same class",
                   "tn_similarity": "TN: other class"},
    "effective_rank": {"rep_effective_rank": "representation", "proj_effective_rank": "projection"},
}


def plot_metrics(rows: list[dict], run_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for name, lines in LINES.items():
        series = {key: [(r["epoch"], r[key]) for r in rows if r.get(key) is not None] for key in lines}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for key, points in series.items():
            ax.plot(*zip(*points), marker="o", markersize=3, label=lines[key])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(CURVES[name])
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(run_dir) / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
