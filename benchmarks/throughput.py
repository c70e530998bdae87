"""Training-step throughput (images per second) of a configuration on this machine.

A step is everything a training step does: augmentation of every view, the forward and backward
passes, the optimiser step and the momentum update. Also prints the share of augmentation.

    python benchmarks/throughput.py                      # the default run's configuration
    python benchmarks/throughput.py --method simsiam --views 4 --width 32 --batch-size 256
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from stopgrad.config import build_config
from stopgrad.data import RECIPES
from stopgrad.gsg import derangement
from stopgrad.train import build, epoch_generators, make_views


def measure(overrides: dict, steps: int, warmup: int) -> dict:
    cfg = build_config(overrides=overrides)
    s = build(cfg)
    g, g_cpu = epoch_generators(cfg.seed, 1, s.device)
    recipe, d = RECIPES[cfg.augment], s.data
    sync = torch.cuda.synchronize if s.device.type == "cuda" else (lambda: None)

    def batch(i):
        return s.train_x[i * cfg.batch_size % (len(s.train_x) - cfg.batch_size):][:cfg.batch_size]

    def step(i):
        views = make_views(batch(i), cfg.views, recipe, d.mean, d.std, cfg.image_size, g)
        loss, _ = s.model(views, derangement(cfg.batch_size, g_cpu).to(s.device), g)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        s.model.update_momentum(cfg.ema_momentum)

    for i in range(warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    step_s = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for i in range(steps):
        make_views(batch(i), cfg.views, recipe, d.mean, d.std, cfg.image_size, g)
    sync()
    aug_s = (time.perf_counter() - t0) / steps
    return {"config": overrides, "device": str(s.device), "threads": torch.get_num_threads(),
            "images_per_second": round(cfg.batch_size / step_s, 1),
            "augmentation_share": round(aug_s / step_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    for key in ("method", "stopgrad", "backbone", "dataset", "heads"):
        ap.add_argument(f"--{key}")
    for key in ("views", "width", "batch-size", "threads"):
        ap.add_argument(f"--{key}", type=int)
    ap.add_argument("--device")
    args = vars(ap.parse_args())
    steps, warmup = args.pop("steps"), args.pop("warmup")
    overrides = {k.replace("-", "_"): v for k, v in args.items() if v is not None}
    print(json.dumps(measure(overrides, steps, warmup)))


if __name__ == "__main__":
    main()
