"""A sweep over the CPU recipe: named stages of trials, each trial a set of overrides on the default config.

Every trial runs in its own subprocess (so a crash or a code change between trials affects one trial),
single-threaded (the grid stages: two threads, the default run's setting), and appends one JSON line to
OUT/<stage>.jsonl when it finishes: its overrides, epochs, training seconds, img/s, kNN top-1 (k = 200
and k = 1) at every evaluated epoch and the final collapse std. Trials already in the file are skipped, so
an interrupted sweep continues where it stopped when it is run again. At the end (and with --table alone) it prints a markdown table of the stage sorted by kNN.

Pin the single-thread stages to one core; the times in docs/recipes.md were measured this way (the
grid stages alone on the idle machine, without taskset):

    .venv/bin/python benchmarks/sweep_recipe.py --stage grid --out results/recipe-sweep \\
        --only grid earlier-default-14ep grid-lr0.2 grid-seed1 grid-lr0.2-seed1

    taskset -c 0 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_recipe.py \\
        --stage screen --out results/recipe-sweep

    .venv/bin/python benchmarks/sweep_recipe.py --stage screen --out results/recipe-sweep --table
    .venv/bin/python benchmarks/sweep_recipe.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Screening: 3 epochs (cosine over 3), evaluated at the end only (and at initialisation, which every run
# does), no geometry. Each trial is ~2 minutes of single-thread training at width 16.
SCREEN = {"epochs": 3, "eval_every": 3, "eval_geometry": False}

# the full-resolution-first backbone (stem stride 1, downsampling in blocks 2-4)
FULLRES = {"backbone": "small-cnn-fullres"}

STAGES: dict[str, list[tuple[str, dict]]] = {
    # one lever at a time against the default, 3 epochs each
    "screen": [
        ("default", {}),
        ("erase-0.5", {"augment": "fashion-mnist-erase"}),
        ("fullres-stem", FULLRES),
        ("crop-0.08", {"augment": "fashion-mnist-crop08"}),
        ("lr-0.5", {"lr": 0.5}),
        ("batch-256-lr-0.4", {"batch_size": 256, "lr": 0.4}),
        ("heads-wide-predictor", {"heads": "small-wide"}),
        ("crop-0.5", {"augment": "fashion-mnist-crop50"}),
        ("ema-0.96", {"ema_momentum": 0.96}),
    ],
    # the screen's three best levers together, still 3 epochs: do they add up?
    "combine": [
        ("fullres+lr0.5+ema0.96", {**FULLRES, "lr": 0.5, "ema_momentum": 0.96}),
    ],
}
for trials in STAGES.values():
    for _, overrides in trials:
        for key, value in SCREEN.items():
            overrides.setdefault(key, value)


def long_trial(overrides: dict, epochs: int, eval_every: int) -> dict:
    return {**overrides, "epochs": epochs, "eval_every": eval_every, "eval_geometry": False}


# the finalists at the full budget: ~16 minutes of single-thread training (22 epochs at ~1,400 img/s);
# BEST: the screen's three best levers together
BEST = {**FULLRES, "lr": 0.5, "ema_momentum": 0.96}
STAGES["long"] = [
    ("best-22ep", long_trial(BEST, 22, 4)),
]

# centred, standardised features (a BatchNorm without affine after the pool), the default optimiser
STAGES["long3"] = [
    ("fullres-bn-20ep", long_trial({"backbone": "small-cnn-fullres-bn"}, 20, 4)),
]
STAGES["long4"] = [
    ("fullres-bn+erase-20ep", long_trial({"backbone": "small-cnn-fullres-bn", "augment": "fashion-mnist-erase"}, 20, 4)),
]


# The stages above ran on the earlier default recipe (the small CNN pooled to 2x2, lr 0.2): they keep it.
EARLIER_DEFAULT = {"backbone": "small-cnn", "lr": 0.2}
for trials in STAGES.values():
    for _, overrides in trials:
        for key, value in EARLIER_DEFAULT.items():
            overrides.setdefault(key, value)

# The grid stages: the whole last 4x4 map as the features (small-cnn-grid, the default backbone now),
# against the earlier backbones, then one change at a time on the grid recipe (lr 0.4), at 14 epochs (cosine
# over 14; kNN after epochs 7 and 14), two threads: the default run's setting. Each trial is 6-9 minutes of
# training on the 2-core machine. docs/recipes.md gives the trials that were run (--only) and their table;
# the rest of the list (one change at a time on the grid recipe) is there to be run. Keys not set are the preset's.
GRID = {"backbone": "small-cnn-grid", "lr": 0.4}
STAGES["grid"] = [(name, long_trial(overrides, 14, 7)) for name, overrides in [
    ("grid", GRID),
    ("earlier-default-14ep", EARLIER_DEFAULT),
    ("grid-lr0.2", {**GRID, "lr": 0.2}),
    ("grid-seed1", {**GRID, "seed": 1}),
    ("grid-lr0.2-seed1", {**GRID, "lr": 0.2, "seed": 1}),
    ("grid-simsiam", {**GRID, "method": "simsiam"}),
    ("grid-simsiam-lr0.2", {**GRID, "method": "simsiam", "lr": 0.2}),
    ("fullres-bn-14ep", {"backbone": "small-cnn-fullres-bn", "lr": 0.2}),
    ("fullres-grid-lr0.2", {"backbone": "small-cnn-fullres-grid", "lr": 0.2}),
    ("grid-lr0.8", {**GRID, "lr": 0.8}),
    ("grid-width24", {**GRID, "width": 24}),
    ("grid-crop50", {**GRID, "augment": "fashion-mnist-crop50"}),
    ("grid-blur", {**GRID, "augment": "fashion-mnist-blur"}),
    ("grid-erase", {**GRID, "augment": "fashion-mnist-erase"}),
    ("grid-no-jitter", {**GRID, "augment": "fashion-mnist-nojitter"}),
    ("grid-heads-wide", {**GRID, "heads": "small-wide"}),
    ("grid-ema-cosine", {**GRID, "ema_schedule": "cosine"}),
    ("grid-symmetric", {**GRID, "stopgrad": "symmetric"}),
]]
# the frontier: the grid recipe at other lengths, each with its own cosine schedule
STAGES["grid-long"] = [
    ("grid-4ep", long_trial(GRID, 4, 2)),
    ("grid-8ep", long_trial(GRID, 8, 2)),
    ("grid-22ep", long_trial(GRID, 22, 2)),
]
THREADS = {"grid": 2, "grid-long": 2}  # threads per trial (1 for the stages not listed)


def run_trial(overrides: dict, run_dir: Path) -> dict:
    """Train one trial in this process (called in the subprocess); returns the JSON line's content."""
    import torch

    from stopgrad.config import build_config
    from stopgrad.train import train

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    cfg = build_config("fashion-mnist/byol-gsg", overrides={**overrides, "threads": threads, "log": "jsonl"})
    result = train(cfg, run_dir, quiet=True, progress=False)
    rows = result["metrics"]
    evals = [{"epoch": r["epoch"], "seconds": r["seconds"], "knn_top1": r["knn_top1"], "knn1_top1": r["knn1_top1"]}
             for r in rows if r.get("knn_top1") is not None]
    trained = [r for r in rows if r["epoch"] > 0]
    rates = [r["images_per_second"] for r in trained]
    return {"epochs": cfg.epochs, "train_seconds": round(result["seconds"], 1),
            "img_per_s": round(sorted(rates)[len(rates) // 2], 1), "evals": evals,
            "knn_top1": evals[-1]["knn_top1"], "knn1_top1": evals[-1]["knn1_top1"],
            "knn_top1_init": result["knn_top1_init"], "collapse_std": trained[-1].get("collapse_std"),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def done_trials(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["trial"] for line in path.read_text().splitlines() if line.strip()}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows.sort(key=lambda r: -r["knn_top1"])
    threads = rows[0].get("threads", 1) if rows else 1
    out = [f"| trial | overrides | epochs | train min ({threads} thread{'s' if threads > 1 else ''}) | img/s | "
           "kNN k=200 | kNN k=1 | init k=200 | collapse std |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shown = {k: v for k, v in r["overrides"].items() if k not in ("epochs", "eval_every", "eval_geometry")}
        text = ", ".join(f"{k}={v}" for k, v in shown.items()) or "(default)"
        std = r.get("collapse_std")
        out.append(f"| {r['trial']} | {text} | {r['epochs']} | {r['train_seconds'] / 60:.1f} | {r['img_per_s']:.0f} | "
                   f"{r['knn_top1']:.4f} | {r['knn1_top1']:.4f} | {r['knn_top1_init']:.4f} | "
                   f"{'' if std is None else f'{std:.4f}'} |")
    return "\n".join(out)


def frontier(path: Path) -> str:
    """Every evaluation of every trial of the stage: kNN against minutes of single-thread training."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    threads = rows[0].get("threads", 1) if rows else 1
    out = [f"| trial | epoch | train min ({threads} thread{'s' if threads > 1 else ''}) | kNN k=200 | kNN k=1 |",
           "|---|---|---|---|---|"]
    for r in rows:
        for e in r["evals"]:
            out.append(f"| {r['trial']} | {e['epoch']}/{r['epochs']} | {e['seconds'] / 60:.1f} | {e['knn_top1']:.4f} | "
                       f"{e['knn1_top1']:.4f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=sorted(STAGES))
    p.add_argument("--out", default="results/recipe-sweep")
    p.add_argument("--only", nargs="*", help="run only these trials of the stage")
    p.add_argument("--table", action="store_true", help="print the stage's table and exit")
    p.add_argument("--list", action="store_true", help="list the stages and their trials")
    p.add_argument("--frontier", action="store_true", help="print every evaluation of the stage's trials and exit")
    p.add_argument("--run-trial", help=argparse.SUPPRESS)  # JSON overrides: the subprocess's job
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_trial is not None:
        print("RESULT " + json.dumps(run_trial(json.loads(args.run_trial), Path(args.run_dir))), flush=True)
        return 0
    if args.list:
        for stage, trials in STAGES.items():
            print(f"{stage}:")
            for name, overrides in trials:
                print(f"  {name}: {json.dumps(overrides)}")
        return 0
    if args.stage is None:
        p.error("give --stage NAME (or --list)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.stage}.jsonl"
    if args.frontier:
        print(frontier(path))
        return 0
    if not args.table:
        threads = str(THREADS.get(args.stage, 1))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        for name, overrides in STAGES[args.stage]:
            if name in done_trials(path) or (args.only and name not in args.only):
                continue
            run_dir = out / "runs" / args.stage / name
            if run_dir.exists():  # an interrupted trial starts again
                shutil.rmtree(run_dir)
            print(f"[{time.strftime('%H:%M:%S')}] {args.stage}/{name}: {json.dumps(overrides)}", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--run-trial", json.dumps(overrides),
                                   "--run-dir", str(run_dir)], env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]} ", flush=True)
                continue
            record = {"trial": name, "stage": args.stage, "overrides": overrides, **json.loads(lines[-1][7:])}
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"  kNN {record['knn_top1']:.4f} (k=1 {record['knn1_top1']:.4f}), "
                  f"{record['train_seconds']:.0f} s, {record['img_per_s']:.0f} img/s", flush=True)
    print(table(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
