"""2-D t-SNE of test-set representations, coloured by class (the GSG paper's Figure 6).

scikit-learn's ``TSNE`` (PCA initialisation, perplexity 30) on the L2-normalised backbone features
of a class-stratified sample of the test set, reduced to 50 dimensions by PCA first as is usual;
the map is written as a PNG. The sample and the embedding are seeded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .features import embed


def stratified_sample(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of up to ``n`` items, the same share of every class, chosen with ``seed``."""
    labels = labels.cpu()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    if n >= len(labels):
        return order
    classes = labels.unique()
    per_class = max(1, n // len(classes))
    picked = [order[labels[order] == c][:per_class] for c in classes]
    return torch.cat(picked).sort().values


def tsne_map(backbone: nn.Module, images, labels: torch.Tensor, mean, std, size: int | None = None,
             n: int = 2000, seed: int = 0, perplexity: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """(points (m, 2), labels (m,)) of the t-SNE of ``n`` stratified images' features."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    idx = stratified_sample(labels, n, seed)
    subset = images[idx.to(images.device)] if isinstance(images, torch.Tensor) else images[idx]
    f = embed(backbone, subset, mean, std, size).cpu().numpy().astype(np.float64)
    if f.shape[1] > 50 and len(f) > 50:
        f = PCA(n_components=50, random_state=seed).fit_transform(f)
    perplexity = min(perplexity, (len(f) - 1) / 3)  # scikit-learn needs perplexity < n
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(f)
    return points, labels[idx].cpu().numpy()


def plot_tsne(points: np.ndarray, labels: np.ndarray, path: Path, title: str = "",
              class_names: list[str] | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=110)
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        m = labels == c
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(points[m, 0], points[m, 1], s=3, color=cmap(int(c) % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of test-set representations")
    if len(np.unique(labels)) <= 20:
        ax.legend(markerscale=4, fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def tsne_plot(backbone: nn.Module, images, labels: torch.Tensor, mean, std, path: Path, size: int | None = None,
              n: int = 2000, seed: int = 0, title: str = "", class_names: list[str] | None = None) -> Path:
    """Compute the t-SNE map of ``n`` test images and write it to ``path`` (PNG).

    Args:
        backbone: (N, C, H, W) images -> (N, F) features, run in eval mode.
        images: (N, C, H, W) uint8 test images (or a streamed ``FolderImages``).
        labels: (N,) int64, the colours.
        mean, std, size: the backbone's input normalisation and side (default: the images').
        path: the PNG to write.
        n: the points, a class-stratified sample of the images chosen with ``seed``.
        class_names: the legend's names of labels 0, 1, ... (default: the numbers).
    Returns:
        ``path``, as a ``Path``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> _ = torch.manual_seed(0)
    >>> data = sg.load_dataset("digits")
    >>> net = sg.build_backbone("small-cnn", 1, width=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     png = sg.tsne_plot(net, data.test_x, data.test_y, data.mean, data.std, Path(tmp) / "tsne.png", n=40)
    ...     print(png.name, png.read_bytes()[1:4] == b"PNG")
    tsne.png True
    """
    points, point_labels = tsne_map(backbone, images, labels, mean, std, size, n, seed)
    return plot_tsne(points, point_labels, path, title, class_names)
