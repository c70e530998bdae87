"""PNG plots of a run's curves (loss, kNN top-1, collapse std) from its metrics."""
from __future__ import annotations

from pathlib import Path

CURVES = {"loss": "training loss", "knn_top1": "kNN top-1 (test)", "collapse_std": "std of normalised projections"}


def plot_metrics(rows: list[dict], run_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, title in CURVES.items():
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = run_dir / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
