"""Pixel baselines (kNN on raw and mean-centred pixels, the fast probe on pixels) and their cache; the
time-to-accuracy bench; `stopgrad compare --x time`. All on scikit-learn's digits, tiny widths."""
import json
import os

import pytest
import torch.nn.functional as F

from stopgrad.data import load_dataset
from stopgrad.evaluate import baselines
from stopgrad.evaluate.baselines import pixel_baselines

CONFIG = ("--dataset", "digits", "--width", "4", "--epochs", "2", "--batch-size", "64", "--train-subset", "512",
          "--knn-k", "20")
TINY = (*CONFIG, "--no-progress")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, under a temporary XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "stopgrad" / "baselines"


def images(d):
    return d.train_x, d.train_y, d.test_x, d.test_y


def test_the_tests_never_write_the_users_cache():
    home = os.path.join(os.path.expanduser("~"), ".cache")
    assert not str(baselines.cache_dir()).startswith(home), baselines.cache_dir()


def test_pixel_knn_matches_a_brute_force_nearest_neighbour(digits, cache):
    """k = 1 on raw and centred pixels against an independent argmax of the cosine similarity matrix."""
    base = pixel_baselines(*images(digits), k=20, linear=False)
    x_train = digits.train_x.flatten(1).double() / 255
    x_test = digits.test_x.flatten(1).double() / 255
    for key, shift in (("knn1_top1", 0), ("centred_knn1_top1", x_train.mean(0))):
        sim = F.normalize(x_test - shift, dim=1) @ F.normalize(x_train - shift, dim=1).T
        expected = (digits.train_y[sim.argmax(1)] == digits.test_y).double().mean().item()
        assert base[key] == pytest.approx(expected, abs=1 / 360 + 1e-9), key  # a tie may fall either way
    assert base["k"] == 20 and base["bank"] == 1437 and "linear_top1" not in base


def test_the_pixel_probe_is_the_fast_probe_on_pixel_features(digits, cache):
    from stopgrad.evaluate.linear import fit_probe
    base = pixel_baselines(*images(digits), k=20)
    probe = fit_probe(digits.train_x.flatten(1).float() / 255, digits.train_y,
                      digits.test_x.flatten(1).float() / 255, digits.test_y)
    assert base["linear_top1"] == probe["top1"] and 0.9 < base["linear_top1"] <= 1


def test_the_cache_is_keyed_by_the_images_the_bank_k_and_t(digits, cache, monkeypatch):
    calls = []
    compute = baselines.compute_pixel_baselines
    monkeypatch.setattr(baselines, "compute_pixel_baselines", lambda *a, **kw: calls.append(a[4:]) or compute(*a, **kw))
    args = images(digits)
    first = pixel_baselines(*args, k=20, linear=False, name="digits")
    again = pixel_baselines(*args, k=20, linear=False, name="digits")
    assert (first["cached"], again["cached"], len(calls)) == (False, True, 1)
    assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    assert list(cache.iterdir()) == [cache / "digits.json"]
    changed = args[0].clone()
    changed[0, 0, 0, 0] ^= 1  # one pixel of one training image
    for other in ((changed, *args[1:]), (args[0][:500], args[1][:500], *args[2:])):  # a changed file, a subset
        assert pixel_baselines(*other, k=20, linear=False, name="digits")["cached"] is False
    assert pixel_baselines(*args, k=5, linear=False, name="digits")["cached"] is False
    assert pixel_baselines(*args, k=20, temperature=0.07, linear=False, name="digits")["cached"] is False
    assert len(calls) == 5
    entries = json.loads((cache / "digits.json").read_text())["entries"]
    assert len(entries) == 5  # one file per data set, one entry per key
    # the probe joins the entry, and a later kNN-only call returns it too
    with_probe = pixel_baselines(*args, k=20, name="digits")
    assert with_probe["cached"] is False and "linear_top1" in with_probe
    assert pixel_baselines(*args, k=20, linear=False, name="digits")["linear_top1"] == with_probe["linear_top1"]


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b'{"version": 1, "entries": {"x": 3}}', b"\xff\xfe"])
def test_a_damaged_cache_file_is_recomputed_not_a_crash(digits, cache, damage):
    cache.mkdir(parents=True)
    (cache / "digits.json").write_bytes(damage)
    base = pixel_baselines(*images(digits), k=20, linear=False, name="digits")
    assert base["cached"] is False and 0.9 < base["knn_top1"] <= 1
    assert pixel_baselines(*images(digits), k=20, linear=False, name="digits")["cached"] is True  # rewritten


def test_train_prints_keeps_and_reports_the_pixel_baselines(tmp_path, cache, run_cli):
    run = tmp_path / "run"
    code, out, err = run_cli("train", *TINY, "--out", str(run))
    assert code == 0, err
    lines = out.splitlines()
    init = next(i for i, line in enumerate(lines) if line.startswith("epoch 0 (random init)"))
    assert lines[init + 1].startswith("pixels: kNN top-1 0.") and "centred 0." in lines[init + 1]
    saved = json.loads((run / "baselines.json").read_text())["pixels"]
    assert saved["bank"] == 512 and saved["k"] == 20  # the run's train_subset is the bank
    summary = next(line for line in lines if line.startswith("kNN top-1:"))
    assert f"pixels: {saved['knn_top1']:.4f}, centred {saved['centred_knn_top1']:.4f}" in summary
    report = (run / "report.md").read_text()
    assert f"| pixels: kNN top-1, k = 20 / k = 1 (raw; mean-centred) | {100 * saved['knn_top1']:.2f}%" in report
    # stopgrad eval: the pixels beside the run's kNN and linear probe, in the result and the report
    code, out, err = run_cli("eval", "linear", "--run", str(run))
    assert code == 0, err
    result = json.loads(out)
    assert result["pixels"]["protocol"] == "fast" and 0.5 < result["pixels"]["top1"] <= 1
    assert f"(pixels: top-1 {100 * result['pixels']['top1']:.2f}%)" in (run / "report.md").read_text()
    code, out, err = run_cli("eval", "knn", "--run", str(run), "--k", "1", "20", "--no-save")
    assert code == 0 and json.loads(out)["pixels"]["knn_top1"] == saved["knn_top1"], err
    # resumed: the same baselines, read from the run directory
    from stopgrad.train import train
    from stopgrad.runs import read_config
    assert train(read_config(run), run, resume=True, quiet=True)["pixels"]["knn_top1"] == saved["knn_top1"]


def test_without_pixel_baselines_nothing_is_computed(tmp_path, cache, run_cli):
    code, out, err = run_cli("train", *TINY, "--epochs", "1", "--no-pixel-baselines", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "pixels" not in out and not (tmp_path / "r" / "baselines.json").exists() and not cache.exists()


def test_time_to_accuracy_trains_and_reports_minutes_per_target(tmp_path, cache, run_cli):
    run, out_json = tmp_path / "run", tmp_path / "tta.json"
    code, out, err = run_cli("bench", "--time-to-accuracy", *CONFIG, "--epochs", "3", "--targets", "0.05", "0.9999",
                             "--out", str(run), "--json", str(out_json))
    assert code == 0, err
    result = json.loads(out_json.read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in result["curve"]] == [0, 1, 2, 3]  # every epoch evaluated
    assert [p["train_seconds"] for p in result["curve"]] == [r["seconds"] for r in rows]
    low, high = result["targets"]
    assert (low["epoch"], low["train_seconds"]) == (0, 0.0)  # chance is beaten at initialisation
    assert high["epoch"] is None and "| 0.9999 | not reached |" in out
    assert result["pixels"]["linear_top1"] is not None and "pixels: kNN top-1" in out and "linear 0." in out
    assert "beats pixels" in out and result["config"]["eval_every"] == 1
    # the same figures read back from the trained run
    code, again, err = run_cli("bench", "--time-to-accuracy", "--run", str(run), "--targets", "0.05", "0.9999")
    assert code == 0, err
    table = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(again) == table(out)


@pytest.mark.parametrize("argv, needle", [
    (["--targets", "84"], "between 0 and 1"),
    (["--synthetic", "1x8x8"], "drop --synthetic"),
])
def test_bad_time_to_accuracy_input_is_one_line(tmp_path, run_cli, argv, needle):
    code, _, err = run_cli("bench", "--time-to-accuracy", *CONFIG, *argv, "--out", str(tmp_path / "r"))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("bench", "--targets", "0.8")
    assert code == 2 and "belong to --time-to-accuracy" in err


def test_compare_plots_against_training_minutes(tmp_path, cache, run_cli):
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--out", str(run))[0] == 0
    for x in ("time", "epoch"):
        png = tmp_path / f"{x}.png"
        code, out, err = run_cli("compare", str(run), "--x", x, "--out", str(png), "--metrics", "knn_top1")
        assert code == 0 and png.read_bytes()[:4] == b"\x89PNG", err
        assert "| pixels | (k = 20, 512 images) |" in out and "| pixels, mean-centred |" in out
    code, _, err = run_cli("compare", str(run), "--x", "steps")
    assert code == 2 and "invalid choice" in err


def test_the_pixel_rows_of_a_reproduce_table():
    from stopgrad.reproduce.training import pixel_rows
    config = {"runs": [{"pixels": {"knn_top1": 0.8, "knn1_top1": 0.85, "centred_knn_top1": 0.82,
                                   "centred_knn1_top1": 0.86, "linear_top1": 0.83}}] * 3}
    assert pixel_rows(config, {"1": "knn1_top1", "2": "knn_top1", "3": "linear_top1"}, 5) == [
        ["pixels (raw, same kNN / probe)", "85.00", "80.00", "83.00", "–"],
        ["pixels, mean-centred", "86.00", "82.00", "–", "–"]]
    assert pixel_rows({"runs": [{"pixels": {}}]}, {"1": "knn_top1"}, 2) == []
