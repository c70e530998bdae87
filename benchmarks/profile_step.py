"""Where a training step's time goes: torch.profiler over the training loop, top operators.

    python benchmarks/profile_step.py                 # the default run's configuration
    python benchmarks/profile_step.py --amp --steps 20
    python benchmarks/profile_step.py --backbone resnet18-cifar --heads cifar --augment cifar ...

Config flags are those of `stopgrad train`; the table is sorted by the operators' own time.
"""
from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from stopgrad.config import build_config
from stopgrad.train import build, train_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=15)
    for key in ("method", "stopgrad", "backbone", "dataset", "heads", "augment", "device"):
        ap.add_argument(f"--{key}")
    for key in ("views", "width", "batch-size", "threads"):
        ap.add_argument(f"--{key}", type=int)
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction)
    args = vars(ap.parse_args())
    steps, rows = args.pop("steps"), args.pop("rows")
    s = build(build_config(overrides={k.replace("-", "_"): v for k, v in args.items() if v is not None}))
    train_epoch(s, 1, steps=3)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_epoch(s, 2, steps=steps)
    key = "self_cuda_time_total" if s.device.type == "cuda" else "self_cpu_time_total"
    print(f"{steps} steps of batch {s.cfg.batch_size} on {s.device}, amp={s.amp}, channels_last={s.channels_last}")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
