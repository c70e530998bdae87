"""``stopgrad bench --time-to-accuracy``: how many minutes of training a config needs to reach an accuracy.

It trains the config with the library's own loop (a run directory like any other), evaluating kNN
on the test set after every epoch, and reads the run's ``metrics.jsonl``: each evaluated row holds
the cumulative training time ``seconds`` (evaluation excluded) and ``knn_top1``. For every target
accuracy it reports the first evaluated epoch at or above it, with its training time and the time
including the evaluations so far; the resolution is therefore one epoch (an evaluation of the
default run costs about 10 s and is not training time). The pixel baselines
(:func:`stopgrad.pixel_baselines`: kNN on raw and mean-centred pixels, the fast linear probe on
pixels) and the randomly initialised network are printed beside, and "beats pixels" rows give the
time to pass each pixel baseline.

With ``--run DIR`` the same figures are read from a run that was trained already (its own
evaluation schedule decides the resolution). Note that the targets are reached on a schedule
fixed by the config's epochs: with a cosine learning rate, a shorter run is not a prefix of a
longer one.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_TARGETS = (0.84, 0.86, 0.88)
METRIC = "knn_top1"


def accuracy_curve(rows: list[dict], key: str = METRIC) -> list[dict]:
    """(epoch, training seconds, seconds with evaluation, kNN top-1, k = 1) of every evaluated row."""
    curve, evaluation = [], 0.0
    for r in rows:
        evaluation += r.get("eval_seconds") or 0.0
        if r.get(key) is None:
            continue
        curve.append({"epoch": r["epoch"], "train_seconds": r.get("seconds", 0.0),
                      "wall_seconds": round(r.get("seconds", 0.0) + evaluation, 3), key: r[key],
                      "knn1_top1": r.get("knn1_top1")})
    return curve


def time_to_targets(rows: list[dict], targets, key: str = METRIC) -> list[dict]:
    """For each target: the first evaluated epoch with ``key`` >= target, its training seconds and the
    seconds including evaluations (None where no evaluation reached it).

    >>> rows = [{"epoch": 0, "seconds": 0.0, "knn_top1": 0.70, "eval_seconds": 2.0},
    ...         {"epoch": 1, "seconds": 30.0, "knn_top1": 0.80, "eval_seconds": 2.0},
    ...         {"epoch": 2, "seconds": 60.0, "knn_top1": 0.85, "eval_seconds": 2.0}]
    >>> [(t["target"], t["epoch"], t["train_seconds"], t["wall_seconds"]) for t in time_to_targets(rows, [0.8, 0.9])]
    [(0.8, 1, 30.0, 34.0), (0.9, None, None, None)]
    """
    curve = accuracy_curve(rows, key)
    out = []
    for target in targets:
        hit = next((p for p in curve if p[key] >= target), None)
        out.append({"target": float(target), "epoch": hit and hit["epoch"],
                    "train_seconds": hit and hit["train_seconds"], "wall_seconds": hit and hit["wall_seconds"]})
    return out


def summarize(rows: list[dict], targets, pixels: dict | None = None, key: str = METRIC) -> dict:
    """The figures of a run's metrics rows: curve, targets, "beats pixels" times, final and best."""
    curve = accuracy_curve(rows, key)
    if not curve:
        from .config import ConfigError
        raise ConfigError("the run has no evaluated epoch yet; time to accuracy needs kNN evaluations")
    beats = []
    if pixels:
        for name, field in (("pixels", "knn_top1"), ("pixels, mean-centred", "centred_knn_top1")):
            if pixels.get(field) is not None:
                hit = next((p for p in curve[1:] if p[key] > pixels[field]), None)
                beats.append({"baseline": name, "accuracy": pixels[field], "epoch": hit and hit["epoch"],
                              "train_seconds": hit and hit["train_seconds"],
                              "wall_seconds": hit and hit["wall_seconds"]})
    best = max(curve, key=lambda p: p[key])
    return {"metric": key, "curve": curve, "targets": time_to_targets(rows, targets, key), "beats_pixels": beats,
            "random_init": curve[0][key] if curve[0]["epoch"] == 0 else None,
            "final": curve[-1], "best": best, "pixels": pixels,
            "train_seconds": rows[-1].get("seconds", 0.0), "wall_seconds": curve[-1]["wall_seconds"]}


def _minutes(seconds) -> str:
    return "–" if seconds is None else f"{seconds / 60:.2f}"


def format_report(result: dict) -> str:
    """The markdown table ``stopgrad bench --time-to-accuracy`` prints, and the baselines beside it."""
    key, best = result["metric"], result["best"]
    lines = [f"time to accuracy, {key} on the test set (first evaluated epoch at or above the target):", "",
             "| reaches | epoch | training min | with evaluation min |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']:.4f} | {t['epoch'] if t['epoch'] is not None else 'not reached'} | "
                     f"{_minutes(t['train_seconds'])} | {_minutes(t['wall_seconds'])} |")
    for b in result["beats_pixels"]:
        lines.append(f"| beats {b['baseline']} ({b['accuracy']:.4f}) | "
                     f"{b['epoch'] if b['epoch'] is not None else 'not reached'} | {_minutes(b['train_seconds'])} | "
                     f"{_minutes(b['wall_seconds'])} |")
    final = result["final"]
    lines += ["", f"final: {key} {final[key]:.4f} (k=1: {final['knn1_top1']:.4f}) after epoch {final['epoch']}, "
                  f"{_minutes(result['train_seconds'])} min of training ({_minutes(result['wall_seconds'])} with "
                  f"evaluation); best {best[key]:.4f} at epoch {best['epoch']}"]
    if result.get("random_init") is not None:
        lines.append(f"random init: {result['random_init']:.4f}")
    if result.get("pixels"):
        from .evaluate.baselines import describe
        lines.append(f"pixels: {describe(result['pixels'])}")
    return "\n".join(lines)


def time_to_accuracy(cfg, targets=DEFAULT_TARGETS, run_dir: Path | None = None, data=None, log=print,
                     existing: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (or, with ``existing``, read the run there) and return the figures
    (:func:`summarize`, with ``run_dir`` and the config); the pixel baselines include the linear probe
    unless ``cfg.pixel_baselines`` is off."""
    from . import runs
    from .data import load_dataset
    from .evaluate.baselines import read_run_baselines, run_pixel_baselines, save_run_baselines
    from .train import default_run_dir, train, training_images

    if existing:
        rows = runs.read_metrics(run_dir)
    else:
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream,
                                    strict=cfg.strict_data)
        rows = train(cfg, run_dir, progress=False, data=data, quiet=log is None)["metrics"]
    pixels = read_run_baselines(run_dir)
    if cfg.pixel_baselines and (pixels is None or pixels.get("linear_top1") is None):
        if log is not None:
            log("pixels: fitting the linear probe on the pixels (once per data set, then cached)")
        data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream,
                                    strict=cfg.strict_data)
        pixels = run_pixel_baselines(cfg, data, *training_images(cfg, data), linear=True)
        if pixels is not None:
            save_run_baselines(run_dir, pixels)
    result = summarize(rows, targets, pixels)
    return {"run_dir": str(run_dir), "config": cfg.to_dict(), **result}


__all__ = ["DEFAULT_TARGETS", "accuracy_curve", "format_report", "summarize", "time_to_accuracy", "time_to_targets"]
