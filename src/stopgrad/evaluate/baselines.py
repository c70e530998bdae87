"""Pixel baselines: what the evaluations give on the images themselves, with no encoder at all.

An encoder has learned something only where it beats its input. :func:`pixel_baselines` scores the
flattened images with the very code that scores a run's backbone:

* ``knn_top1`` / ``knn1_top1`` — weighted kNN (:func:`stopgrad.evaluate.knn.knn_scores`, the same
  k, k = 1 and T as the run's online evaluation) on the raw pixels, flattened and L2-normalised;
* ``centred_knn_top1`` / ``centred_knn1_top1`` — the same on the pixels minus the training
  images' mean image (cosine similarity of centred pixels: correlation between images);
* ``linear_top1`` — the ``fast`` linear probe (:func:`stopgrad.evaluate.linear.fit_probe`:
  standardised features, L-BFGS logistic regression, weight decay 1) on the pixels.

The bank (and the probe's training set) is the run's training images, its ``train_subset``
selection included; the queries are the test images. The figures are cached in
``$XDG_CACHE_HOME/stopgrad/baselines/NAME.json`` (default ``~/.cache``), one file per data set
holding one entry per key: a fingerprint of the images and labels themselves (a BLAKE2 digest of
their bytes and shapes, so a changed file or another ``train_subset`` never reads a stale value),
k, T and the probe's settings. A cache file that cannot be read is recomputed and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .knn import knn_scores

BASELINES_FILE = "baselines.json"  # in a run directory: the run's pixel baselines
CACHE_VERSION = 1  # bump when the way a figure is computed changes
KNN_KEYS = ("knn_top1", "knn1_top1", "centred_knn_top1", "centred_knn1_top1")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stopgrad/baselines`` (default ``~/.cache/...``), read when called."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stopgrad" / "baselines"


def fingerprint(*tensors: torch.Tensor) -> str:
    """A hex digest of the tensors' shapes, dtypes and bytes (about 0.1 s for Fashion-MNIST)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, C*H*W) float32 in [0, 1] of uint8 images (N, C, H, W) (float images are taken as they are)."""
    x = images.flatten(1)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def _cache_file(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "data"
    return cache_dir() / f"{safe}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, ValueError):  # missing, unreadable or corrupt: recomputed
        pass
    return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    from ..runs import atomic_write
    entries = _read_cache(path)  # re-read: another process may have added its entries meanwhile
    entries[key] = entry
    text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True) + "\n"
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    except OSError:  # a read-only or full cache: the figures are still returned
        pass


@torch.no_grad()
def compute_pixel_baselines(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1,
                            linear: bool = True, wd: float = 1.0, max_iter: int = 1000) -> dict:
    """The figures of :func:`pixel_baselines`, computed (no cache)."""
    from .linear import fit_probe
    start = time.perf_counter()
    f_train, f_test = pixels(train_x), pixels(test_x)
    ks = sorted({k, 1})
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    raw = knn_scores(F.normalize(f_train, dim=1), train_y, F.normalize(f_test, dim=1), test_y, ks, temperature,
                     num_classes)
    mean = f_train.mean(0)
    centred = knn_scores(F.normalize(f_train - mean, dim=1), train_y, F.normalize(f_test - mean, dim=1), test_y, ks,
                         temperature, num_classes)
    out = {"knn_top1": raw[k]["top1"], "knn1_top1": raw[1]["top1"],
           "centred_knn_top1": centred[k]["top1"], "centred_knn1_top1": centred[1]["top1"],
           "knn_seconds": round(time.perf_counter() - start, 2)}
    if linear:
        probe = fit_probe(f_train, train_y, f_test, test_y, wd, max_iter)
        out.update(linear_top1=probe["top1"], linear_top5=probe["top5"], linear_seconds=probe["seconds"])
    return out


def pixel_baselines(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1, linear: bool = True,
                    name: str = "data", cache: bool = True, wd: float = 1.0, max_iter: int = 1000) -> dict:
    """kNN top-1 (k and k = 1) on raw and on mean-centred pixels, and the fast linear probe on pixels.

    The same kNN and probe code as a run's evaluation (module docstring), cached per data set.

    Args:
        train_x, train_y: the bank / probe training set: (N, C, H, W) uint8 images, (N,) labels.
        test_x, test_y: the queries: (Q, C, H, W) uint8 images, (Q,) labels.
        k, temperature: the kNN's k (k = 1 is reported too) and vote temperature T.
        linear: also fit the linear probe (the slower part: about 40 s on one core for Fashion-MNIST).
        name: the data set's name (the cache file's); cache: read and write the cache.
        wd, max_iter: the probe's weight decay and L-BFGS iteration bound.
    Returns:
        a dict of fractions: ``knn_top1``, ``knn1_top1``, ``centred_knn_top1``, ``centred_knn1_top1``,
        with ``linear``: ``linear_top1``, ``linear_top5``; and ``k``, ``temperature``, ``bank``,
        ``queries``, ``fingerprint``, the seconds each part took, and ``cached`` (read from the cache).

    >>> data = sg.load_dataset("digits")
    >>> images = (data.train_x, data.train_y, data.test_x, data.test_y)  # (N, 1, 8, 8) uint8, (N,), ...
    >>> base = sg.pixel_baselines(*images, k=20, cache=False)
    >>> base["bank"], base["queries"], base["k"], base["cached"]
    (1437, 360, 20, False)
    >>> [round(base[key], 4) for key in ("knn_top1", "knn1_top1", "centred_knn_top1", "centred_knn1_top1")]
    [0.9806, 0.9889, 0.9833, 0.9917]
    >>> round(base["linear_top1"], 4)
    0.9583

    The second call with the same images and settings reads the cache (here a temporary one):

    >>> import os, tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, XDG_CACHE_HOME=tmp):
    ...     first = sg.pixel_baselines(*images, k=20, linear=False, name="digits")
    ...     again = sg.pixel_baselines(*images, k=20, linear=False, name="digits")
    >>> first["cached"], again["cached"], again["knn_top1"] == base["knn_top1"], "linear_top1" in again
    (False, True, True, False)
    """
    if not len(train_x) or not len(test_x):
        raise ValueError("pixel baselines need training and test images")
    key_fields = {"fingerprint": fingerprint(train_x, train_y, test_x, test_y), "k": int(k),
                  "temperature": float(temperature), "wd": float(wd), "max_iter": int(max_iter)}
    key = json.dumps(key_fields, sort_keys=True)
    path = _cache_file(name)
    entry = _read_cache(path).get(key) if cache else None
    valid = isinstance(entry, dict) and all(isinstance(entry.get(f), (int, float)) for f in KNN_KEYS)
    if valid and (not linear or isinstance(entry.get("linear_top1"), (int, float))):
        return {**entry, "cached": True}
    figures = compute_pixel_baselines(train_x, train_y, test_x, test_y, k, temperature, linear, wd, max_iter)
    if valid and not linear and "linear_top1" in entry:  # keep a probe computed earlier
        figures = {**{f: entry[f] for f in ("linear_top1", "linear_top5", "linear_seconds") if f in entry}, **figures}
    entry = {"name": name, **key_fields, "bank": len(train_x), "queries": len(test_x), **figures}
    if cache:
        _write_cache(path, key, entry)
    return {**entry, "cached": False}


def run_pixel_baselines(cfg, data, train_x, train_y, linear: bool = False) -> dict | None:
    """The pixel baselines of a run (its bank, k and T), or None where they do not apply: images
    streamed from disk (too large to flatten in memory). Without ``linear`` the probe is not fitted,
    but its figure is returned when the cache holds it."""
    if not isinstance(train_x, torch.Tensor) or not isinstance(data.test_x, torch.Tensor):
        return None
    return pixel_baselines(train_x.cpu(), train_y.cpu(), data.test_x, data.test_y, cfg.knn_k, cfg.knn_temperature,
                           linear=linear, name=data.name)


def save_run_baselines(run_dir: Path, pixels_figures: dict) -> Path:
    """Write a run's pixel baselines to ``RUN/baselines.json`` (``{"pixels": {...}}``), atomically."""
    from ..runs import atomic_write
    path = Path(run_dir) / BASELINES_FILE
    text = json.dumps({"pixels": {k: v for k, v in pixels_figures.items() if k != "cached"}}, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def read_run_baselines(run_dir: Path) -> dict | None:
    """A run's pixel baselines from ``RUN/baselines.json``, or None (absent or unreadable)."""
    try:
        pixels_figures = json.loads((Path(run_dir) / BASELINES_FILE).read_text()).get("pixels")
    except (OSError, ValueError, AttributeError):
        return None
    return pixels_figures if isinstance(pixels_figures, dict) else None


def describe(base: dict | None) -> str:
    """The one-line summary ``stopgrad train`` prints: ``kNN top-1 ... (k=1: ...), centred ..., linear ...``."""
    if not base:
        return "not computed"
    text = (f"kNN top-1 {base['knn_top1']:.4f} (k=1: {base['knn1_top1']:.4f}), centred "
            f"{base['centred_knn_top1']:.4f} (k=1: {base['centred_knn1_top1']:.4f})")
    if base.get("linear_top1") is not None:
        text += f", linear {base['linear_top1']:.4f}"
    return text


__all__ = ["BASELINES_FILE", "cache_dir", "compute_pixel_baselines", "describe", "fingerprint", "pixel_baselines",
           "pixels", "read_run_baselines", "run_pixel_baselines", "save_run_baselines"]
