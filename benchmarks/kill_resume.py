"""Kill a training run at random moments, resume it each time, and check it ends where an uninterrupted run ends.

1. Trains the run once without interruption (the reference).
2. Trains it again, sending SIGKILL --kills times, each at a random moment (seeded) within
   --max-seconds after the session wrote its first checkpoint (so that every session makes
   progress whatever the start-up time), each time checking that every checkpoint file in the
   run directory loads (``torch.load(weights_only=True)``), then continuing with
   ``stopgrad train --resume``. A kill can land anywhere: in a step, an evaluation, or while a
   checkpoint is being written.
3. Lets the last session finish and compares metrics.jsonl and backbone.safetensors with the
   reference: they must be identical.

    python benchmarks/kill_resume.py [--kills 20] [--seed 0] [--out DIR] [-- extra train flags]

Prints one line per kill and a summary; exits 1 when anything differs. The default run is short:
digits, small CNN width 8, 12 epochs of batch 32 (44 steps each), a mid-epoch checkpoint every
7 steps, one thread.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUN = ["--dataset", "digits", "--width", "8", "--epochs", "12", "--batch-size", "32", "--knn-k", "20",
       "--checkpoint-every", "7", "--threads", "1", "--no-progress"]
COMPARED = ("epoch", "step", "loss", "lr", "knn_top1", "knn1_top1", "collapse_std", "tp_similarity",
            "fn_similarity", "proj_effective_rank")


def stopgrad(*argv: str) -> list[str]:
    return [sys.executable, "-m", "stopgrad", "train", *argv]


def checkpoints_load(run: Path) -> list[str]:
    """Names of the checkpoint files present, after loading each one (an unloadable one raises)."""
    names = []
    for name in ("last.pt", "previous.pt"):
        path = run / "checkpoints" / name
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert "model" in state and "epoch" in state, path
            where = f"epoch {state['epoch']}" if state.get("in_epoch") is None else \
                f"epoch {state['in_epoch']['epoch']} step {state['in_epoch']['done']}"
            names.append(f"{name} ({where})")
    return names


def rows(run: Path) -> list[list]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [[json.loads(line).get(k) for k in COMPARED] for line in lines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3.0,
                        help="a kill comes up to this long after the session's first checkpoint")
    parser.add_argument("--out", help="working folder (default: a temporary one, removed afterwards)")
    parser.add_argument("extra", nargs="*", help="more `stopgrad train` flags, after --")
    args = parser.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    flags = RUN + args.extra
    reference, run = work / "reference", work / "killed"
    for d in (reference, run):
        shutil.rmtree(d, ignore_errors=True)

    t0 = time.perf_counter()
    subprocess.run(stopgrad(*flags, "--out", str(reference)), check=True, capture_output=True)
    print(f"reference run: {time.perf_counter() - t0:.1f} s")

    rng = random.Random(args.seed)
    kills, finished_early = 0, False
    while kills < args.kills:
        argv = stopgrad("--resume", str(run), "--no-progress") if (run / "config.yaml").is_file() else \
            stopgrad(*flags, "--out", str(run))
        started = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = run / "checkpoints" / "last.pt"
        while proc.poll() is None and not (last.is_file() and last.stat().st_mtime > started):
            time.sleep(0.05)  # this session's first checkpoint: it has made progress
        wait = rng.uniform(0.0, args.max_seconds)
        try:
            proc.wait(timeout=wait)
            finished_early = True  # the run ended before the kill: nothing left to interrupt
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
        print(f"kill {kills:2d}, {time.time() - started:4.1f} s into the session; checkpoints that load: "
              f"{', '.join(checkpoints_load(run)) or 'none yet'}")
    final = subprocess.run(stopgrad("--resume", str(run), "--no-progress"), capture_output=True, text=True)
    if final.returncode != 0:
        print(final.stderr)
        return 1
    same_metrics = rows(run) == rows(reference)
    same_backbone = (run / "backbone.safetensors").read_bytes() == (reference / "backbone.safetensors").read_bytes()
    print(f"{kills} kills{' (the run finished before the last planned one)' if finished_early else ''}; "
          f"final metrics identical to the uninterrupted run: {same_metrics}; backbone identical: {same_backbone}")
    if not args.out:
        shutil.rmtree(work)
    return 0 if same_metrics and same_backbone else 1


if __name__ == "__main__":
    sys.exit(main())
