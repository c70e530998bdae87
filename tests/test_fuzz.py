"""Property-based fuzzing of everything a user hands stopgrad: config files, command-line values, data
files (IDX, CIFAR batches, image folders) and the files of a run (checkpoint, backbone, metrics, config).

The invariant, whatever the input: the input is accepted, or the command exits with code 2 and one
line on stderr, without a traceback, writes nothing outside ``--out`` and leaves an existing run
directory as it was; a loader returns consistent data or raises ``DataError``, never anything else;
and no data file ever runs code.

Examples per test: the ``default`` profile (``tests/conftest.py``, derandomised, so CI is
deterministic); ``pytest --hypothesis-profile slow tests/test_fuzz.py`` tries many more.
"""
import contextlib
import gzip
import hashlib
import io
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from stopgrad.config import FIELDS, ConfigError, build_config
from stopgrad.data import DataError, load_dataset

# examples per test scale with the profile's max_examples (default or slow): the costly tests try fewer
EXAMPLES = settings.default.max_examples
FEW = max(4, EXAMPLES // 5)
TINY = ["--dataset", "digits", "--width", "4", "--epochs", "1", "--batch-size", "64", "--knn-k", "20",
        "--no-progress", "--no-eval-geometry", "--no-pixel-baselines", "--log", "jsonl"]


class Accepted(Exception):
    """Raised instead of training: the command line got past every check."""


def cli(*argv, train_stub=False) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr); with ``train_stub`` training raises :class:`Accepted`."""
    from stopgrad import train as train_module
    from stopgrad.cli import main
    err = io.StringIO()
    real = train_module.train
    if train_stub:
        def stub(*args, **kwargs):
            raise Accepted
        train_module.train = stub
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:
                code = exc.code
    finally:
        train_module.train = real
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


# --------------------------------------------------------------------------------------- configs
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.one_of(st.integers(-5, 5), st.floats(-10, 10), st.text(max_size=3)), max_size=4))
KEYS = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=12))


@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_yaml_config_is_accepted_or_one_config_error(values):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(values))
        try:
            cfg = build_config(str(path))
        except ConfigError as exc:
            assert "\n" not in str(exc)
            code, err = cli("train", "--config", path, "--out", Path(tmp) / "run", train_stub=True)
            assert_one_line_error(code, err)
            assert not (Path(tmp) / "run").exists()
        else:
            assert cfg.validate() is cfg


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_config_file_are_accepted_or_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(raw)
        try:
            build_config(str(path))
        except ConfigError as exc:
            assert "\n" not in str(exc)


# --------------------------------------------------------------------------------------- command line
def value_flags() -> list[str]:
    """Every `stopgrad train` flag that takes a value."""
    from stopgrad.cli import make_parser
    train = make_parser()._subparsers._group_actions[0].choices["train"]
    return sorted(o for a in train._actions if a.option_strings and a.nargs is None and a.const is None
                  and a.dest not in ("help", "config", "resume", "out") for o in a.option_strings if o.startswith("--"))


FLAG_VALUES = st.one_of(st.text(max_size=10), st.integers(-10 ** 6, 10 ** 6).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(str),
                        st.sampled_from(["0", "-1", "1e309", "nan", "inf", "", "1,2", "a,b,c", "cuda:9", "folder:"]))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(value_flags()), FLAG_VALUES), min_size=1, max_size=3))
def test_any_flag_values_are_accepted_or_one_line(pairs):
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", *(x for pair in pairs for x in pair), "--out", Path(tmp) / "run"]
        try:
            code, err = cli(*argv, train_stub=True)
        except Accepted:
            return
        assert_one_line_error(code, err)
        assert not (Path(tmp) / "run").exists()


# --------------------------------------------------------------------------------------- IDX files
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


_rng = np.random.default_rng(0)
IDX = {"train-images-idx3-ubyte": idx_bytes(_rng.integers(0, 256, (12, 28, 28))),
       "train-labels-idx1-ubyte": idx_bytes(np.arange(12) % 10),
       "t10k-images-idx3-ubyte": idx_bytes(_rng.integers(0, 256, (4, 28, 28))),
       "t10k-labels-idx1-ubyte": idx_bytes(np.arange(4))}


@st.composite
def damage(draw, raw: bytes, idx: bool = False) -> tuple[bytes, bool]:
    """(damaged bytes, whether the damage certainly makes an IDX file invalid)."""
    kinds = ["truncate", "flip", "empty", "append"] + (["magic", "huge"] if idx else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))], True
    if kind == "empty":
        return b"", True
    if kind == "append":
        return raw + draw(st.binary(min_size=1, max_size=16)), True
    data = bytearray(raw)
    if kind == "magic":
        data[draw(st.integers(0, 2))] ^= draw(st.integers(1, 255))
        return bytes(data), True
    if kind == "huge":  # one declared dimension far larger than the file
        i = draw(st.integers(0, data[3] - 1))
        data[4 + 4 * i:8 + 4 * i] = draw(st.integers(2 ** 20, 2 ** 32 - 1)).to_bytes(4, "big")
        return bytes(data), True
    for position in draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=8)):
        data[position // 8] ^= 1 << (position % 8)
    return bytes(data), False


@st.composite
def damaged_idx(draw):
    name = draw(st.sampled_from(sorted(IDX)))
    raw, invalid = draw(damage(IDX[name], idx=True))
    return name, raw, invalid, draw(st.booleans())


def check_loaded(data, classes: int) -> None:
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert x.ndim == 4 and len(x) == len(y) > 0 and int(y.min()) >= 0 and int(y.max()) < classes


@given(damaged_idx())
def test_a_damaged_idx_file_loads_consistently_or_is_one_data_error(case):
    name, raw, invalid, gz = case
    with tempfile.TemporaryDirectory() as tmp:
        for other, content in IDX.items():
            content = raw if other == name else content
            if gz:
                with gzip.open(Path(tmp) / f"{other}.gz", "wb") as f:
                    f.write(content)
            else:
                (Path(tmp) / other).write_bytes(content)
        try:
            data = load_dataset("fashion-mnist", tmp, download=False)
        except DataError as exc:
            assert "\n" not in str(exc) and name in str(exc)
            return
        assert not invalid, "a certainly invalid file was accepted"
        check_loaded(data, 10)


@settings(max_examples=FEW, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged_idx().filter(lambda case: case[2]))
def test_a_damaged_idx_file_ends_train_in_one_line_and_leaves_the_run_untouched(finished_run, case):
    name, raw, _, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        for other, content in IDX.items():
            (Path(tmp) / other).write_bytes(raw if other == name else content)
        before = snapshot(finished_run)
        code, err = cli("train", "--data-dir", tmp, "--out", Path(tmp) / "run", "--no-progress")
        assert_one_line_error(code, err)
        assert not (Path(tmp) / "run").exists()
        code, err = cli("eval", "transfer", "--run", finished_run, "--target", "fashion-mnist", "--data-dir", tmp)
        assert_one_line_error(code, err)
        assert snapshot(finished_run) == before


# --------------------------------------------------------------------------------------- CIFAR batches
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_batch(n: int = 3, protocol: int = 2) -> bytes:
    rng = np.random.default_rng(n)
    return pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n)], "batch_label": "b"}, protocol=protocol)


class Payload:
    """Pickles to a call of ``func(*args)``: what a crafted batch does to run code."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> list:
    import builtins
    import subprocess
    return [Payload(os.system, (f"touch {marker}",)), Payload(builtins.exec, (f"open({str(marker)!r}, 'w')",)),
            Payload(builtins.eval, (f"open({str(marker)!r}, 'w')",)), Payload(Path.touch, (marker,)),
            Payload(subprocess.call, (["touch", str(marker)],)), Payload(builtins.open, (str(marker), "w")),
            Payload(shutil.copy, (__file__, str(marker)))]


def write_cifar(root: Path, files: dict[str, bytes]) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR_FILES:
        (folder / name).write_bytes(files.get(name, cifar_batch()))


@given(st.sampled_from(CIFAR_FILES), st.integers(0, 6), st.sampled_from(["data", "labels", "nested", "top"]),
       st.integers(0, 5))
def test_no_crafted_cifar_batch_runs_code(name, which, where, protocol):
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "code-ran"
        payload = payloads(marker)[which]
        batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
        if where == "top":
            content = payload
        elif where == "nested":
            content = {**batch, "extra": [1, {"x": (payload,)}]}
        else:
            content = {**batch, where: payload}
        write_cifar(Path(tmp), {name: pickle.dumps(content, protocol=protocol)})
        with pytest.raises(DataError, match=f"{name} was refused"):
            load_dataset("cifar10", tmp, download=False)
        assert not marker.exists()


@given(st.sampled_from(CIFAR_FILES), st.integers(0, 5).flatmap(lambda p: damage(cifar_batch(protocol=p))))
def test_a_damaged_cifar_batch_loads_consistently_or_is_one_data_error(name, damaged):
    raw, _ = damaged
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(Path(tmp), {name: raw})
        try:
            data = load_dataset("cifar10", tmp, download=False)
        except DataError as exc:
            assert "\n" not in str(exc) and name in str(exc)
            return
        check_loaded(data, 10)


# --------------------------------------------------------------------------------------- image folders
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]


@st.composite
def image_file(draw) -> bytes:
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    try:
        image.save(out, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # PIL cannot write this mode in this format
    raw = out.getvalue()
    how = draw(st.sampled_from(["intact", "intact", "truncate", "flip", "empty", "bomb"]))
    if how == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if how == "empty":
        return b""
    if how == "bomb" and fmt == "PNG":  # a header declaring 60000 x 60000 pixels
        data = bytearray(raw)
        data[16:24] = (60000).to_bytes(4, "big") * 2
        return bytes(data)
    if how == "flip":
        data = bytearray(raw)
        for position in draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=6)):
            data[position // 8] ^= 1 << (position % 8)
        return bytes(data)
    return raw


@settings(max_examples=max(FEW, EXAMPLES // 2), suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(image_file(), min_size=1, max_size=6), st.booleans())
def test_an_image_folder_of_odd_files_loads_the_readable_ones_or_is_one_data_error(files, strict):
    with tempfile.TemporaryDirectory() as tmp:
        for i, raw in enumerate(files):
            d = Path(tmp) / ("train" if i % 3 else "val") / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.img").write_bytes(raw)
        try:
            data = load_dataset(f"folder:{tmp}", image_size=16, strict=strict)
        except DataError as exc:
            assert "\n" not in str(exc)
            return
        assert data.train_x.shape[1:] == (3, 16, 16) and data.train_x.dtype.is_floating_point is False
        assert len(data.train_x) + len(data.test_x) + len(data.skipped) == len(files)
        assert not (strict and data.skipped)


# --------------------------------------------------------------------------------------- a run's own files
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    code, err = cli("train", *TINY, "--epochs", "2", "--out", run)
    assert code == 0, err
    return run


RUN_FILES = ["checkpoints/last.pt", "checkpoints/previous.pt", "backbone.safetensors", "metrics.jsonl",
             "config.yaml"]
COMMANDS = {"resume": lambda run: ["train", "--resume", run, "--no-progress"],
            "knn": lambda run: ["eval", "knn", "--run", run, "--no-save", "--k", "5"],
            "compare": lambda run: ["compare", run, "--out", Path(run).parent / "c.png"]}


@settings(max_examples=max(FEW, EXAMPLES // 2), suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(RUN_FILES), st.sampled_from(sorted(COMMANDS)), st.data())
def test_a_damaged_run_file_is_used_or_one_line_and_the_run_is_untouched(finished_run, name, command, data):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(finished_run, run)
        if not (run / name).is_file():
            return
        raw, _ = data.draw(damage((run / name).read_bytes()))
        (run / name).write_bytes(raw)
        before = snapshot(run)
        code, err = cli(*COMMANDS[command](run))
        assert "Traceback" not in err, err
        if code != 0:
            assert_one_line_error(code, err)
            assert snapshot(run) == before
        assert {p.name for p in Path(tmp).iterdir()} <= {"run", "c.png"}  # nothing outside it
