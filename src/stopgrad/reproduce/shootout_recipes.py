"""The per-method recipe sweep behind the shootout: each method's lr and temperature at the shootout's time budget.

For every method of :mod:`stopgrad.reproduce.shootout` (one entry per method: the stop-gradient
policy does not change which lr suits SimSiam, BYOL or MoCo v3, so the sweep uses the guided
one), the shootout's common recipe with one setting changed at a time: the learning rate halved
and doubled around the library's 0.2 (SGD; VICReg's LARS: its base lr 0.2, halved and doubled,
and SGD at 0.05 as a fourth point), and, for the methods with an InfoNCE temperature, T = 0.1 and
0.5 around the default 0.2. Every run trains for the shootout's seconds (the steps of its method
in the shootout, :func:`stopgrad.reproduce.shootout.calibrate`: at the ``cpu`` budget the
published reference steps), is evaluated by kNN, and the table
gives per method the kNN of every point, the best one marked, and the gain of the best over the
default. One seed by default: the sweep picks settings, the shootout's seeds decide between methods.

The grid is fixed in this module before any result is seen; no setting is tuned on the test set
beyond choosing among these points by the test-set kNN, as every kNN table of this library does.
"""
from __future__ import annotations

from pathlib import Path

from . import Report, device_for, markdown_table, select
from .gsg import device_note
from .shootout import BASE, SECONDS, calibrate, label_of
from .training import run_configurations, values

TITLE = "Per-method recipes for the shootout: lr and temperature of every method at equal training time"
PAPER = "each method's paper recipe as the starting point (configs/paper/), scaled to the CPU bench"
DEFAULT_SEEDS = 1
BUDGETS = {
    "smoke": "every method on scikit-learn digits, width-4 small CNN, 2 s of training per point: a pipeline "
             "check, not a result",
    "cpu": "every method on Fashion-MNIST with the shootout's recipe and its 60 s of single-thread training per "
           "point; lr x 0.5 / x 2, and T = 0.1 / 0.5 for the InfoNCE methods; kNN only",
}
METHODS = ("simsiam", "byol", "moco-v3", "simclr", "moco-v2", "simo", "instdisc", "end-to-end", "fnc", "directclr",
           "triplet", "spcl", "barlow-twins", "vicreg", "twist")
POLICY = {"simsiam": "guided", "byol": "guided", "moco-v3": "guided"}
TEMPERATURE = ("simclr", "moco-v2", "moco-v3", "simo", "instdisc", "end-to-end", "fnc", "directclr", "spcl")
DEFAULT_LR = 0.2  # SGD's and LARS's base lr in stopgrad.optim


def points(method: str) -> list[tuple[str, dict]]:
    """(name of the point, the overrides it changes) for ``method``; the first is the default."""
    out = [("default", {}), ("lr x0.5", {"lr": DEFAULT_LR / 2}), ("lr x2", {"lr": DEFAULT_LR * 2})]
    if method in TEMPERATURE:
        out += [("T 0.1", {"temperature": 0.1}), ("T 0.5", {"temperature": 0.5})]
    if method == "vicreg":
        out.append(("SGD lr 0.05", {"optimizer": "sgd", "lr": 0.05}))
    return out


def _slug(point: str) -> str:
    return point.replace(" ", "-").replace(".", "")


def base_configurations(budget: str) -> list[dict]:
    """One configuration per method: the shootout's common recipe of ``budget`` (the default point)."""
    base = []
    for method in METHODS:
        overrides = {**BASE[budget], "method": method}
        if method in POLICY:
            overrides["stopgrad"] = POLICY[method]
        base.append({"name": method, "method": method, "overrides": overrides})
    return base


def names(budget: str) -> list[str]:
    return [f"{m}-{_slug(point)}" for m in METHODS for point, _ in points(m)]


def run(budget: str, seeds: list[int], out_dir: Path, log, only: list[str] | None = None) -> Report:
    chosen = select(names(budget), only)
    base = [b for b in base_configurations(budget)
            if any(f"{b['method']}-{_slug(point)}" in chosen for point, _ in points(b["method"]))]
    calibration = calibrate(base, budget, out_dir, log, throughput=False)
    configs = []
    for b in base:
        method, steps = b["method"], calibration[b["method"]]["steps"]
        for point, change in points(method):
            if f"{method}-{_slug(point)}" not in chosen:
                continue
            configs.append({"name": f"{method}-{_slug(point)}", "method": method, "point": point,
                            "label": label_of(method, POLICY.get(method)), "preset": None, "cost": steps,
                            "overrides": {**b["overrides"], **change, "steps": steps, "eval_every": 1000,
                                          "eval_geometry": False}})
    configs = run_configurations(configs, seeds, out_dir, budget, log, device_for(budget))
    return Report(configurations=configs, table=_table(configs, budget, seeds), device=device_note(budget),
                  settings={"seconds": SECONDS[budget], "steps": {m: v["steps"] for m, v in calibration.items()},
                            "configurations": {c["name"]: c["overrides"] for c in configs}},
                  notes=["Every point of a method trains the same steps (its calibration) from the same initial "
                         "weights and batches; only the named setting differs."])


def best_points(configs: list[dict]) -> dict[str, dict]:
    """Per method, the point with the highest mean kNN top-1 (its config entry)."""
    out: dict[str, dict] = {}
    for c in configs:
        v = values(c, "knn_top1")
        if not v:
            continue
        mean = sum(v) / len(v)
        if c["method"] not in out or mean > out[c["method"]]["_mean"]:
            out[c["method"]] = {**c, "_mean": mean}
    return out


def _table(configs: list[dict], budget: str, seeds: list[int]) -> str:
    names = ["default", "lr x0.5", "lr x2", "T 0.1", "T 0.5", "SGD lr 0.05"]
    best = best_points(configs)
    rows = []
    for method in [m for m in METHODS if any(c["method"] == m for c in configs)]:
        mine = {c["point"]: c for c in configs if c["method"] == method}
        cells = []
        for n in names:
            c = mine.get(n)
            if c is None:
                cells.append("–")
                continue
            v = values(c, "knn_top1", 100)
            text = f"{sum(v) / len(v):.2f}" if v else "–"
            cells.append(f"**{text}**" if best.get(method, {}).get("point") == n else text)
        d = values(mine["default"], "knn_top1", 100) if "default" in mine else []
        gain = 100 * best[method]["_mean"] - sum(d) / len(d) if method in best and d else None
        rows.append([label_of(method, POLICY.get(method)), *cells, best[method]["point"] if method in best else "–",
                     f"{gain:+.2f}" if gain is not None else "–"])
    k = configs[0]["overrides"].get("knn_k", 200)
    spread = f"mean of {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    return (markdown_table(["method", *[f"{n}" for n in names], "best", "best − default (points)"], rows)
            + f"\n\nkNN top-1 (k = {k}, %) after {SECONDS[budget]} s of training, {spread}; the best point of "
              "each method in bold. Defaults: SGD lr 0.2 with cosine decay (VICReg: LARS, base lr 0.2 × batch / 256), "
              "temperature 0.2. A difference under about 0.5 points is within the spread of one seed here "
              "(the shootout's standard deviations).")
