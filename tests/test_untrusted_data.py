"""Data files never run code, and a malformed one is one line naming the file and what is wrong.

The crafted CIFAR folder of these tests holds pickles whose ``__reduce__`` would create a marker
file; the tests check the marker never appears.
"""
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from stopgrad.data import DataError, load_dataset
from stopgrad.data.datasets import load_batch_file

CIFAR10 = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels")


class RunsCode:
    """A pickle that, when loaded by ``pickle.load``, calls os.system to create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_folder(root: Path, content=None, files=None, n: int = 4) -> Path:
    """A CIFAR-10 python-batch folder; ``content(name)`` gives a batch's object (default: well formed)."""
    folder = root / CIFAR10[0]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in files or CIFAR10[1]:
        batch = content(name) if content else {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                               "labels": [int(v) for v in rng.integers(0, 10, n)],
                                               "batch_label": name, "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def test_a_crafted_cifar_folder_is_refused_and_its_code_never_runs(tmp_path, run_cli):
    marker = tmp_path / "code-ran"
    cifar_folder(tmp_path, lambda name: {"data": RunsCode(marker), "labels": [0]})
    code, out, err = run_cli("train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out",
                             str(tmp_path / "run"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "data_batch_1 was refused" in err and "could run code" in err and "system" in err
    assert not marker.exists() and not (tmp_path / "run").exists()
    # the same file through plain pickle would have run it: the test's crafted file is a real threat
    pickle.load(open(tmp_path / CIFAR10[0] / "data_batch_1", "rb"))
    assert marker.exists()


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen", "numpy.load",
                                    "torch.load", "builtins.getattr"])
def test_no_global_outside_plain_data_and_arrays_is_looked_up(tmp_path, target):
    module, name = target.rsplit(".", 1)
    # protocol-0 GLOBAL + REDUCE by hand: calls module.name("x") when unpickled with pickle.load
    (tmp_path / "b").write_bytes(f"c{module}\n{name}\n(S'x'\ntR.".encode())
    with pytest.raises(DataError, match=rf"was refused: it asks to call {module}.{name}"):
        load_batch_file(tmp_path / "b")


def test_own_copies_load_after_the_checks_and_say_they_are_not_the_official_files(tmp_path):
    cifar_folder(tmp_path)
    data = load_dataset("cifar10", str(tmp_path), download=False)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert len(data.notes) == 1 and "6 of the batch files differ from the official cifar10 release" in data.notes[0]


def test_the_official_checksums_are_torchvisions():
    from stopgrad.data.datasets import _official_md5
    md5 = _official_md5("CIFAR10")
    assert md5["data_batch_1"] == "c99cafc152244af753f735de768cd75f" and md5["test_batch"] == \
        "40351d587109b95175f43aff81a1287e"
    assert set(_official_md5("CIFAR100")) == {"train", "test", "meta"}


def test_files_with_the_official_checksums_load_without_a_note(tmp_path, monkeypatch):
    folder = cifar_folder(tmp_path)
    from stopgrad.data import datasets
    sums = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in CIFAR10[1]}
    monkeypatch.setattr(datasets, "_official_md5", lambda name: sums)
    assert load_dataset("cifar10", str(tmp_path), download=False).notes == ()


MALFORMED = {
    "data of the wrong size": (lambda n: {"data": np.zeros(1, np.uint8), "labels": [0]},
                               "'data' must be uint8 rows of 3x32x32 = 3072 values, found uint8 of shape (1,)"),
    "float data": (lambda n: {"data": np.zeros((2, 3072)), "labels": [0, 1]}, "found float64"),
    "labels out of range": (lambda n: {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},
                            "labels range over 0..10, expected 0..9"),
    "negative labels": (lambda n: {"data": np.zeros((2, 3072), np.uint8), "labels": [-1, 3]}, "range over -1..3"),
    "fewer labels than images": (lambda n: {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]},
                                 "3 images but 2 labels"),
    "labels that are not numbers": (lambda n: {"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]},
                                    "labels must be whole numbers"),
    "no labels key": (lambda n: {"data": np.zeros((2, 3072), np.uint8)}, "expected a dict with 'data' and 'labels'"),
    "not a dict": (lambda n: [1, 2, 3], "expected a dict with 'data' and 'labels', found list"),
    "empty batch": (lambda n: {"data": np.zeros((0, 3072), np.uint8), "labels": []}, "no images"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_cifar_batch_is_one_line_naming_the_file(tmp_path, run_cli, case):
    make, needle = MALFORMED[case]
    cifar_folder(tmp_path, lambda name: make(name) if name == "data_batch_3" else {
        "data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    code, out, err = run_cli("train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out",
                             str(tmp_path / "run"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "data_batch_3" in err and needle in err, err
    assert not (tmp_path / "run").exists()


def test_a_corrupt_or_empty_batch_file_is_one_line(tmp_path):
    folder = cifar_folder(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch is not a readable CIFAR batch"):
        load_dataset("cifar10", str(tmp_path), download=False)
    (folder / "test_batch").write_bytes(b"")
    with pytest.raises(DataError, match="test_batch is not a readable CIFAR batch"):
        load_dataset("cifar10", str(tmp_path), download=False)


def write_idx(path: Path, array: np.ndarray, shape=None) -> None:
    shape = array.shape if shape is None else shape
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(int(s).to_bytes(4, "big") for s in shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def idx_folder(root: Path, train_labels=None, test_images=None) -> Path:
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (6, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte", np.arange(6) if train_labels is None else train_labels)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 28, 28)) if test_images is None
              else test_images)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(2))
    return root


@pytest.mark.parametrize("case,kwargs,needle", [
    ("labels out of range", {"train_labels": np.array([0, 1, 2, 3, 4, 12])}, "labels range over 0..12, expected 0..9"),
    ("count mismatch", {"train_labels": np.arange(5)}, "6 images but 5 labels"),
    ("images of another size", {"test_images": np.zeros((2, 20, 20))}, "holds (28, 28) images but"),
    ("labels file holding images", {"train_labels": np.zeros((6, 2))}, "labels must be one number per image"),
])
def test_malformed_idx_files_are_one_line(tmp_path, case, kwargs, needle):
    idx_folder(tmp_path, **kwargs)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", str(tmp_path), download=False)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_an_idx_header_declaring_huge_sizes_allocates_nothing(tmp_path):
    from stopgrad.data.datasets import read_idx
    write_idx(tmp_path / "x", np.zeros(16), shape=(2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1))
    with pytest.raises(DataError, match="is truncated: its header declares"):
        read_idx(tmp_path / "x")


def test_a_file_named_gz_that_is_not_gzip_is_one_line(tmp_path):
    from stopgrad.data.datasets import read_idx
    (tmp_path / "x.gz").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(DataError, match="x.gz cannot be read"):
        read_idx(tmp_path / "x.gz")


@pytest.mark.parametrize("text,needle", [
    ("epochs: ten\n", "epochs must be a whole number, got 'ten'"),
    ("lr: [0.1, 0.2]\n", "lr must be a number or null"),
    ("vicreg_weights: [1, 2]\n", "vicreg_weights must be 3 numbers"),
    ("method: 3\n", "method must be a string"),
    ("amp: maybe\n", "amp must be true or false or null"),
])
def test_yaml_values_of_the_wrong_type_are_one_line(tmp_path, run_cli, text, needle):
    (tmp_path / "c.yaml").write_text(text)
    code, _, err = run_cli("train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_a_damaged_metrics_file_is_one_line_for_compare(tmp_path, run_cli):
    code, _, err = run_cli("train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--batch-size", "64",
                           "--knn-k", "20", "--no-progress", "--no-eval-geometry", "--out", str(tmp_path / "run"))
    assert code == 0, err
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": \n')
    code, _, err = run_cli("compare", str(tmp_path / "run"), "--out", str(tmp_path / "c.png"))
    assert code == 2 and "metrics.jsonl, line 3, is not a JSON object" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "run" / "config.yaml").write_bytes(b"\xff\xfe\x00garbage: [")
    code, _, err = run_cli("eval", "knn", "--run", str(tmp_path / "run"))
    assert code == 2 and "config.yaml is not readable YAML" in err and len(err.strip().splitlines()) == 1
