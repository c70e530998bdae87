"""Watching runs: TensorBoard event files read back with TensorBoard's own reader, the --log modes,
and the progress bar / per-epoch lines."""
import json

import pytest

from stopgrad.config import build_config
from stopgrad.data import load_dataset
from stopgrad.train import train

TINY = {"dataset": "digits", "width": 4, "epochs": 2, "batch_size": 64, "train_subset": 512, "knn_k": 20,
        "eval_every": 1}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_the_scalars_and_images_of_a_run(tmp_path, digits, run_cli):
    result = train(build_config(overrides=TINY), tmp_path / "run", quiet=True, progress=False, data=digits)
    acc = events(tmp_path / "run")
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/ema_momentum", "train/collapse_std", "train/tp_similarity",
                "train/fn_similarity", "eval/knn_top1", "eval/knn1_top1", "eval/proj_collapse_std",
                "eval/rep_effective_rank", "eval/proj_uniformity", "time/images_per_second"):
        assert tag in scalars, tag
    knn = acc.Scalars("eval/knn_top1")
    assert [e.step for e in knn] == [0, 1, 2]  # one point per evaluated epoch, random init included
    assert [e.value for e in knn] == pytest.approx([r["knn_top1"] for r in result["metrics"]])
    images = set(acc.Tags()["images"])
    assert {"curves/loss", "curves/knn_top1", "eval/spectrum"} <= images
    # a t-SNE map from `stopgrad eval` joins the run's images
    code, _, err = run_cli("eval", "tsne", "--run", str(tmp_path / "run"), "--samples", "100")
    assert code == 0, err
    assert "eval/tsne" in events(tmp_path / "run").Tags()["images"]


def test_a_resumed_run_has_each_epoch_once(tmp_path, digits):
    cfg = build_config(overrides={**TINY, "epochs": 3})
    train(cfg, tmp_path / "run", stop_after=2, quiet=True, progress=False, data=digits)
    train(cfg, tmp_path / "run", resume=True, quiet=True, progress=False, data=digits)
    assert [e.step for e in events(tmp_path / "run").Scalars("train/loss")] == [1, 2, 3]


@pytest.mark.parametrize("mode", ["jsonl", "tensorboard"])
def test_log_modes(tmp_path, digits, mode, run_cli):
    result = train(build_config(overrides={**TINY, "log": mode}), tmp_path / "run", quiet=True, progress=False,
                   data=digits)
    run = tmp_path / "run"
    assert (run / "metrics.jsonl").is_file() == (mode == "jsonl")
    assert (run / "tensorboard").is_dir() == (mode == "tensorboard")
    # without metrics.jsonl the report and compare read the metrics kept in the checkpoint
    from stopgrad.runs import read_metrics
    assert read_metrics(run) == result["metrics"]
    code, out, err = run_cli("compare", str(run), "--out", str(tmp_path / "c.png"))
    assert code == 0 and "| run |" in out, err


def test_the_progress_bar_shows_epoch_loss_lr_and_knn(tmp_path, digits, capsys):
    train(build_config(overrides=TINY), tmp_path / "run", progress=True, data=digits)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "lr " in err and "kNN " in err and "loss " in err


def test_without_a_terminal_there_is_a_line_per_epoch_and_no_bar(tmp_path, digits, capsys):
    train(build_config(overrides=TINY), tmp_path / "run", progress=None, data=digits)  # pytest's output is no tty
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 0 (random init)", "epoch 1/2", "epoch 2/2"]
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2
