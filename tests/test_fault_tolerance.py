"""Checkpoints and stopping: a run stopped mid-epoch resumes exactly; a non-finite loss stops the run (or
is skipped) without touching the last good checkpoint; a failed checkpoint write keeps the previous one;
a checkpoint that would run code is refused."""
import errno
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from stopgrad import runs
from stopgrad.config import ConfigError, build_config
from stopgrad.control import NonFiniteLoss
from stopgrad.data import load_dataset
from stopgrad.train import Stopped, train

COMPARED = ("epoch", "step", "loss", "lr", "knn_top1", "collapse_std", "tp_similarity")
TINY = {"dataset": "digits", "width": 4, "epochs": 3, "batch_size": 64, "train_subset": 512, "knn_k": 20,
        "eval_geometry": False}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_run(a, b):
    assert [[r.get(k) for k in COMPARED] for r in a] == [[r.get(k) for k in COMPARED] for r in b]


class StopAfter:
    """A StopRequest that asks to stop at its ``n``-th check (a deterministic SIGTERM)."""

    def __init__(self, n):
        self.n, self.checks, self.signal_name = n, 0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def requested(self):
        self.checks += 1
        if self.checks >= self.n:
            self.signal_name = "SIGTERM"
        return self.signal_name is not None


@pytest.mark.parametrize("method,stop_at,optimizer", [("byol", 5, "sgd"), ("moco-v2", 11, "sgd"),
                                                    ("instdisc", 8, "sgd"), ("byol", 11, "lars"),
                                                    ("simsiam", 5, "adamw")])
def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path, digits, monkeypatch, method, stop_at, optimizer):
    """8 steps per epoch; stopping at step 5 or 11 (epochs 1 and 2) and resuming gives the uninterrupted run,
    queues, memory banks and the optimisers' state (LARS's momentum, AdamW's moments) included."""
    cfg = build_config(overrides={**TINY, "method": method, "num_negatives": 128, "optimizer": optimizer,
                                  "warmup_epochs": 0.0 if optimizer == "sgd" else 0.5})
    whole = train(cfg, tmp_path / "whole", quiet=True, progress=False, data=digits)
    monkeypatch.setattr("stopgrad.train.StopRequest", lambda: StopAfter(stop_at))
    with pytest.raises(Stopped, match="stopped by SIGTERM at epoch .* continue with `stopgrad train --resume"):
        train(cfg, tmp_path / "parts", quiet=True, progress=False, data=digits)
    state = torch.load(tmp_path / "parts" / runs.CHECKPOINT, weights_only=True)
    assert state["in_epoch"]["done"] == (stop_at - 1) % 8 + 1 and state["format"] == runs.CHECKPOINT_FORMAT
    assert set(state["rng"]) == {"torch", "cuda"} and state["metrics"][0]["epoch"] == 0
    monkeypatch.undo()
    train(cfg, tmp_path / "parts", resume=True, quiet=True, progress=False, data=digits)
    same_run(metrics(tmp_path / "parts"), whole["metrics"])
    a = torch.load(tmp_path / "whole" / runs.CHECKPOINT, weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / runs.CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_every_keeps_the_previous_checkpoint(tmp_path, digits):
    cfg = build_config(overrides={**TINY, "epochs": 1, "checkpoint_every": 3})
    train(cfg, tmp_path / "run", quiet=True, progress=False, data=digits)
    last = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=True)
    previous = torch.load(tmp_path / "run" / runs.PREVIOUS_CHECKPOINT, weights_only=True)
    assert last["in_epoch"] is None and last["epoch"] == 1  # the end of the epoch
    assert previous["in_epoch"]["done"] == 6 and previous["epoch"] == 0  # the step-6 checkpoint before it


def poison(monkeypatch, bad_steps):
    """Make the loss NaN at the given calls of BYOL's forward."""
    from stopgrad.methods.siamese import Siamese
    original, calls = Siamese.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        loss, stats = original(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in bad_steps else loss), stats
    monkeypatch.setattr(Siamese, "forward", forward)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, digits, monkeypatch):
    cfg = build_config(overrides=TINY)
    poison(monkeypatch, {12})  # epoch 2, step 4
    with pytest.raises(NonFiniteLoss, match=r"not a number at step 11 .*loss nan.*last good checkpoint \(epoch 1\)"):
        train(cfg, tmp_path / "run", quiet=True, progress=False, data=digits)
    state = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1 and state["in_epoch"] is None
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [0, 1]


def test_max_nan_skips_skips_bad_steps(tmp_path, digits, monkeypatch):
    cfg = build_config(overrides={**TINY, "max_nan_skips": 2})
    poison(monkeypatch, {3, 12})
    result = train(cfg, tmp_path / "run", quiet=True, progress=False, data=digits)
    assert result["finished"] and result["metrics"][-1]["skipped_steps"] == 2
    assert all(r["loss"] is None or r["loss"] == r["loss"] for r in result["metrics"])  # no NaN in the means
    poison(monkeypatch, {1, 2, 3})
    with pytest.raises(NonFiniteLoss, match="3 non-finite steps with --max-nan-skips 2"):
        train(cfg, tmp_path / "again", quiet=True, progress=False, data=digits)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, digits, monkeypatch, run_cli):
    cfg = build_config(overrides=TINY)
    real, calls = runs._write_checkpoint_file, {"n": 0}

    def full_disk(state, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: the end of epoch 2
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path)
    monkeypatch.setattr(runs, "_write_checkpoint_file", full_disk)
    with pytest.raises(runs.RunError, match="No space left on device.*previous checkpoint .* is intact"):
        train(cfg, tmp_path / "run", quiet=True, progress=False, data=digits)
    state = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1  # the checkpoint of epoch 1, whole
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]  # no leftovers
    monkeypatch.setattr(runs, "_write_checkpoint_file", real)
    train(cfg, tmp_path / "run", resume=True, quiet=True, progress=False, data=digits)  # and it resumes


class Evil:
    def __reduce__(self):
        import os
        return os.system, ("touch pwned",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, digits, run_cli, monkeypatch):
    cfg = build_config(overrides={**TINY, "epochs": 1})
    train(cfg, tmp_path / "run", quiet=True, progress=False, data=digits)
    torch.save({"model": {}, "payload": Evil()}, tmp_path / "run" / runs.CHECKPOINT)
    monkeypatch.chdir(tmp_path)
    for argv in (("train", "--resume", str(tmp_path / "run")), ("eval", "geometry", "--run", str(tmp_path / "run"))):
        code, _, err = run_cli(*argv)
        assert code == 2 and "was refused" in err and "could run code" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ConfigError, match="was refused"):
        runs.load_checkpoint(tmp_path / "run", "cpu")


def test_an_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path, digits):
    cfg = build_config(overrides={**TINY, "epochs": 2})
    train(cfg, tmp_path / "run", quiet=True, progress=False, data=digits)
    (tmp_path / "run" / runs.CHECKPOINT).write_bytes(b"not a checkpoint")
    lines = []
    state = runs.load_checkpoint(tmp_path / "run", "cpu", log=lines.append)
    assert state["epoch"] == 1 and "using the previous checkpoint" in lines[0]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    """A real signal to a real process: exit code 143, a message saying how to resume, and the
    resumed run ends with the uninterrupted run's metrics."""
    base = [sys.executable, "-m", "stopgrad", "train", "--dataset", "digits", "--width", "4", "--epochs", "6",
            "--batch-size", "32", "--knn-k", "20", "--no-progress", "--threads", "1", "--checkpoint-every", "5"]
    subprocess.run(base + ["--out", str(tmp_path / "whole")], check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(base + ["--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / runs.CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"continue with `stopgrad train --resume {tmp_path / 'run'}`" in err and "Traceback" not in err
    subprocess.run([sys.executable, "-m", "stopgrad", "train", "--resume", str(tmp_path / "run"), "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    same_run(metrics(tmp_path / "run"), metrics(tmp_path / "whole"))


def test_a_run_of_steps_ends_mid_epoch_spans_its_schedule_and_resumes_exactly(tmp_path, digits, monkeypatch):
    """``steps: 13`` at 8 steps per epoch: two epochs, the second of 5 steps; the cosine schedule ends at
    zero on the last step; stopped in the short epoch and resumed, it is the uninterrupted run."""
    cfg = build_config(overrides={**TINY, "steps": 13})
    whole = train(cfg, tmp_path / "whole", quiet=True, progress=False, data=digits)
    rows = whole["metrics"]
    assert [r["step"] for r in rows] == [0, 8, 13] and whole["finished"] and whole["epoch"] == 2
    assert rows[-1]["lr"] < 0.02 * rows[0]["lr"]  # the last step's lr: near the end of the cosine
    assert "13 steps of batch 64" in (tmp_path / "whole" / "report.md").read_text()
    assert "Status: finished" in (tmp_path / "whole" / "report.md").read_text()
    monkeypatch.setattr("stopgrad.train.StopRequest", lambda: StopAfter(11))
    with pytest.raises(Stopped, match="at epoch 2, step 3 of 5"):
        train(cfg, tmp_path / "parts", quiet=True, progress=False, data=digits)
    monkeypatch.undo()
    train(cfg, tmp_path / "parts", resume=True, quiet=True, progress=False, data=digits)
    same_run(metrics(tmp_path / "parts"), rows)
    a = torch.load(tmp_path / "whole" / runs.CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "parts" / runs.CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == 13 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_steps_must_be_positive(run_cli, tmp_path):
    code, _, err = run_cli("train", "--config", "digits/quick", "--steps", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and "steps must be positive" in err and not (tmp_path / "o").exists()
