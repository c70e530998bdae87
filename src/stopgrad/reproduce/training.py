"""Training runs inside experiments: one job = one configuration and seed, trained with the library's
own loop and evaluated the same way for every configuration.

:func:`run_configurations` trains every (configuration, seed) in worker processes (one thread
each on CPU budgets: two single-threaded runs side by side use two cores better than one run
with two threads), then evaluates each run: the online kNN of every evaluated epoch (k =
``knn_k`` and k = 1), the geometry, and optionally a linear probe (``fast`` or ``paper``) and a
t-SNE map, all stored in the run's own directory (``OUT/runs/NAME-seedS/``: metrics.jsonl,
evaluations.jsonl, report.md, figures) as well as returned.

Running the same command again continues an interrupted experiment: a run directory whose saved
config equals the job's is resumed (or, when finished, only re-read, with the linear probe it
already recorded) instead of trained again; its record says ``"reused": true``. A directory with another config is replaced.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from . import Log, cpu_workers, format_duration, mean_std, run_jobs

_DATA: dict = {}  # per worker process: data sets already loaded

# per-epoch keys kept in an experiment's records (the rest stays in each run's metrics.jsonl)
CURVE_KEYS = ("epoch", "loss", "knn_top1", "knn1_top1", "collapse_std", "proj_collapse_std", "rep_effective_rank",
              "proj_effective_rank", "proj_uniformity", "tp_similarity", "fn_similarity", "seconds")
FINAL_KEYS = ("knn_top1", "knn_top5", "knn1_top1", "rep_collapse_std", "rep_effective_rank", "rep_uniformity",
              "rep_alignment", "proj_collapse_std", "proj_effective_rank", "proj_uniformity", "proj_alignment",
              "test_tp_similarity", "test_fn_similarity", "test_tn_similarity")


def _data(cfg):
    from ..data import load_dataset
    key = (cfg.dataset, cfg.data_dir, cfg.image_size)
    if key not in _DATA:
        _DATA[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream)
    return _DATA[key]


def train_job(job: dict) -> dict:
    """Train and evaluate one configuration (a worker-process entry point; see the module docstring).

    ``job``: ``preset`` (or None), ``overrides`` (config keys), ``run_dir``, ``threads``, ``linear``
    (None, "fast" or "paper"), ``linear_options``, ``tsne`` (bool).
    """
    import torch

    from ..config import build_config
    from ..evaluate.saved import evaluate_saved
    from ..runs import CONFIG_FILE, read_config
    from ..train import train

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    cfg = build_config(job.get("preset"), job["overrides"])
    run_dir = Path(job["run_dir"])
    reused = False
    if (run_dir / CONFIG_FILE).is_file():
        try:
            reused = read_config(run_dir) == cfg
        except Exception:  # an unreadable leftover: start again
            reused = False
        if not reused:
            shutil.rmtree(run_dir)
    earlier_linear = _earlier_linear(run_dir, cfg, job) if reused else None
    result = train(cfg, run_dir, resume=reused, quiet=True, progress=False, data=_data(cfg))
    rows = result["metrics"]
    evaluated = [r for r in rows if r.get("knn_top1") is not None]
    final = evaluated[-1]
    record = {"run_dir": str(run_dir), "reused": reused, "epochs": rows[-1]["epoch"],
              "train_seconds": round(result["seconds"], 1),
              "images_per_second": round(sum(r.get("images_per_second", 0) for r in rows[1:]) / max(len(rows) - 1, 1), 1),
              "collapse_alarm": result["collapse_alarm"],
              "init": {k: rows[0].get(k) for k in ("knn_top1", "knn1_top1")},
              "pixels": {k: v for k, v in (result.get("pixels") or {}).items()
                         if k in ("knn_top1", "knn1_top1", "centred_knn_top1", "centred_knn1_top1", "linear_top1")},
              **{k: final.get(k) for k in FINAL_KEYS},
              "tp_similarity": rows[-1].get("tp_similarity"), "fn_similarity": rows[-1].get("fn_similarity"),
              "curve": [{k: r.get(k) for k in CURVE_KEYS} for r in evaluated]}
    if job.get("linear"):
        lin = earlier_linear or evaluate_saved("linear", run_dir, protocol=job["linear"],
                                               **job.get("linear_options", {}))
        record["linear"] = {k: lin[k] for k in ("protocol", "top1", "top5", "seconds")}
        if lin.get("pixels"):  # the same fast probe on the pixels (cached per data set)
            record["pixels"]["linear_top1"] = lin["pixels"]["top1"]
    if job.get("tsne"):
        tsne = evaluate_saved("tsne", run_dir, samples=job.get("tsne_samples", 2000))
        record["tsne"] = tsne["figure"]
    return record


def _earlier_linear(run_dir: Path, cfg, job: dict) -> dict | None:
    """The linear probe an earlier session of this experiment recorded for ``run_dir``, when the run had
    finished then (so it evaluated these final weights) with the job's protocol and default options."""
    from ..report import finished, read_evaluations
    from ..runs import read_metrics

    if not job.get("linear") or job.get("linear_options"):
        return None
    try:
        rows = read_metrics(run_dir)
        done = bool(rows) and finished(cfg, rows[-1])
        found = [e for e in read_evaluations(run_dir) if e.get("evaluation") == "linear"
                 and e.get("protocol") == job["linear"] and "top1" in e]
    except Exception:  # damaged files: evaluate again
        return None
    return found[-1] if done and found else None


def run_configurations(configurations: list[dict], seeds: list[int], out_dir: Path, budget: str, log: Log,
                       device: str) -> list[dict]:
    """Train every configuration for every seed; returns the configurations with ``runs`` (one record
    per seed, :func:`train_job`'s) filled in.

    A configuration is ``{"name": ..., "overrides": {...}, "preset": None, "linear": None, "tsne": False,
    ...}``; any other keys are kept (labels for tables). ``cost`` (relative, default 1) orders the
    jobs, the most expensive first, so that two workers finish together.
    """
    workers, threads = cpu_workers() if device == "cpu" else (1, None)
    jobs = []
    for c in configurations:
        for seed in seeds:
            jobs.append({"config": c["name"], "seed": seed, "preset": c.get("preset"),
                         "overrides": {**c["overrides"], "seed": seed, "device": device},
                         "run_dir": str(Path(out_dir) / "runs" / f"{c['name']}-seed{seed}"), "threads": threads,
                         "linear": c.get("linear"), "linear_options": c.get("linear_options", {}),
                         "tsne": bool(c.get("tsne")) and seed == seeds[0], "cost": c.get("cost", 1)})

    def describe(job: dict, r: dict) -> str:
        lin = f", linear {100 * r['linear']['top1']:.2f}%" if r.get("linear") else ""
        return (f"{job['config']} seed {job['seed']}: kNN {100 * r['knn_top1']:.2f}% (k=1 {100 * r['knn1_top1']:.2f}%)"
                f"{lin}, {format_duration(r['train_seconds'])} training{' (reused)' if r['reused'] else ''}")

    log(f"{len(jobs)} runs ({len(configurations)} configurations x {len(seeds)} seeds) in {workers} "
        f"process{'es' if workers > 1 else ''}")
    results = run_jobs(train_job, jobs, workers, log, describe)
    by_config: dict[str, list] = {c["name"]: [] for c in configurations}
    for job, r in zip(jobs, results):
        by_config[job["config"]].append({"seed": job["seed"], **r})
    return [{**{k: v for k, v in c.items() if k != "overrides"}, "overrides": c["overrides"], "seeds": list(seeds),
             "runs": by_config[c["name"]]} for c in configurations]


# ------------------------------------------------------------------------------------------ summaries
def values(config: dict, key: str, scale: float = 1.0) -> list[float]:
    """``key`` of every seed's run (nested keys as "linear.top1"), times ``scale``; missing ones skipped."""
    out = []
    for run in config["runs"]:
        v = run
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            out.append(scale * v)
    return out


def cell(config: dict, key: str, scale: float = 100.0, digits: int = 2) -> str:
    from . import format_mean_std
    v = values(config, key, scale)
    return format_mean_std(v, digits) if v else "–"


def pixel_cell(config: dict, key: str, scale: float = 100.0, digits: int = 2) -> str:
    """A pixel baseline (``pixels.KEY`` of the runs, :mod:`stopgrad.evaluate.baselines`): one number when
    every seed's bank is the same (no ``train_subset``), else mean ± std over seeds; "–" when not computed."""
    v = values(config, f"pixels.{key}", scale)
    if v and max(v) - min(v) < 1e-12:
        return f"{v[0]:.{digits}f}"
    return cell(config, f"pixels.{key}", scale, digits)


def pixel_rows(config: dict, columns: dict[str, str], width: int) -> list[list[str]]:
    """Two table rows, "pixels" (raw) and "pixels, mean-centred": ``columns`` maps a column index (as a
    string) to the pixel key of the raw row (``knn_top1``, ``knn1_top1``, ``linear_top1``); the other cells
    are "–". Empty when the runs hold no pixel baselines."""
    if not values(config, "pixels.knn_top1"):
        return []
    rows = []
    for name, prefix in (("pixels (raw, same kNN / probe)", ""), ("pixels, mean-centred", "centred_")):
        row = [name] + ["–"] * (width - 1)
        for column, key in columns.items():
            if key.startswith("knn"):
                row[int(column)] = pixel_cell(config, prefix + key)
            elif not prefix:  # the linear probe: on the raw pixels only
                row[int(column)] = pixel_cell(config, key)
        rows.append(row)
    return rows


def curve(config: dict, key: str, scale: float = 100.0) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) over seeds of a per-epoch key, on the epochs every seed evaluated."""
    per_seed = [{p["epoch"]: p.get(key) for p in run["curve"]} for run in config["runs"]]
    epochs = sorted(set.intersection(*(set(e for e, v in s.items() if v is not None) for s in per_seed)))
    stats = [mean_std([scale * s[e] for s in per_seed]) for e in epochs]
    return epochs, [m for m, _ in stats], [sd for _, sd in stats]


def plot_curves(panels: list[tuple[str, list[dict]]], key: str, ylabel: str, path: Path, scale: float = 100.0,
                label=lambda c: c["name"], style=lambda c: {}) -> str:
    """One panel per (title, configurations): mean over seeds of ``key`` per epoch, ± std shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), dpi=110, squeeze=False)
    for ax, (title, configs) in zip(axes[0], panels):
        for c in configs:
            epochs, mean, std = curve(c, key, scale)
            line, = ax.plot(epochs, mean, marker="o", markersize=3, label=label(c), **style(c))
            if any(std):
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path).name


def chance(num_classes: int) -> float:
    return 1.0 / num_classes


def collapse_status(run: dict, num_classes: int = 10, margin: float = 0.05) -> str:
    """``collapsed`` (final kNN top-1 within ``margin`` of chance, the paper's notion, or the collapse
    alarm raised), ``below init`` (worse than the same backbone at random initialisation), else ``learned``."""
    if run["collapse_alarm"] or run["knn_top1"] < chance(num_classes) + margin:
        return "collapsed"
    if run["init"]["knn_top1"] is not None and run["knn_top1"] < run["init"]["knn_top1"]:
        return "below init"
    return "learned"


__all__ = ["CURVE_KEYS", "FINAL_KEYS", "cell", "chance", "collapse_status", "curve", "pixel_cell", "pixel_rows",
           "plot_curves", "run_configurations", "train_job", "values"]
