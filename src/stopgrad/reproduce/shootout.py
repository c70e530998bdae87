"""Which method should I use? Every method at equal wall-clock training time.

Every method of the library (SimSiam and BYOL with the symmetric and the guided stop-gradient,
MoCo v3 with both, and the contrastive, prototype and redundancy-reduction methods) trains on the
same data, backbone, heads and augmentation for the same *training time*, not the same number of
epochs: a method that costs twice as much per step gets half the steps. Equal epochs favour the
methods that are cheap per step and hide what a method costs.

How the time is made equal, reproducibly. A first phase measures each configuration's training
throughput (:func:`stopgrad.bench.bench`: the library's own training step, after warm-up steps,
each configuration in a fresh worker process under the same conditions as the training runs) and
turns the budget's seconds into a number of steps (``steps`` in the run's config: the lr and
momentum schedules span exactly those steps). The steps are then fixed: every seed of a
configuration trains the same steps, the runs are deterministic, and an interrupted experiment
continues with the same numbers (``OUT/calibration.json``). The table reports the training time
each run actually took beside the budget.

The ``cpu`` budget's steps are those of the published run (:data:`REFERENCE_STEPS`: its
calibration on the reference 2-core machine), so that the command trains the published steps on
any machine, however fast (a re-run on another machine or day agrees with the published table
within about a point, not to the digit: docs/RESULTS.md); the calibration still measures this machine's throughput and
memory, records the steps its own timing would give (``steps_here``), and the table reports the
training time each run took here. Budgets without reference steps (``smoke``, the GPU ones) train
the steps this machine's calibration gives.

Per seed, every configuration starts from the same initial backbone weights and sees the same
images in the same order (the seed decides both), so differences between methods are paired.
Measured for every run: weighted kNN on the test set (k = ``knn_k`` and k = 1), the fast linear
probe, the backbone's collapse std (× √D: about 1 when healthy, 0 when collapsed) and effective
rank, img/s and the peak memory of the worker process (CPU: its maximum resident set; CUDA: the
allocator's peak).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import (Report, _write_json, cpu_workers, device_for, format_duration, format_mean_std, format_paired,
               markdown_table, mean_std, run_jobs, select)
from ..config import build_config
from .gsg import EARLIER_RECIPE, METHOD_NAMES, device_note
from .training import _data, cell, pixel_rows, run_configurations, values

TITLE = "Every method at equal wall-clock training time: kNN, linear probe, collapse, speed and memory"
PAPER = ("the methods' own papers (`stopgrad list`); the question is the user's: which method learns most "
         "in the time I have")
DEFAULT_SEEDS = 3

# (method, stop-gradient policy or None where the method has no policy to choose)
VARIANTS = [("simsiam", "symmetric"), ("simsiam", "guided"), ("byol", "symmetric"), ("byol", "guided"),
            ("moco-v3", "symmetric"), ("moco-v3", "guided"), ("simclr", None), ("moco-v2", None), ("simo", None),
            ("instdisc", None), ("end-to-end", None), ("fnc", None), ("directclr", None), ("triplet", None),
            ("spcl", None), ("barlow-twins", None), ("vicreg", None), ("twist", None)]

# per budget, per-method settings on top of the budget's common recipe (the method's recipe). Everything a method
# does not set here is the library's default for it (SGD lr 0.2 cosine, weight decay 5e-4, temperature 0.2, the
# method's own defaults in stopgrad.methods; VICReg: LARS, its paper's optimiser). The cpu entries come from
# `stopgrad reproduce shootout-recipes --budget cpu` (docs/RESULTS.md): a method's best point of the sweep where it
# beat the default by at least 1 kNN point (about three of the shootout's seed standard deviations); the
# methods where no point beat the default by that much keep the defaults.
METHOD_RECIPES: dict[str, dict[str, dict]] = {
    "cpu": {"moco-v2": {"lr": 0.1}, "instdisc": {"temperature": 0.1}, "barlow-twins": {"lr": 0.1},
            "vicreg": {"optimizer": "sgd", "lr": 0.05}, "spcl": {"temperature": 0.1}},
}

# seconds of training per run (the budget), and the settings every run of the budget shares
SECONDS = {"smoke": 2, "cpu": 60, "gpu-quick": 5, "gpu": 300}
BASE = {
    "smoke": dict(dataset="digits", width=4, batch_size=64, knn_k=20, **EARLIER_RECIPE),
    "cpu": dict(dataset="fashion-mnist", **EARLIER_RECIPE),  # the recipe its results were published on
    "gpu-quick": dict(dataset="fashion-mnist", backbone="resnet18-cifar", heads="cifar", batch_size=512, lr=0.06,
                      lr_schedule="constant"),
    "gpu": dict(dataset="fashion-mnist", backbone="resnet18-cifar", heads="cifar", batch_size=512, lr=0.06,
                lr_schedule="constant"),
}
BUDGETS = {
    "smoke": "every method on scikit-learn digits, width-4 small CNN, 2 s of training each: a pipeline check, "
             "not a result",
    "cpu": "every method on Fashion-MNIST with the earlier default recipe (small-cnn width 16, small heads, batch 128, "
           "two views, its augmentation) and its CPU recipe (METHOD_RECIPES), 60 s of single-thread training "
           "each on the reference machine (its calibrated steps, the same on any machine), two runs at a time on "
           "the 2-core machine; kNN, fast linear probe, geometry; about 1 h 40 min for 3 seeds on the reference "
           "machine (the linear probe takes about 90 s of each run)",
    "gpu-quick": "every method on Fashion-MNIST with the CIFAR ResNet-18 (batch 512, lr 0.06), 5 s of training "
                 "each on one CUDA device, one seed by default: the GPU path of the shootout in minutes, not a result",
    "gpu": "every method on Fashion-MNIST with the CIFAR ResNet-18 (batch 512, lr 0.06), 5 minutes of training "
           "each on one CUDA device",
}
# the steps of the published cpu run (docs/RESULTS.md): its calibration on the reference machine (2-core AMD
# EPYC, one thread per run, 2026-12-01, commit 9d3b36d) turned 60 s into these steps. They hold for the cpu
# budget's common recipe and under changes of COST_NEUTRAL settings; any other change is calibrated here.
REFERENCE_STEPS = {
    "cpu": {"simsiam-symmetric": 840, "simsiam-guided": 840, "byol-symmetric": 799, "byol-guided": 655,
            "moco-v3-symmetric": 669, "moco-v3-guided": 679, "simclr": 867, "moco-v2": 614, "simo": 830,
            "instdisc": 909, "end-to-end": 945, "fnc": 964, "directclr": 975, "triplet": 978, "spcl": 736,
            "barlow-twins": 746, "vicreg": 840, "twist": 899},
}
# settings that do not change what a step costs: a configuration that differs from the common recipe in these
# alone (a method's recipe of lr, temperature, ...) keeps its reference steps; any other change is calibrated here
# (the optimiser too: SGD's step is LARS's without the per-layer norms, so SGD with LARS's steps trains a little
# less time, never more)
COST_NEUTRAL = {"optimizer", "lr", "temperature", "weight_decay", "sgd_momentum", "ema_momentum", "ema_schedule", "lr_schedule",
                "lr_scaling", "warmup_epochs", "bt_lambda", "vicreg_weights", "triplet_margin", "lars_eta",
                "knn_k", "knn_temperature"}
SEEDS_BY_BUDGET = {"gpu-quick": 1}  # when --seeds is not given
CALIBRATION = "calibration.json"
# evaluations during a run (kNN only, for the curve against minutes); the last step is always evaluated
EVALS_PER_RUN = {"smoke": 1, "cpu": 2, "gpu-quick": 1, "gpu": 5}


def name_of(method: str, policy: str | None) -> str:
    return method if policy is None else f"{method}-{policy}"


def label_of(method: str, policy: str | None) -> str:
    names = {**METHOD_NAMES, "moco-v3": "MoCo v3", "simo": "SiMo", "instdisc": "InstDisc",
             "end-to-end": "end-to-end", "fnc": "FNC", "directclr": "DirectCLR", "triplet": "truncated triplet",
             "spcl": "SPCL", "barlow-twins": "Barlow Twins", "vicreg": "VICReg", "twist": "TWIST"}
    base = names.get(method, method)
    return base if policy is None else base + (" w/ GSG" if policy == "guided" else " (symmetric)")


def configurations(budget: str) -> list[dict]:
    out = []
    for method, policy in VARIANTS:
        overrides = {**BASE[budget], "method": method, **METHOD_RECIPES.get(budget, {}).get(method, {})}
        if policy is not None:
            overrides["stopgrad"] = policy
        out.append({"name": name_of(method, policy), "method": method, "stopgrad": policy,
                    "label": label_of(method, policy), "preset": None, "overrides": overrides, "linear": "fast"})
    return out


# ------------------------------------------------------------------------------------------ calibration
def calibrate_job(job: dict) -> dict:
    """Training cost of one configuration (a worker-process entry point).

    Two timed stretches of the training loop, of ``steps`` and ``3 * steps`` steps, each starting an
    epoch: the slope between them is the time of a step, the intercept the work done once per epoch
    (SPCL's clustering of the training set; about zero for the others). Returns images/s of the step
    alone, the per-epoch seconds and the process's peak memory (MiB).
    """
    import time

    import torch

    from ..bench import _peak_memory_mb, _sync
    from ..train import build, train_epoch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    cfg = build_config(None, {**job["overrides"], "seed": 0, "device": job["device"]})
    s = build(cfg, _data(cfg))
    n = job["steps"]
    train_epoch(s, 1, steps=job["warmup"])
    times = []
    for epoch, steps in ((2, n), (3, 3 * n)):
        _sync(s.device)
        t0 = time.perf_counter()
        train_epoch(s, epoch, steps=steps)
        _sync(s.device)
        times.append(time.perf_counter() - t0)
    per_step = max((times[1] - times[0]) / (2 * n), 1e-9)
    per_epoch = max(0.0, times[0] - n * per_step)
    return {"images_per_second": round(cfg.batch_size / per_step, 1), "seconds_per_epoch_setup": round(per_epoch, 3),
            "peak_memory_mb": round(_peak_memory_mb(s.device), 1)}


def steps_for(seconds: float, step_seconds: float, epoch_seconds: float, steps_per_epoch: int) -> int:
    """The most steps whose training time (steps x step time + one epoch setup per begun epoch) fits ``seconds``.

    >>> steps_for(60, 0.1, 0.0, 468), steps_for(60, 0.1, 10.0, 100)
    (600, 300)
    """
    def cost(n: int) -> float:
        return n * step_seconds + -(-n // steps_per_epoch) * epoch_seconds
    steps = max(1, int(seconds / step_seconds))
    while steps > 1 and cost(steps) > seconds:
        steps -= 1
    return steps


def calibrate(configs: list[dict], budget: str, out_dir: Path, log, throughput: bool = True) -> dict:
    """``{name: {"images_per_second", "peak_memory_mb", "steps", "steps_here", "steps_from"}}``: measured
    once, then read from ``OUT/calibration.json`` (so a continued experiment trains the same steps).

    ``steps`` are the reference steps where the budget has them (:func:`reference_steps`), else the
    steps this machine's timing gives (``steps_here``). ``throughput=False``: where every configuration
    has reference steps, only those, without timing anything (``{name: {"steps", "steps_from"}}``).
    """
    if not throughput:
        known = {c["name"]: reference_steps(c, budget) for c in configs}
        if all(v is not None for v in known.values()):
            log("calibration: the reference steps of every configuration (nothing to time)")
            return {name: {"steps": v, "steps_from": "reference"} for name, v in known.items()}
    path = out_dir / CALIBRATION
    saved: dict = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("seconds") == SECONDS[budget]:
            saved = {name: entry for name, entry in (record.get("configurations") or {}).items()
                     if isinstance(entry, dict) and "steps" in entry}
    # an entry is reused while its configuration's settings are unchanged
    todo = [c for c in configs if (saved.get(c["name"]) or {}).get("overrides") != c["overrides"]]
    if len(todo) < len(configs):
        log(f"calibration: {len(configs) - len(todo)} configurations read from {path}")
    if todo:
        device = device_for(budget)
        workers, threads = cpu_workers() if device == "cpu" else (1, None)
        steps, warmup = (3, 2) if budget == "smoke" else (15, 5)
        jobs = [{"config": c["name"], "overrides": c["overrides"], "device": device, "threads": threads,
                 "steps": steps, "warmup": warmup} for c in todo]
        images = _training_images(configs)
        log(f"calibration: the training throughput of {len(jobs)} configurations, {workers} at a time")
        results = run_jobs(calibrate_job, jobs, workers, log,
                           lambda job, r: f"{job['config']}: {r['images_per_second']:,.0f} img/s",
                           fresh_processes=True)
        for c, r in zip(todo, results):
            batch = build_config(None, c["overrides"]).batch_size
            here = steps_for(SECONDS[budget], batch / r["images_per_second"], r["seconds_per_epoch_setup"],
                             images // batch)
            reference = reference_steps(c, budget)
            saved[c["name"]] = {**r, "steps": here if reference is None else reference, "steps_here": here,
                                "steps_from": "this machine" if reference is None else "reference",
                                "overrides": c["overrides"]}
        _write_json(path, {"seconds": SECONDS[budget], "configurations": saved})
    return {c["name"]: saved[c["name"]] for c in configs}


def reference_steps(c: dict, budget: str) -> int | None:
    """The published steps of configuration ``c`` (:data:`REFERENCE_STEPS`), or None where there are none
    or ``c`` differs from the reference's recipe in a setting that changes a step's cost."""
    method, policy = c["method"], c["overrides"].get("stopgrad")
    steps = REFERENCE_STEPS.get(budget, {}).get(name_of(method, policy))
    recipe = {**BASE[budget], "method": method, **({"stopgrad": policy} if policy else {})}
    costly = {k: v for k, v in c["overrides"].items() if k not in COST_NEUTRAL}
    return steps if costly == recipe else None


def _training_images(configs: list[dict]) -> int:
    """The number of training images of the configurations' data set (loaded once per process)."""
    return len(_data(build_config(None, configs[0]["overrides"])).train_x)


def names(budget: str) -> list[str]:
    return [c["name"] for c in configurations(budget)]


def run(budget: str, seeds: list[int], out_dir: Path, log, only: list[str] | None = None) -> Report:
    chosen = select(names(budget), only)
    configs = [c for c in configurations(budget) if c["name"] in chosen]
    calibration = calibrate(configs, budget, out_dir, log)
    images = _training_images(configs)
    for c in configs:
        steps = calibration[c["name"]]["steps"]
        c["overrides"]["steps"] = steps
        c["cost"] = steps  # the longest first, so that the two workers finish together
        # a kNN evaluation every so many epochs: EVALS_PER_RUN points on the curve against minutes
        epochs = -(-steps // (images // build_config(None, c["overrides"]).batch_size))
        c["overrides"]["eval_every"] = max(1, math.ceil(epochs / EVALS_PER_RUN[budget]))
    configs = run_configurations(configs, seeds, out_dir, budget, log, device_for(budget))
    for c in configs:
        c["calibration"] = calibration[c["name"]]
    figure = _plot(configs, out_dir / "knn_vs_minutes.png", budget)
    return Report(configurations=configs, table=_table(configs, budget, seeds), device=device_note(budget),
                  settings={"seconds": SECONDS[budget], "recipes": METHOD_RECIPES.get(budget, {}),
                            "configurations": {c["name"]: c["overrides"] for c in configs}},
                  figures=[figure], notes=_notes(budget))


# ------------------------------------------------------------------------------------------ summaries
def _feature_dim(c: dict) -> int:
    from ..backbones import backbone_for
    cfg = build_config(None, c["overrides"])
    return backbone_for(cfg, _data(cfg).channels).feature_dim


def ranked(configs: list[dict]) -> list[dict]:
    """The configurations by mean final kNN top-1, best first."""
    return sorted(configs, key=lambda c: -mean_std(values(c, "knn_top1"))[0])


def _table(configs: list[dict], budget: str, seeds: list[int]) -> str:
    k = configs[0]["overrides"].get("knn_k", 200)
    order = ranked(configs)
    best = order[0]
    rows = []
    for i, c in enumerate(order, 1):
        collapse = values(c, "rep_collapse_std", math.sqrt(_feature_dim(c)))
        rows.append([i, c["label"], cell(c, "knn_top1"), cell(c, "knn1_top1"), cell(c, "linear.top1"),
                     format_paired(values(c, "knn_top1", 100), values(best, "knn_top1", 100)) if c is not best else "–",
                     format_mean_std(collapse, 3) if collapse else "–", cell(c, "rep_effective_rank", 1.0, 1),
                     f"{c['calibration']['images_per_second']:,.0f}", f"{c['calibration']['peak_memory_mb']:,.0f}",
                     c["overrides"]["steps"], cell(c, "train_seconds", 1.0, 0)])
    init = configs[0]
    width = 12
    rows.append(["", "random init (same backbone)", cell(init, "init.knn_top1"), cell(init, "init.knn1_top1")]
                + ["–"] * (width - 4))
    rows += [[""] + r for r in pixel_rows(init, {"1": "knn_top1", "2": "knn1_top1", "3": "linear_top1"}, width - 1)]
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    head = markdown_table(["rank", "method", f"kNN top-1, k = {k} (%)", "kNN top-1, k = 1 (%)",
                           "linear top-1 (fast, %)", "kNN vs #1 (paired, points)", "√D × collapse std",
                           "effective rank", "img/s", "peak MiB", "steps", "train s"], rows)
    if all(c["calibration"].get("steps_from") == "reference" for c in configs):
        length = (f"Every method trained for the steps that {SECONDS[budget]} s of training gave on the reference "
                  "machine (the published calibration; train s: the time they took here)")
    else:
        length = f"Every method trained for {SECONDS[budget]} s"
    return (f"{head}\n\n{length} ({spread}; test-set accuracy after "
            f"training). Ranked by mean kNN top-1 at k = {k}. \"kNN vs #1\": the mean over seeds of the paired "
            "difference to the first-ranked method (same seed: same initial weights and batches) ± its "
            "standard error. √D × collapse std and the effective rank are the backbone's, on the test images "
            "(D its feature dimension; √D × collapse std is about 1 for features spread over the sphere, 0 "
            "when collapsed). img/s and peak memory "
            "come from the calibration (the training step alone); train s is each run's measured training "
            "time, which includes per-epoch work such as SPCL's clustering.")


def _plot(configs: list[dict], path: Path, budget: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    styles = ["-", "--"]
    for i, c in enumerate(ranked(configs)):
        per_seed = [[(p.get("seconds") or 0.0, p["knn_top1"]) for p in r["curve"]] for r in c["runs"]]
        n = min(len(s) for s in per_seed)
        xs = [sum(s[j][0] for s in per_seed) / len(per_seed) / 60 for j in range(n)]
        ys = [100 * sum(s[j][1] for s in per_seed) / len(per_seed) for j in range(n)]
        ax.plot(xs, ys, marker="o", markersize=3, color=plt.cm.tab20(i % 20), linestyle=styles[i % 2],
                label=c["label"])
    pixels = values(configs[0], "pixels.centred_knn_top1", 100)
    if pixels:
        ax.axhline(pixels[0], color="black", linestyle=":", linewidth=1, label="pixels, mean-centred")
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("kNN top-1 (%), mean over seeds")
    ax.set_title(f"kNN against training time, budget {budget}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path).name


def _notes(budget: str) -> list[str]:
    return ["Same backbone, heads, batch, augmentation and optimiser family for every method, so the table "
            "compares methods, not pipelines; each method keeps its own loss settings (temperature, margins, "
            "queues, momentum targets) at the library's defaults, listed per run in `results.json`.",
            "`knn_vs_minutes.png`: kNN top-1 at each evaluation against the minutes of training so far, mean over "
            "seeds; the dotted black line is kNN on the mean-centred pixels. The points of a run lie on one schedule "
            "(its learning rate decays over the whole budget): they are not shorter runs.",
            f"Wall time of the experiment: per run, {format_duration(SECONDS[budget])} of training plus the kNN "
            "evaluations (random init, the curve's points, the end), the geometry and the fast linear probe."]
