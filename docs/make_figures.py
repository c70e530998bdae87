"""Draw the guide's diagram of guided stop-gradient (the idea of the GSG paper's Figure 2).

Two images, two views each: four projections in the plane. The left panel is the symmetric
loss (all four terms); the right panel is what :func:`stopgrad.gsg.select_sources` keeps for
these points: the closest views of the two different images are the sources (they get the
predictor and move), their siblings are the stop-gradient targets; pulling the two close views
toward their far siblings pushes them apart.

    python docs/make_figures.py          # writes docs/figures/gsg-idea.png
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stopgrad.gsg import select_sources  # noqa: E402

# (view, 2-D point) of image a (blue) and image b (orange); a's view 1 and b's view 1 are closest
POINTS = {"a": torch.tensor([[0.0, 0.0], [-1.6, 1.1]]), "b": torch.tensor([[0.55, 0.25], [1.9, -0.9]])}
COLORS = {"a": "tab:blue", "b": "tab:orange"}


def arrow(ax, start, end, color):
    ax.annotate("", xy=end.tolist(), xytext=start.tolist(),
                arrowprops=dict(arrowstyle="->", color=color, lw=1.8, shrinkA=9, shrinkB=9))


def panel(ax, title, sources):
    for name, pts in POINTS.items():
        for v, p in enumerate(pts):
            ax.scatter(*p, s=180, color=COLORS[name], zorder=3, edgecolor="k" if sources and v == sources[name]
                       else "none", linewidth=2)
            ax.annotate(f"z{name}{v + 1}", p + torch.tensor([0.12, 0.15]), fontsize=11)
    for name, pts in POINTS.items():
        views = [sources[name]] if sources else [0, 1]
        for v in views:  # the source view v moves toward its sibling (the stop-gradient target)
            arrow(ax, pts[v], pts[1 - v], COLORS[name])
    ax.set_title(title, fontsize=11)
    ax.set_xlim(-2.3, 2.6)
    ax.set_ylim(-1.5, 1.7)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def main(out: Path = Path(__file__).parent / "figures" / "gsg-idea.png") -> Path:
    z_a, z_b = POINTS["a"][:, None], POINTS["b"][:, None]  # (2 views, 1 pair, 2)
    src_a, src_b = select_sources(z_a, z_b, "guided")
    sources = {"a": int(src_a[0]), "b": int(src_b[0])}
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.5), dpi=120)
    panel(axes[0], "symmetric (SimSiam, BYOL): every view\nmoves toward its sibling", None)
    panel(axes[1], "guided stop-gradient: the closest views of\ndifferent images move, apart from each other",
          sources)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
