"""`stopgrad eval NAME`, `stopgrad compare`, run reports and the collapse alarm, from the command line."""
import json
import shutil

import pytest
import torch

TINY = ("--dataset", "digits", "--width", "4", "--epochs", "2", "--batch-size", "64", "--train-subset", "512",
        "--knn-k", "20", "--no-progress", "--eval-every", "1")  # every epoch evaluated (the default: every 2)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from stopgrad.cli import main
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    """A private copy of the finished run, so that tests can add evaluations to it."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def evaluations(run):
    path = run / "evaluations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_training_writes_a_report_with_the_online_metrics(finished_run):
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("knn_top1", "knn_top5", "knn1_top1", "rep_effective_rank", "proj_collapse_std", "proj_uniformity",
                "proj_alignment", "test_tp_similarity", "test_fn_similarity", "tp_similarity", "fn_similarity"):
        assert rows[-1][key] is not None, key
    report = (finished_run / "report.md").read_text()
    assert "## Final metrics" in report and "## Per epoch" in report and "## Config" in report
    assert f"{100 * rows[-1]['knn_top1']:.2f}%" in report
    for png in ("loss.png", "knn_top1.png", "similarity.png", "effective_rank.png", "spectrum.png"):
        assert (finished_run / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in report


def test_eval_linear_fast_and_paper(run, run_cli):
    code, out, err = run_cli("eval", "linear", "--run", str(run))
    assert code == 0, err
    fast = json.loads(out)
    assert fast["protocol"] == "fast" and 0.1 < fast["top1"] <= fast["top5"] <= 1 and fast["wd"] == 1.0
    code, out, err = run_cli("eval", "linear", "--run", str(run), "--protocol", "paper", "--epochs", "1",
                             "--lr", "0.1")
    assert code == 0, err
    paper = json.loads(out)
    assert paper["protocol"] == "paper" and paper["epochs"] == 1 and paper["batch_size"] == 256
    assert [e["protocol"] for e in evaluations(run)] == ["fast", "paper"]
    report = (run / "report.md").read_text()
    assert "| linear (fast) |" in report and "| linear (paper) |" in report


def test_eval_transfer_tsne_geometry_knn(run, run_cli):
    code, out, err = run_cli("eval", "transfer", "--run", str(run), "--target", "digits")
    assert code == 0, err
    result = json.loads(out)
    assert result["target"] == "digits" and 0.3 < result["score"] <= 1 and len(result["sweep"]) == 45
    assert "sweep" not in evaluations(run)[-1]  # the per-wd records are printed, not stored
    code, out, err = run_cli("eval", "tsne", "--run", str(run), "--samples", "100")
    assert code == 0, err
    assert (run / "tsne.png").read_bytes()[:4] == b"\x89PNG" and "tsne.png" in (run / "report.md").read_text()
    code, out, err = run_cli("eval", "geometry", "--run", str(run), "--pairs", "100")
    assert code == 0, err
    geo = json.loads(out)
    assert geo["weights"] == "checkpoints/last.pt" and "proj_effective_rank" in geo  # the heads come from the checkpoint
    before = (run / "evaluations.jsonl").read_text()
    code, out, _ = run_cli("eval", "knn", "--run", str(run), "--k", "5", "--no-save")
    assert code == 0 and set(json.loads(out)["scores"]) == {"5"}
    assert (run / "evaluations.jsonl").read_text() == before


@pytest.mark.parametrize("argv,needle", [
    (["linear", "--lr", "1"], "--epochs, --lr and --batch-size belong to --protocol paper"),
    (["linear", "--protocol", "paper", "--wd", "1"], "--wd belongs to --protocol fast"),
    (["linear", "--wd", "0"], "--wd must be positive"),
    (["linear", "--protocol", "best"], "invalid choice: 'best'"),
    (["transfer", "--target", "mnist"], "unknown dataset 'mnist'"),
    (["transfer", "--target", "digits", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["transfer"], "the following arguments are required: --target"),
    (["knn", "--k", "0"], "expected a positive"),
    (["knn", "--temperature", "0"], "positive --temperature"),
    (["geometry", "--pairs", "-3"], "expected a positive"),
])
def test_bad_evaluation_input_is_one_line_and_exit_code_2(run, run_cli, argv, needle):
    code, out, err = run_cli("eval", argv[0], "--run", str(run), *argv[1:])
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert evaluations(run) == []


def test_compare_overlays_runs_and_prints_a_table(finished_run, tmp_path, run_cli):
    other = tmp_path / "other"
    assert run_cli("train", *TINY, "--stopgrad", "symmetric", "--out", str(other))[0] == 0
    code, out, err = run_cli("compare", str(finished_run), str(other), "--out", str(tmp_path / "c.png"))
    assert code == 0, err
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    lines = [line for line in out.splitlines() if line.startswith("| run") or line.startswith("| other")
             or line.startswith("| run ")]
    assert "byol+guided" in out and "byol+symmetric" in out and len(out.splitlines()) >= 5
    code, _, err = run_cli("compare", str(tmp_path))
    assert code == 2 and "is not a run directory" in err
    del lines


def test_the_collapse_alarm_stops_a_run_and_keeps_its_checkpoint(tmp_path, run_cli):
    """Threshold 2 flags every evaluation (a healthy spread reads ~1): the mechanics, on a real run."""
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY[:4], "--epochs", "4", *TINY[6:], "--collapse-threshold", "2",
                             "--collapse-patience", "2", "--stop-on-collapse", "--out", str(run))
    assert code == 0, err
    assert "collapse alarm" in err and "stopping (stop_on_collapse)" in err
    assert "stopped after epoch 2" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[-1]["collapse_alarm"] is True
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not (run / "backbone.safetensors").exists()
    assert "stopped after epoch 2 of 4; the collapse alarm was raised" in (run / "report.md").read_text()
    # without --stop-on-collapse the alarm only warns
    code, out, err = run_cli("train", *TINY, "--collapse-threshold", "2", "--collapse-patience", "1",
                             "--out", str(tmp_path / "warn"))
    assert code == 0 and "collapse alarm" in err and (tmp_path / "warn" / "backbone.safetensors").is_file()
