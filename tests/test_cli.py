"""The command line: errors are one short line with exit code 2; a run directory holds everything."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from stopgrad.config import ConfigError, build_config, presets

TINY = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--width", "4", "--train-subset", "256",
        "--no-progress", "--knn-k", "20"]



@pytest.mark.parametrize("argv,needle", [
    (["--method", "moco"], "invalid choice: 'moco'"),
    (["--stopgrad", "sideways"], "invalid choice: 'sideways'"),
    (["--backbone", "vgg"], "invalid choice: 'vgg'"),
    (["--views", "3"], "invalid choice: 3"),
    (["--dataset", "mnist"], "invalid dataset 'mnist'"),
    (["--data-dir", "/nonexistent/fashion"], "does not exist"),
    (["--dataset", "folder:/nonexistent/images"], "does not exist"),
    (["--batch-size", "1"], "every image needs a partner"),
    (["--batch-size", "0"], "batch_size must be positive"),
    (["--batch-size", "-4"], "batch_size must be positive"),
    (["--lr", "0"], "lr must be positive"),
    (["--lr", "-0.1"], "lr must be positive"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--epochs", "two"], "expected a whole number"),
    (["--config", "no-such-preset"], "not found"),
])
def test_bad_input_is_one_line_and_exit_code_2(run_cli, tmp_path, argv, needle):
    code, out, err = run_cli("train", "--out", str(tmp_path / "run"), *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_unknown_yaml_key_names_the_closest_key(tmp_path, run_cli):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: simsiam\nlearning_rate: 0.1\n")
    code, _, err = run_cli("train", "--config", str(preset))
    assert code == 2 and "unknown key 'learning_rate'" in err and len(err.strip().splitlines()) == 1
    preset.write_text("lr: 0.1\nbackbone_name: x\n")
    with pytest.raises(ConfigError, match="did you mean 'backbone'"):
        build_config(str(preset))


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stopgrad.cli", "train", "--method", "nope"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "choose from" in proc.stderr


@pytest.mark.parametrize("name", presets())
def test_every_preset_parses(name):
    cfg = build_config(name)
    assert cfg.validate() is cfg


def test_flags_override_the_preset():
    cfg = build_config("cifar10/simsiam-gsg", {"lr": 0.5})
    assert cfg.lr == 0.5 and cfg.backbone == "resnet18-cifar" and cfg.method == "simsiam"


def test_list_shows_everything(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    for word in ("simsiam", "byol", "guided", "reverse", "symmetric", "random", "fashion-mnist", "cifar100",
                 "folder:PATH", "small-cnn", "resnet18-cifar", "resnet50", "fashion-mnist/byol-gsg"):
        assert word in out


def test_train_writes_a_complete_run_directory_and_eval_reads_it(tmp_path, run_cli):
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, "--out", str(run))
    assert code == 0, err
    assert "kNN top-1:" in out and f"run directory: {run}" in out
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["config"]["seed"] == 0 and record["config"]["dataset"] == "digits"
    assert record["stopgrad_version"] and "git_commit" in record
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("epoch", "step", "loss", "lr", "knn_top1", "collapse_std", "seconds"):
        assert key in rows[1]
    assert 0 <= rows[0]["knn_top1"] <= 1 and 0 <= rows[1]["knn_top1"] <= 1 and rows[1]["step"] == 4
    assert (run / "checkpoints" / "last.pt").is_file()
    for png in ("loss.png", "knn_top1.png", "collapse_std.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    # the backbone loads into a fresh backbone with load_state_dict
    from safetensors.torch import load_file

    from stopgrad.backbones import build_backbone
    net = build_backbone(record["config"]["backbone"], 1, 4)  # the default, small-cnn-grid
    net.load_state_dict(load_file(str(run / "backbone.safetensors")))
    # eval knn re-creates the final kNN of the run (k = 20 and k = 1 from one neighbour search)
    code, out, _ = run_cli("eval", "knn", "--run", str(run), "--k", "20", "1")
    assert code == 0
    result = json.loads(out)
    assert result["bank"] == 256 and result["queries"] == 360 and result["weights"] == "backbone.safetensors"
    assert result["scores"]["20"]["top1"] == pytest.approx(rows[1]["knn_top1"], abs=1e-6)
    assert result["scores"]["1"]["top1"] == pytest.approx(rows[1]["knn1_top1"], abs=1e-6)
    assert result["scores"]["1"]["top5"] is None and 0 < result["scores"]["20"]["top5"] <= 1
    # a second train into the same folder is refused and leaves it as it was
    before = (run / "metrics.jsonl").read_text()
    code, _, err = run_cli("train", *TINY, "--out", str(run))
    assert code == 2 and "already holds a run" in err
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_refuses_other_flags_and_non_runs(tmp_path, run_cli):
    code, _, err = run_cli("train", "--resume", str(tmp_path), "--lr", "0.1")
    assert code == 2 and "drop --lr" in err
    code, _, err = run_cli("train", "--resume", str(tmp_path))
    assert code == 2 and "not a run directory" in err
    code, _, err = run_cli("eval", "knn", "--run", str(tmp_path))
    assert code == 2 and "not a run directory" in err
