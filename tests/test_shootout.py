"""`stopgrad reproduce shootout`: every method at equal training time, from a calibration of each
configuration's cost; `steps` runs; the GPU check's CPU-runnable parts."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from stopgrad.config import build_config
from stopgrad.reproduce import BUDGETS, shootout

REPO = Path(__file__).resolve().parents[1]


def test_every_method_and_policy_is_in_the_shootout():
    from stopgrad.methods import METHODS
    names = {m for m, _ in shootout.VARIANTS}
    assert names == set(METHODS)
    assert {p for m, p in shootout.VARIANTS if m in ("simsiam", "byol", "moco-v3")} == {"symmetric", "guided"}


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_budget_builds_a_valid_config_for_every_method(budget):
    for c in shootout.configurations(budget):
        cfg = build_config(None, {**c["overrides"], "steps": 10})
        cfg.validate()
        assert cfg.method == c["method"] and cfg.steps == 10
    assert set(shootout.BUDGETS) == set(shootout.SECONDS) == set(BUDGETS)


def test_steps_for_fits_the_budget():
    assert shootout.steps_for(60, 0.1, 0.0, 468) == 600
    assert shootout.steps_for(60, 0.1, 10.0, 100) == 300  # 30 s of steps + 3 epoch setups of 10 s
    for step, setup, per_epoch in ((0.013, 0.0, 468), (0.08, 4.0, 468), (0.2, 30.0, 50)):
        n = shootout.steps_for(60, step, setup, per_epoch)
        cost = lambda k: k * step + -(-k // per_epoch) * setup  # noqa: E731
        assert cost(n) <= 60 + 1e-9 and (n == 1 or cost(n + 1) > 60 or cost(n + 1) <= 60)


def test_shootout_smoke_trains_each_method_for_its_calibrated_steps(run_cli, tmp_path, monkeypatch):
    """Four of the methods (a Siamese pair, a contrastive method with a queue, SPCL's per-epoch
    clustering): the calibration gives each its steps, every run trains exactly those,
    the table ranks them by kNN beside the random-init and pixel rows, the figure is written, and the same
    command again re-reads the calibration and the runs."""
    out_dir = tmp_path / "shootout"
    argv = ("reproduce", "shootout", "--budget", "smoke", "--seeds", "2", "--out", str(out_dir),
            "--only", "byol,moco-v2,spcl")
    code, out, err = run_cli(*argv)
    assert code == 0, err
    record = json.loads((out_dir / "results.json").read_text())
    calibration = json.loads((out_dir / "calibration.json").read_text())
    assert record["status"] == "complete" and len(record["configurations"]) == 4
    for c in record["configurations"]:
        cal = calibration["configurations"][c["name"]]
        assert cal["images_per_second"] > 0 and cal["peak_memory_mb"] > 0 and cal["steps"] >= 1
        assert c["overrides"]["steps"] == cal["steps"]
        assert [r["seed"] for r in c["runs"]] == [0, 1]
        for r in c["runs"]:
            rows = [json.loads(line) for line in Path(r["run_dir"], "metrics.jsonl").read_text().splitlines()]
            assert rows[-1]["step"] == cal["steps"] and 0 < r["knn_top1"] <= 1 and "linear" in r
    assert calibration["configurations"]["spcl"]["seconds_per_epoch_setup"] >= 0
    md = (out_dir / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(table) == 2 and "random init (same backbone)" in md and "pixels, mean-centred" in md
    knn = [float(line.split("|")[3].split("±")[0]) for line in md.splitlines()
           if line[:4] in ("| 1 ", "| 2 ", "| 3 ", "| 4 ")]
    assert knn == sorted(knn, reverse=True)
    assert (out_dir / "knn_vs_minutes.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(*argv)
    assert code == 0, err
    assert "calibration: 4 configurations read from" in err and "training throughput" not in err
    again = json.loads((out_dir / "results.json").read_text())
    assert all(r["reused"] for c in again["configurations"] for r in c["runs"])
    for c, c2 in zip(record["configurations"], again["configurations"]):  # the linear probe is read back too
        for r, r2 in zip(c["runs"], c2["runs"]):
            lines = Path(r["run_dir"], "evaluations.jsonl").read_text().splitlines()
            assert len(lines) == 1 and r2["linear"] == r["linear"] and r2["knn_top1"] == r["knn_top1"]
    # more configurations later: only the new one is timed, the others are read back
    timed = []
    fake = {"images_per_second": 1000.0, "seconds_per_epoch_setup": 0.0, "peak_memory_mb": 1.0}
    monkeypatch.setattr(shootout, "run_jobs", lambda fn, jobs, *a, **k: [timed.append(j["config"]) or fake
                                                                          for j in jobs])
    more = [c for c in shootout.configurations("smoke") if c["name"] in {*calibration["configurations"], "simclr"}]
    got = shootout.calibrate(more, "smoke", out_dir, lambda m: None)
    assert timed == ["simclr"] and set(got) == {*calibration["configurations"], "simclr"}
    assert got["spcl"] == calibration["configurations"]["spcl"]


def test_gpu_quick_budget_is_refused_without_cuda_and_by_experiments_without_it(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "gsg-guiding", "--budget", "gpu-quick", "--out", str(tmp_path / "g"))
    assert code == 2 and "gsg-guiding has no budget 'gpu-quick'" in err and not (tmp_path / "g").exists()
    if not torch.cuda.is_available():
        code, _, err = run_cli("reproduce", "shootout", "--budget", "gpu-quick", "--out", str(tmp_path / "s"))
        assert code == 2 and "needs a CUDA device" in err and not (tmp_path / "s").exists()


def test_gpu_check_script_is_valid_and_runs_what_it_documents():
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for part in ("-m cuda", "tests/test_cuda.py", "--synthetic 3x32x32", "--kornia", "gsg-table1 --budget gpu-quick",
                 "shootout --budget gpu-quick"):
        assert part in text
    # the tests it runs are collected here too, and skipped without CUDA
    r = subprocess.run([str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else "python", "-m",
                        "pytest", "-q", "--co", "-m", "cuda", str(REPO / "tests" / "test_cuda.py")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "8 tests collected" in r.stdout, r.stdout + r.stderr


def test_bench_times_kornia_beside_its_own_augmentation(run_cli, tmp_path):
    pytest.importorskip("kornia")
    path = tmp_path / "bench.json"
    code, out, err = run_cli("bench", "--dataset", "digits", "--width", "4", "--batch-size", "32", "--steps", "2",
                             "--warmup", "1", "--rounds", "1", "--no-conventional", "--no-knn", "--kornia",
                             "--json", str(path))
    assert code == 0, err
    r = json.loads(path.read_text())
    assert r["kornia_aug_img_per_s"] > 0 and r["aug_img_per_s"] > 0 and "Kornia augmentation" in out


def test_kornia_pipeline_makes_views_of_the_right_shape():
    pytest.importorskip("kornia")
    from stopgrad.bench import kornia_pipeline
    from stopgrad.data import RECIPES
    for name, channels in (("fashion-mnist", 1), ("cifar", 3), ("imagenet", 3), ("fashion-mnist-erase", 1)):
        x = torch.rand(8, channels, 32, 32)
        views = kornia_pipeline(RECIPES[name], 24, (0.5,) * channels, (0.25,) * channels, channels)(x)
        assert views.shape == (8, channels, 24, 24) and torch.isfinite(views).all()


def test_recipe_sweep_smoke_marks_each_methods_best_point(run_cli, tmp_path, monkeypatch):
    """Two methods of the sweep (``--only``): every point of each, the same steps per method, the best marked."""
    from stopgrad.reproduce import shootout_recipes
    out_dir = tmp_path / "sweep"
    code, out, err = run_cli("reproduce", "shootout-recipes", "--budget", "smoke", "--out", str(out_dir),
                             "--only", "simclr,vicreg")
    assert code == 0, err
    record = json.loads((out_dir / "results.json").read_text())
    assert record["only"] == ["simclr", "vicreg"] and "--only simclr,vicreg" in record["command"]
    points = {(c["method"], c["point"]) for c in record["configurations"]}
    assert points == {(m, p) for m in ("simclr", "vicreg") for p, _ in shootout_recipes.points(m)}
    assert ("simclr", "T 0.1") in points and ("vicreg", "T 0.1") not in points and ("vicreg", "SGD lr 0.05") in points
    steps = {c["method"]: c["overrides"]["steps"] for c in record["configurations"]}
    assert all(c["overrides"]["steps"] == steps[c["method"]] for c in record["configurations"])
    md = (out_dir / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| SimCLR") or line.startswith("| VICReg")]
    assert len(rows) == 2 and all(row.count("**") == 2 for row in rows)


def test_gsg_table1_gpu_quick_configurations_are_valid():
    from stopgrad.reproduce import gsg_table1
    configs = gsg_table1.configurations("gpu-quick")
    assert len(configs) == 4
    for c in configs:
        cfg = build_config(c["preset"], c["overrides"])
        cfg.validate()
        assert cfg.backbone == "resnet18-cifar" and cfg.dataset == "fashion-mnist" and cfg.views == 4
        assert cfg.epochs == gsg_table1.EPOCHS["gpu-quick"]
    assert gsg_table1.SEEDS_BY_BUDGET["gpu-quick"] == 1


def test_reproduce_list_names_the_gpu_quick_budgets(run_cli):
    code, out, _ = run_cli("reproduce", "--list")
    assert code == 0 and out.count("--budget gpu-quick") == 2
    assert "shootout: Every method at equal wall-clock training time" in out


def test_the_cpu_budget_trains_the_published_steps_on_any_machine():
    """The cpu budget's steps are the reference calibration's for every configuration, also under a
    method recipe that changes only cost-neutral settings (lr, temperature); a change that alters a
    step's cost (the batch) is calibrated on this machine instead."""
    configs = shootout.configurations("cpu")
    assert {c["name"] for c in configs} == set(shootout.REFERENCE_STEPS["cpu"])
    for c in configs:
        assert shootout.reference_steps(c, "cpu") == shootout.REFERENCE_STEPS["cpu"][c["name"]]
    byol = next(c for c in configs if c["name"] == "byol-guided")
    assert shootout.reference_steps({**byol, "overrides": {**byol["overrides"], "lr": 0.4}}, "cpu") == 655
    assert shootout.reference_steps({**byol, "overrides": {**byol["overrides"], "batch_size": 256}}, "cpu") is None
    assert all(shootout.reference_steps(c, "smoke") is None for c in shootout.configurations("smoke"))


def test_the_recipe_sweep_at_cpu_takes_its_steps_without_timing(tmp_path, monkeypatch):
    from stopgrad.reproduce import shootout_recipes
    monkeypatch.setattr(shootout, "run_jobs", lambda *a, **k: pytest.fail("nothing should be timed"))
    base = shootout_recipes.base_configurations("cpu")
    got = shootout.calibrate(base, "cpu", tmp_path, lambda m: None, throughput=False)
    assert got["byol"] == {"steps": 655, "steps_from": "reference"} and got["vicreg"]["steps"] == 840


def test_only_is_checked_before_anything_is_replaced(run_cli, tmp_path):
    out_dir = tmp_path / "sweep"
    out_dir.mkdir()
    (out_dir / "results.json").write_text(json.dumps({"experiment": "shootout", "budget": "smoke"}))
    (out_dir / "results.md").write_text("an earlier table")
    code, _, err = run_cli("reproduce", "shootout", "--budget", "smoke", "--out", str(out_dir), "--only", "byl")
    assert code == 2 and "--only byl selects no configuration" in err and "byol-guided" in err
    assert "Traceback" not in err and (out_dir / "results.md").read_text() == "an earlier table"
    code, _, err = run_cli("reproduce", "gsg-table1", "--budget", "smoke", "--out", str(tmp_path / "t"), "--only", "x")
    assert code == 2 and "--only works for gsg-equal-compute, shootout, shootout-recipes" in err
    from stopgrad.reproduce import select
    assert select(shootout.names("cpu"), ["byol", "simclr"]) == ["byol-symmetric", "byol-guided", "simclr"]
    assert select(shootout.names("cpu"), ["moco-v3"]) == ["moco-v3-symmetric", "moco-v3-guided"]
