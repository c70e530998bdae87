"""Bad input, table-driven: every case ends with one line on stderr naming the problem and the fix,
exit code 2, no traceback, and nothing already written is changed."""
import errno
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["--dataset", "digits", "--width", "4", "--epochs", "1", "--batch-size", "64", "--knn-k", "20",
        "--no-progress", "--no-eval-geometry"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs to resume or evaluate: byol width 4, simclr width 4, byol width 8."""
    from stopgrad.cli import main
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("byol", []), ("simclr", ["--method", "simclr"]), ("wide", ["--width", "8"])):
        assert main(["train", *TINY, *extra, "--out", str(root / name)]) == 0
    return root


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def truncated_idx(tmp: Path) -> list[str]:
    src = Path("/usr/share/datasets/fashion-mnist")
    if not (src / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(src / name, tmp / name)
    raw = gzip.open(src / "train-images-idx3-ubyte.gz").read()
    (tmp / "train-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    return ["train", "--data-dir", str(tmp), "--epochs", "1", "--out", str(tmp / "out")]


def image_folder(tmp: Path, corrupt: bool) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            d = tmp / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (tmp / "imgs" / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp / "imgs"


def folder_args(tmp: Path, corrupt: bool, strict: bool) -> list[str]:
    root = image_folder(tmp, corrupt)
    return ["train", "--dataset", f"folder:{root}", "--image-size", "8", "--width", "4", "--batch-size", "4",
            "--epochs", "1", "--knn-k", "3", "--no-progress", "--no-eval-geometry", "--out", str(tmp / "out")] + \
        (["--strict-data"] if strict else [])


def copied_checkpoint(runs: Path, tmp: Path, source: str, target: str) -> list[str]:
    run = tmp / target
    shutil.copytree(runs / target, run)
    shutil.copy(runs / source / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    return ["train", "--resume", str(run)]


def yaml_file(tmp: Path, text: str) -> list[str]:
    (tmp / "c.yaml").write_text(text)
    return ["train", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "out")]


def under_a_file(tmp: Path) -> list[str]:
    (tmp / "a-file").write_text("not a folder")
    return ["train", *TINY, "--out", str(tmp / "a-file" / "run")]


CASES = {
    "data directory missing": (lambda t, r: ["train", "--data-dir", str(t / "nowhere"), "--out", str(t / "out")],
                               "does not exist; pass an existing --data-dir"),
    "IDX file truncated": (lambda t, r: truncated_idx(t), "is truncated"),
    "corrupt image, --strict-data": (lambda t, r: folder_args(t, True, True), "broken.png"),
    "empty image folder": (lambda t, r: ["train", "--dataset", f"folder:{(t / 'empty').mkdir() or t / 'empty'}",
                                         "--out", str(t / "out")], "expected one sub-folder of images per class"),
    "image folder missing": (lambda t, r: ["train", "--dataset", f"folder:{t / 'none'}", "--out", str(t / "o")],
                             "does not exist"),
    "unknown method": (lambda t, r: ["train", "--method", "simsam"], "invalid choice: 'simsam'"),
    "unknown policy": (lambda t, r: ["train", "--stopgrad", "guide"], "invalid choice: 'guide'"),
    "unknown backbone": (lambda t, r: ["train", "--backbone", "resnet19"], "invalid choice: 'resnet19'"),
    "unknown preset": (lambda t, r: ["train", "--config", "cifar10/byol"], "config cifar10/byol not found"),
    "unknown dataset": (lambda t, r: ["train", "--dataset", "mnist"], "invalid dataset 'mnist'"),
    "misspelt config key": (lambda t, r: yaml_file(t, "bach_size: 32\n"), "did you mean 'batch_size'?"),
    "config file not YAML": (lambda t, r: yaml_file(t, "lr: [0.1\n"), "is not valid YAML"),
    "zero learning rate": (lambda t, r: ["train", "--lr", "0"], "lr must be positive"),
    "negative learning rate": (lambda t, r: ["train", "--lr", "-0.1"], "lr must be positive"),
    "zero epochs": (lambda t, r: ["train", "--epochs", "0"], "epochs must be positive"),
    "negative batch size": (lambda t, r: ["train", "--batch-size", "-8"], "batch_size must be positive"),
    "batch too small for GSG pairing": (lambda t, r: ["train", "--batch-size", "1"],
                                        "every image needs a partner image in its batch"),
    "three views": (lambda t, r: ["train", "--views", "3"], "invalid choice: 3"),
    "subset larger than the data": (lambda t, r: ["train", *TINY, "--train-subset", "5000", "--out", str(t / "o")],
                                    "train_subset 5000 exceeds the 1437 training images"),
    "zero checkpoint interval": (lambda t, r: ["train", "--checkpoint-every", "0"], "checkpoint_every must be"),
    "negative NaN skips": (lambda t, r: ["train", "--max-nan-skips", "-1"], "max_nan_skips must be >= 0"),
    "resume with other settings": (lambda t, r: ["train", "--resume", str(r / "byol"), "--method", "simclr"],
                                   "drop --method"),
    "resume a folder that is no run": (lambda t, r: ["train", "--resume", str(t)], "is not a run directory"),
    "checkpoint of another method": (lambda t, r: copied_checkpoint(r, t, "simclr", "byol"),
                                     "written by a run with method 'simclr'"),
    "checkpoint of another backbone width": (lambda t, r: copied_checkpoint(r, t, "wide", "byol"),
                                             "written by a run with width 8"),
    "output directory not writable": (lambda t, r: under_a_file(t), "cannot write to the run directory"),
    "CUDA without a GPU": (lambda t, r: ["train", "--device", "cuda", *TINY, "--out", str(t / "o")],
                           "no CUDA device is available"),
    "evaluate a folder that is no run": (lambda t, r: ["eval", "knn", "--run", str(t)], "is not a run directory"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, runs, tmp_path, run_cli):
    import torch
    if case == "CUDA without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make, needle = CASES[case]
    argv = make(tmp_path, runs)
    before_runs, before_tmp = snapshot(runs), snapshot(tmp_path)
    code, out, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (case, err)
    assert snapshot(runs) == before_runs  # no existing run was touched
    assert snapshot(tmp_path) == before_tmp and not (tmp_path / "out").exists()


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_unreadable_images_are_skipped_with_a_count(tmp_path, run_cli):
    code, out, err = run_cli(*folder_args(tmp_path, corrupt=True, strict=False))
    assert code == 0, err
    assert "skipped 1 unreadable image(s), the first: cannot decode image" in err and "broken.png" in err


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, run_cli, monkeypatch):
    from stopgrad import runs as run_files
    real, calls = run_files._write_checkpoint_file, {"n": 0}

    def full(state, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path)
    monkeypatch.setattr(run_files, "_write_checkpoint_file", full)
    code, _, err = run_cli("train", *TINY, "--epochs", "2", "--out", str(tmp_path / "run"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err
    assert "the previous checkpoint" in err and "is intact" in err
    import torch
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


def test_a_diverged_run_exits_with_code_3(tmp_path, run_cli, monkeypatch):
    from stopgrad.methods.siamese import Siamese
    original = Siamese.forward
    monkeypatch.setattr(Siamese, "forward", lambda self, *a, **k: (original(self, *a, **k)[0] * float("inf"), {}))
    code, _, err = run_cli("train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 3 and len(err.strip().splitlines()) == 1 and "--max-nan-skips" in err and "Traceback" not in err
