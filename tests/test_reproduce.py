"""`stopgrad reproduce`: the registry, the eqco-toy experiment end to end, its data and loss, the errors."""
import json
import math
from pathlib import Path

import pytest
import torch

from stopgrad.config import ConfigError
from stopgrad.reproduce import EXPERIMENTS, check_out_dir, format_mean_std, mean_std, run_jobs
from stopgrad.reproduce import eqco_toy



def test_list_names_every_experiment_and_its_budgets(run_cli):
    code, out, err = run_cli("reproduce", "--list")
    assert code == 0 and err == ""
    for name in EXPERIMENTS:
        assert f"{name}: " in out
    for budget in ("smoke", "cpu", "gpu"):
        assert f"--budget {budget}: " in out


def test_eqco_toy_smoke_end_to_end(run_cli, tmp_path):
    out_dir = tmp_path / "eqco"
    code, out, err = run_cli("reproduce", "eqco-toy", "--budget", "smoke", "--seeds", "2",
                             "--out", str(out_dir))
    assert code == 0, err
    command = f"stopgrad reproduce eqco-toy --budget smoke --seeds 2 --out {out_dir}"

    record = json.loads((out_dir / "results.json").read_text())
    for key in ("experiment", "title", "paper", "status", "budget", "seeds", "command", "stopgrad_version",
                "torch_version", "git_commit", "device", "machine", "started", "finished", "wall_seconds",
                "settings", "configurations", "figures", "notes"):
        assert key in record, key
    assert record["experiment"] == "eqco-toy" and record["status"] == "complete" and record["budget"] == "smoke"
    assert record["seeds"] == [0, 1] and record["command"] == command
    assert record["torch_version"] == str(torch.__version__) and record["device"].startswith("cpu")
    assert record["wall_seconds"] > 0

    s = eqco_toy.SETTINGS["smoke"]
    configs = record["configurations"]
    main_ = [c for c in configs if c["negatives"] == "in-batch"]
    assert {(c["true_mi"], c["k"], c["method"]) for c in main_} == {
        (mi, k, m) for mi in s["mis"] for k in s["ks"] for m in ("infonce", "eqco")}
    for c in configs:
        assert len(c["estimate"]) == 2 and all(math.isfinite(v) for v in c["estimate"])
        # L >= 0, so the estimate never exceeds the ceiling: log K (InfoNCE), log alpha (EqCo)
        assert max(c["estimate"]) <= c["bound_ceiling"] + 1e-6
        assert len(c["curve"]) == 2 and c["curve"][0][-1][0] == s["steps"]
    by = {(c["negatives"], c["k"], c["method"]): c for c in configs}
    assert by[("in-batch", 64, "infonce")]["paper"] == 3.6 and by[("in-batch", 16, "infonce")]["paper"] is None

    md = (out_dir / "results.md").read_text()
    assert f"Command: `{command}`" in md
    assert "| true MI | estimator | K = 16 | K = 64 |" in md
    assert f"{format_mean_std(by[('in-batch', 64, 'infonce')]['estimate'])} (3.6)" in md
    assert record["figures"] == ["mi_vs_k.png", "training_curves.png"]
    for name in record["figures"]:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert "results.md" in out  # the table is printed too


def test_rerun_rules_for_the_output_folder(tmp_path):
    check_out_dir(tmp_path / "new", "eqco-toy", "cpu")  # a new folder
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", "eqco-toy", "cpu")
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"experiment": "eqco-toy", "budget": "cpu"}))
    check_out_dir(done, "eqco-toy", "cpu")  # the same experiment and budget: re-run
    with pytest.raises(ConfigError, match="budget 'cpu'"):
        check_out_dir(done, "eqco-toy", "smoke")  # would replace a bigger run's results


def test_correlated_gaussian_has_the_stated_correlation_and_mutual_information():
    gen = torch.Generator().manual_seed(0)
    for mi in (2.0, 6.0, 10.0):
        rho = eqco_toy.mi_to_rho(mi)
        assert eqco_toy.rho_to_mi(rho) == pytest.approx(mi)
        x, y = eqco_toy.correlated_gaussian(200_000, rho, generator=gen)
        cov = torch.cov(torch.cat((x, y), 1).double().T)
        d = eqco_toy.DIM
        corr = cov[:d, d:] / (cov[:d, :d].diagonal().sqrt()[:, None] * cov[d:, d:].diagonal().sqrt()[None])
        assert corr.diagonal() == pytest.approx([rho] * d, abs=0.01)  # corr(x_i, y_i) = rho
        off = corr - torch.diag(corr.diagonal())
        assert off.abs().max() < 0.015  # corr(x_i, y_j) = 0 for i != j
        assert cov[:d, :d].diagonal() == pytest.approx([1.0] * d, abs=0.02)
        assert cov[d:, d:].diagonal() == pytest.approx([1.0] * d, abs=0.02)
        # Gaussian MI from the sample covariance: (log det Sx + log det Sy - log det S) / 2
        sample_mi = 0.5 * (torch.logdet(cov[:d, :d]) + torch.logdet(cov[d:, d:]) - torch.logdet(cov)).item()
        assert sample_mi == pytest.approx(-(d / 2) * math.log(1 - rho ** 2), rel=0.02)
        assert sample_mi == pytest.approx(mi, rel=0.02)


def _reference_loss(q, k_pos, k_neg, alpha):
    """InfoNCE / EqCo with the raw inner-product critic, written out in float64."""
    q, k_pos = q.double(), k_pos.double()
    if k_neg is None:
        scores = q @ k_pos.T
        pos = scores.diagonal()
        neg = scores.masked_fill(torch.eye(len(q), dtype=torch.bool), float("-inf"))
        k = len(q) - 1
    else:
        pos = (q * k_pos).sum(-1)
        neg = q @ k_neg.double().T if k_neg.dim() == 2 else torch.einsum("bd,bkd->bk", q, k_neg.double())
        k = k_neg.shape[-2]
    m = math.log(alpha / k) if alpha is not None else 0.0
    return -(pos - m - torch.logsumexp(torch.cat((pos[:, None] - m, neg), 1), 1)).mean()


@pytest.mark.parametrize("negatives", ["in-batch", "shared", "per-query"])
@pytest.mark.parametrize("alpha", [None, 512])
@pytest.mark.parametrize("scale", [0.3, 3.0])  # logits of std ~0.5 and ~50: far from the unit sphere either way
def test_inner_product_info_nce_is_the_unnormalised_critic(negatives, alpha, scale):
    torch.manual_seed(1)
    b, k, d = 9, 8, 32
    q = (scale * torch.randn(b, d)).requires_grad_()
    k_pos = (scale * torch.randn(b, d)).requires_grad_()
    k_neg = {"in-batch": None, "shared": scale * torch.randn(k, d),
             "per-query": scale * torch.randn(b, k, d)}[negatives]
    loss = eqco_toy.inner_product_info_nce(q, k_pos, k_neg, alpha)
    ref = _reference_loss(q, k_pos, k_neg, alpha)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-3)
    g = torch.autograd.grad(loss, (q, k_pos))
    g_ref = torch.autograd.grad(ref, (q, k_pos))
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r.to(a.dtype), rtol=1e-3, atol=1e-4)


def test_bound_offset_gives_log_alpha_for_eqco():
    assert eqco_toy.bound_offset(64, None) == pytest.approx(math.log(64))
    for k in (64, 128, 512):
        assert eqco_toy.bound_offset(k, 512) == pytest.approx(math.log(512))


def test_worker_processes_give_the_same_numbers_as_this_process():
    base = dict(mi=4.0, alpha=512, negatives="in-batch", steps=5, eval_batches=2, curve_every=5, lr=5e-4,
                dim=20, hidden=16, embed=4, device="cpu", threads=1)
    jobs = [dict(base, k=8, seed=0), dict(base, k=16, seed=1, negatives="shared")]
    lines = []
    here = run_jobs(eqco_toy.train_config, jobs, 1, lines.append)
    pooled = run_jobs(eqco_toy.train_config, jobs, 2, lines.append)
    assert [r["estimate"] for r in pooled] == pytest.approx([r["estimate"] for r in here], abs=1e-6)
    assert len(lines) == 4 and lines[0].startswith("[1/2]")


_BLOCKER = """
import os, time
from pathlib import Path

def block(job):
    Path(job["pid_file"]).write_text(str(os.getpid()))
    time.sleep(120)
    return {}
"""

_PARENT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, also where the caller ignores it
sys.path.insert(0, sys.argv[1])
from blocker import block
from stopgrad.reproduce import run_jobs
run_jobs(block, [dict(pid_file=sys.argv[1] + f"/worker{i}.pid") for i in range(2)], 2, print)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its exit status waits to be collected


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_workers_stop_with_the_experiment(tmp_path, how):
    # a stopped `stopgrad reproduce` must not leave its runs training on the cores it was given
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "blocker.py").write_text(_BLOCKER)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        files = [tmp_path / f"worker{i}.pid" for i in range(2)]
        deadline = time.monotonic() + 120
        while not all(f.exists() and f.read_text() for f in files):
            assert parent.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = [int(f.read_text()) for f in files]
        assert all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "a worker kept running after its experiment stopped"
    finally:
        if parent.poll() is None:
            parent.kill()
        for f in tmp_path.glob("worker*.pid"):  # a failed check leaves no sleeping worker behind
            try:
                if _alive(pid := int(f.read_text())):
                    os.kill(pid, signal.SIGKILL)
            except (ValueError, OSError):
                pass


def test_mean_std_over_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert format_mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00" and format_mean_std([1.5]) == "1.50"
    assert format_mean_std([1.731, 1.735, 1.739]) == "1.74 ± 0.004"  # not "± 0.00"
    assert format_mean_std([2.0, 2.0]) == "2.00 ± 0.00"


@pytest.mark.parametrize("argv,needle", [
    (["nope", "--budget", "smoke"], "unknown experiment 'nope'"),
    (["eqco-toy", "--budget", "smoke", "--seeds", "0"], "--seeds must be at least 1"),
    (["eqco-toy", "--budget", "smoke", "--seeds", "-2"], "--seeds must be at least 1"),
    (["eqco-toy", "--budget", "smoke", "--seeds", "two"], "expected a whole number"),
    (["eqco-toy", "--budget", "huge"], "invalid choice: 'huge'"),
    (["eqco-toy"], "give --budget"),
    ([], "give an experiment name"),
])
def test_bad_input_is_one_line_and_exit_code_2(run_cli, tmp_path, argv, needle):
    out_dir = tmp_path / "out"
    code, out, err = run_cli("reproduce", *argv, "--out", str(out_dir))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not out_dir.exists()  # nothing written


def test_missing_out_is_an_error(run_cli):
    code, _, err = run_cli("reproduce", "eqco-toy", "--budget", "smoke")
    assert code == 2 and "give --out" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content,needle", [
    ({"experiment": "gsg-cifar10", "budget": "smoke"}, "holds results of experiment 'gsg-cifar10'"),
    (None, "holds no `stopgrad reproduce` results"),
])
def test_out_folder_with_other_contents_is_refused(run_cli, tmp_path, content, needle):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if content is None:
        (out_dir / "notes.txt").write_text("mine")
    else:
        (out_dir / "results.json").write_text(json.dumps(content))
    before = sorted((p.name, p.read_text()) for p in out_dir.iterdir())
    code, _, err = run_cli("reproduce", "eqco-toy", "--budget", "smoke", "--out", str(out_dir))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert sorted((p.name, p.read_text()) for p in out_dir.iterdir()) == before  # untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_gpu_budget_without_cuda_is_an_error(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "eqco-toy", "--budget", "gpu", "--out", str(tmp_path / "o"))
    assert code == 2 and "needs a CUDA device" in err and not (tmp_path / "o").exists()


def test_eqco_k_smoke_trains_every_configuration(run_cli, tmp_path):
    """eqco-k runs the training loop per (method, K, EqCo on/off, seed); EqCo shifts the positive by T log(alpha/K)."""
    from stopgrad.reproduce import eqco_k
    out_dir = tmp_path / "eqk"
    code, out, err = run_cli("reproduce", "eqco-k", "--budget", "smoke", "--seeds", "1", "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "results.json").read_text())
    s = eqco_k.SETTINGS["smoke"]
    configs = record["configurations"]
    assert {(c["method"], c["k"], c["eqco"]) for c in configs} == {
        (m, k, e) for m in s["methods"] for k in s["ks"] for e in (False, True)}
    for c in configs:
        run = c["runs"][0]
        assert 0 < run["knn_top1"] <= 1 and math.isfinite(run["mi_bound"])
        expected = 0.2 * math.log(eqco_k.ALPHA / c["k"]) if c["eqco"] else 0.0
        assert run["margin"] == pytest.approx(expected, abs=1e-6) and c["margin"] == pytest.approx(expected)
    assert (out_dir / "runs" / "simo-k4-eqco-seed0" / "metrics.jsonl").is_file()
    text = (out_dir / "results.md").read_text()
    assert "| kNN top-1 (%) | K = 4 | K = 16 | K = 4 − K = 16 (paired) |" in text
    assert "| simo, EqCo − InfoNCE |" in text and "random init (same backbone)" in text
    # paired by seed: every run of a seed starts from the same weights (the same init kNN)
    inits = {c["runs"][0]["init"]["knn_top1"] for c in configs}
    assert len(inits) == 1


GSG_EXPERIMENTS = ("gsg-table1", "gsg-guiding", "gsg-no-predictor", "gsg-batch-size", "gsg-equal-compute")


@pytest.mark.parametrize("name", GSG_EXPERIMENTS)
def test_gsg_experiment_smoke_budget_end_to_end(run_cli, tmp_path, name):
    """Every configuration trains with the library's loop, is evaluated, and lands in the table and figures."""
    from stopgrad.reproduce import experiment_module
    out_dir = tmp_path / name
    code, out, err = run_cli("reproduce", name, "--budget", "smoke", "--seeds", "1", "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "results.json").read_text())
    assert record["status"] == "complete" and record["budget"] == "smoke" and record["seeds"] == [0]
    expected = experiment_module(name).configurations("smoke")
    assert [c["name"] for c in record["configurations"]] == [c["name"] for c in expected]
    for c in record["configurations"]:
        (r,) = c["runs"]
        assert r["seed"] == 0 and 0 < r["knn_top1"] <= 1 and 0 < r["knn1_top1"] <= 1 and r["reused"] is False
        assert r["curve"][0]["epoch"] == 0 and r["curve"][-1]["epoch"] == c["overrides"]["epochs"]
        assert (c.get("linear") is None) == ("linear" not in r)
        run_dir = out_dir / "runs" / f"{c['name']}-seed0"
        assert (run_dir / "report.md").is_file() and (run_dir / "backbone.safetensors").is_file()
    md = (out_dir / "results.md").read_text()
    assert f"Command: `stopgrad reproduce {name} --budget smoke --seeds 1 --out {out_dir}`" in md
    if name in ("gsg-table1", "gsg-equal-compute", "gsg-batch-size"):  # baselines and paired differences beside
        assert "| random init (same backbone) |" in md and "| pixels, mean-centred |" in md
        assert "paired over seeds" in md and "Welch" not in md
    for figure in record["figures"]:
        assert (out_dir / figure).read_bytes()[:4] == b"\x89PNG" and f"]({figure})" in md


def test_gsg_equal_compute_runs_one_method_with_only(run_cli, tmp_path):
    """``--only simsiam``: SimSiam's three variants, their paired differences, no BYOL row."""
    out_dir = tmp_path / "ec"
    code, _, err = run_cli("reproduce", "gsg-equal-compute", "--budget", "smoke", "--seeds", "1", "--out",
                           str(out_dir), "--only", "simsiam")
    assert code == 0, err
    record = json.loads((out_dir / "results.json").read_text())
    assert [c["name"] for c in record["configurations"]] == ["simsiam-v4-e1", "simsiam-v2-e1", "simsiam-v2-e2"]
    md = (out_dir / "results.md").read_text()
    assert "| SimSiam w/ GSG | 2 views 2E − 4 views E (equal compute) |" in md and "| BYOL w/ GSG |" not in md
    assert sorted(p.name for p in (out_dir / "runs").iterdir()) == [
        "simsiam-v2-e1-seed0", "simsiam-v2-e2-seed0", "simsiam-v4-e1-seed0"]


def test_an_interrupted_experiment_reuses_its_finished_runs(run_cli, tmp_path):
    out_dir = tmp_path / "nopred"
    argv = ("reproduce", "gsg-no-predictor", "--budget", "smoke", "--seeds", "1", "--out", str(out_dir))
    assert run_cli(*argv)[0] == 0
    first = json.loads((out_dir / "results.json").read_text())
    code, _, err = run_cli(*argv)  # the same command again: every run is read back, none retrained
    assert code == 0, err
    again = json.loads((out_dir / "results.json").read_text())
    for a, b in zip(first["configurations"], again["configurations"]):
        assert b["runs"][0]["reused"] is True and b["runs"][0]["knn_top1"] == a["runs"][0]["knn_top1"]
