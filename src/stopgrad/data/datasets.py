"""Data sets as uint8 images (N, C, H, W) with in-memory integer labels.

Fashion-MNIST is read from IDX files (Debian's ``dataset-fashion-mnist`` installs them in
/usr/share/datasets/fashion-mnist), CIFAR-10/100 from the standard python-pickle batches, and
``folder:PATH`` from an image tree with one sub-folder per class. Images are in-memory tensors,
except for image folders too large for that: those stay on disk as ``stream.FolderImages``, read
batch by batch with ``stream.iter_batches``. Downloads (when the files are missing and the network
is reachable) go through torchvision, which verifies checksums.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .stream import FolderImages

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits", "folder:PATH")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stopgrad"
# (channels, side) of the built-in data sets' images, for building a model without loading them;
# image folders are read as RGB at --image-size, FOLDER_SIDE by default
SHAPES = {"fashion-mnist": (1, 28), "digits": (1, 8), "cifar10": (3, 32), "cifar100": (3, 32)}
FOLDER_SIDE = 64
STREAM_BYTES = 2 * 1024 ** 3  # image folders whose decoded training split is larger stay on disk


class DataError(Exception):
    """A data set cannot be found or read; the message says how to fix it.

    >>> sg.load_dataset("mnist")
    Traceback (most recent call last):
    ...
    stopgrad.data.datasets.DataError: unknown dataset 'mnist'; choose one of fashion-mnist, cifar10, ...
    """


@dataclass
class ImageData:
    """A labelled data set: uint8 images (N, C, H, W) and int64 labels (N,) of a train and a test split.

    ``mean`` and ``std`` are the per-channel normalisation the images are fed with; ``channels``,
    ``image_size`` (W) and ``num_classes`` (the largest label + 1) are read off the tensors.

    >>> x = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    >>> y = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> data = sg.ImageData("toy", x[:4], y[:4], x[4:], y[4:], mean=(0.5,), std=(0.25,))
    >>> data.channels, data.image_size, data.num_classes
    (1, 8, 3)
    """
    name: str
    train_x: torch.Tensor | FolderImages  # (N, C, H, W) uint8, in memory or streamed from disk
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor | FolderImages
    test_y: torch.Tensor
    mean: tuple[float, ...]  # per-channel normalisation
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None  # class names, label i is classes[i], where known
    skipped: tuple[str, ...] = ()  # why each unreadable file was left out (image folders)
    notes: tuple[str, ...] = ()  # what a user should know about the files (e.g. not the official release)

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return int(max(y.max() for y in (self.train_y, self.test_y) if len(y))) + 1


def _data_dirs(data_dir: str | None, default: list[Path]) -> list[Path]:
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise DataError(f"data directory {data_dir} does not exist; pass an existing --data-dir")
        return [Path(data_dir)]
    env = os.environ.get("STOPGRAD_DATA")
    return ([Path(env)] if env else []) + default


def _download(what: str, fetch) -> None:
    """Run a torchvision download with a short network time-out; explain failure in one line."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        fetch()
    except Exception as exc:  # no network, refused, checksum mismatch
        raise DataError(f"{what}; download failed ({type(exc).__name__}: {str(exc)[:80]})") from None
    finally:
        socket.setdefaulttimeout(old)


# ---------------------------------------------------------------- Fashion-MNIST (IDX)
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 TYPE NDIM, big-endian sizes, data.

    Only unsigned-byte files (TYPE 0x08) are read. A file that is not gzip when its name says so,
    has another magic number, declares sizes that do not match its length, or is truncated is a
    :class:`DataError` naming the file; nothing larger than the file itself is ever allocated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                        "replace it with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (wrong magic number); "
                        "replace it with an intact copy")
    ndim = raw[3]
    if not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is not a valid IDX file ({ndim} dimensions declared in a {len(raw)}-byte file)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected, found = math.prod(shape), len(raw) - 4 - 4 * ndim  # Python ints: no overflow
    if expected != found:
        what = "truncated" if expected > found else "longer than its header says"
        raise DataError(f"{path} is {what}: its header declares {'x'.join(map(str, shape))} = {expected} values, "
                        f"the file holds {found}; replace it with an intact copy")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def check_images_and_labels(images: np.ndarray, labels: np.ndarray, where: str, num_classes: int | None = None
                            ) -> None:
    """One-line :class:`DataError` unless ``images`` (N, ...) and ``labels`` (N,) describe one labelled split.

    ``where`` names the file(s) in the message; labels must be whole numbers in [0, num_classes)
    (non-negative when ``num_classes`` is None).
    """
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be one number per image, found an array of shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; the files do not belong together")
    if len(labels) == 0:
        raise DataError(f"{where}: no images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be whole numbers, found {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise DataError(f"{where}: labels range over {low}..{high}, expected {allowed}")


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for sub in (d, d / "FashionMNIST" / "raw"):
            for name in (stem, stem + ".gz"):
                if (sub / name).is_file():
                    return sub / name
    return None


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def load_fashion_mnist(data_dir: str | None = None, download: bool = True) -> ImageData:
    dirs = _data_dirs(data_dir, [DEBIAN_FASHION_MNIST, CACHE / "fashion-mnist"])
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(dirs, s) for s in stems]
    if None in paths and download and data_dir is None:
        from torchvision.datasets import FashionMNIST
        hint = ("Fashion-MNIST not found in " + ", ".join(map(str, dirs)) +
                ": install it with `sudo apt-get install dataset-fashion-mnist` or pass --data-dir")
        _download(hint, lambda: [FashionMNIST(CACHE / "fashion-mnist", train=t, download=True) for t in (True, False)])
        paths = [_find_idx(dirs, s) for s in stems]
    if None in paths:
        raise DataError(f"Fashion-MNIST IDX files not found in {', '.join(map(str, dirs))}: install them with "
                        "`sudo apt-get install dataset-fashion-mnist` or pass --data-dir")
    arrays = [read_idx(p) for p in paths]
    for images, labels, (ip, lp) in ((arrays[0], arrays[1], paths[:2]), (arrays[2], arrays[3], paths[2:])):
        if images.ndim != 3 or min(images.shape[1:]) == 0:
            raise DataError(f"{ip} must hold images (N, H, W), found shape {images.shape}; "
                            "replace it with an intact copy")
        check_images_and_labels(images, labels, f"{ip} / {lp.name}", len(FASHION_MNIST_CLASSES))
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataError(f"{paths[0]} holds {arrays[0].shape[1:]} images but {paths[2]} holds {arrays[2].shape[1:]}")
    tx, ty, vx, vy = (torch.from_numpy(a.copy()) for a in arrays)
    return ImageData("fashion-mnist", tx[:, None], ty.long(), vx[:, None], vy.long(),
                     mean=(0.2860,), std=(0.3530,), classes=FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------- CIFAR (python pickle batches)
_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], label="labels", tv="CIFAR10", meta=("batches.meta", "label_names"),
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], label="fine_labels",
                     meta=("meta", "fine_label_names"),
                     tv="CIFAR100", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what the official CIFAR batches hold and nothing else: dicts, lists, strings, bytes,
    numbers and numpy arrays. Any other global (a function, a class: what a crafted pickle calls to
    run code) is refused before it is looked up, so no code in the file can run."""

    # what numpy arrays pickle to (protocols 0-5, numpy 1 and 2), and Python 3's bytes at protocol < 3
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("core.multiarray", "_reconstruct"),
               ("core.multiarray", "scalar"), ("core.numeric", "_frombuffer"), ("_codecs", "encode"),
               ("builtins", "bytes"), ("__builtin__", "bytes")}

    def find_class(self, module: str, name: str):
        numpy_core = module.startswith(("numpy.core.", "numpy._core."))  # numpy 2 moved numpy.core to numpy._core
        inner = module.removeprefix("numpy._").removeprefix("numpy.") if numpy_core else module
        if (inner, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if module == "numpy":
            return getattr(np, name)
        if not numpy_core:
            return super().find_class(module, name)
        core = getattr(np, "_core", None) or np.core
        return getattr(getattr(core, inner.split(".")[1]), name)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_batch_file(path: Path):
    """The content of one CIFAR python batch file, read by a restricted unpickler (no code runs).

    Raises :class:`DataError` naming the file when it holds anything but plain data and numpy
    arrays, or is not a readable pickle.
    """
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "refused global" in str(exc):
            raise DataError(f"{path} was refused: it asks to call {str(exc).removeprefix('refused global ')}, which "
                            "a CIFAR batch never does, and loading it could run code; use the official "
                            "python batches") from None
        raise DataError(f"{path} is not a readable CIFAR batch (corrupt pickle: {_first_line(exc)})") from None
    except Exception as exc:  # whatever a damaged stream makes the admitted constructors raise
        raise DataError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {_first_line(exc)})") from None


def _read_cifar_batches(folder: Path, names: list[str], label_key: str, num_classes: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        batch = load_batch_file(path)
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            found = sorted(map(str, batch))[:6] if isinstance(batch, dict) else type(batch).__name__
            raise DataError(f"{path} is not a CIFAR batch: expected a dict with 'data' and '{label_key}', found "
                            f"{found}")
        try:
            data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: 'data' and '{label_key}' must be arrays ({_first_line(exc)})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' must be uint8 rows of 3x32x32 = 3072 values, found {data.dtype} "
                            f"of shape {data.shape}")
        check_images_and_labels(data, labels, str(path), num_classes)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _official_md5(tv_name: str) -> dict[str, str]:
    """File name -> md5 of the official release, from torchvision's data set definitions."""
    import torchvision.datasets as tvd
    cls = getattr(tvd, tv_name)
    return {**dict(cls.train_list), **dict(cls.test_list), cls.meta["filename"]: cls.meta["md5"]}


def load_cifar(name: str, data_dir: str | None = None, download: bool = True) -> ImageData:
    """CIFAR-10/100 from the python batches, read with a restricted unpickler and checked.

    Files that differ from the official release (by md5) are loaded after the same checks, and the
    returned :class:`ImageData` says so in ``notes``.
    """
    spec = _CIFAR[name]
    dirs = _data_dirs(data_dir, [CACHE / name])

    def locate() -> Path | None:
        for d in dirs:
            for folder in (d / spec["folder"], d):
                if all((folder / n).is_file() for n in spec["train"] + spec["test"]):
                    return folder
        return None

    folder = locate()
    if folder is None and download:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive
        cls, root = getattr(tvd, spec["tv"]), dirs[0]
        hint = f"{name} batches ({spec['folder']}/) not found in {', '.join(map(str, dirs))}: pass --data-dir"
        _download(hint, lambda: download_and_extract_archive(cls.url, str(root), filename=cls.filename,
                                                             md5=cls.tgz_md5))
        folder = locate()
    if folder is None:
        raise DataError(f"{name} batches ({spec['folder']}/) not found in {', '.join(map(str, dirs))}: "
                        "pass --data-dir pointing at the extracted python version")
    classes = 10 if name == "cifar10" else 100
    tx, ty = _read_cifar_batches(folder, spec["train"], spec["label"], classes)
    vx, vy = _read_cifar_batches(folder, spec["test"], spec["label"], classes)
    official = _official_md5(spec["tv"])
    changed = [n for n in spec["train"] + spec["test"] if _md5(folder / n) != official[n]]
    notes = (f"{folder}: {len(changed)} of the batch files differ from the official {name} release "
             f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); loaded after checking their "
             "content",) if changed else ()
    return ImageData(name, tx, ty, vx, vy, spec["mean"], spec["std"], _cifar_classes(folder, spec["meta"], classes),
                     notes=notes)


def _cifar_classes(folder: Path, meta: tuple[str, str], count: int) -> tuple[str, ...] | None:
    """Class names from the batches' meta file, when it is there and holds ``count`` names."""
    if not (folder / meta[0]).is_file():
        return None
    try:
        names = load_batch_file(folder / meta[0])
    except DataError as exc:
        if "was refused" in str(exc):  # carrying code is an error, as for a batch
            raise
        return None
    names = names.get(meta[1]) if isinstance(names, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != count or not all(isinstance(n, str) for n in names):
        return None  # names are a nicety: a meta file without them is ignored
    return tuple(names)


# ---------------------------------------------------------------- scikit-learn digits
def load_digits_data() -> ImageData:
    """scikit-learn's 1,797 8x8 digits (values 0-16 scaled to 0-255); a fixed 80/20 split."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return ImageData("digits", x[tr], y[tr], x[te], y[te], mean=(0.3,), std=(0.38,))


# ---------------------------------------------------------------- image folders
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _list_folder(root: Path, size: int, classes: list[str] | None) -> tuple[FolderImages, torch.Tensor, list[str]]:
    from torchvision.datasets import ImageFolder

    from .stream import FolderImages
    try:
        ds = ImageFolder(str(root))  # lists the files and labels, decodes nothing
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{root}: {exc}; expected one sub-folder of images per class") from None
    if classes is not None and ds.classes != classes:
        raise DataError(f"{root} has classes {ds.classes[:5]}..., which differ from the training classes")
    return FolderImages([p for p, _ in ds.samples], size), torch.tensor(ds.targets, dtype=torch.long), ds.classes


class _Checked:
    """Each file decoded (``decode=True``) or only opened (the header read), reporting failures
    instead of raising, so that a DataLoader can check a whole split in worker processes."""

    def __init__(self, images: FolderImages, decode: bool):
        self.images, self.decode = images, decode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image
        try:
            if self.decode:
                return self.images.decode(i), ""
            with Image.open(self.images.paths_at(i)) as im:
                im.size  # the header parses
            return torch.zeros(0, dtype=torch.uint8), ""
        except DataError as exc:
            return torch.zeros(self.images.shape[1:], dtype=torch.uint8), str(exc)
        except Exception as exc:  # not an image, unreadable
            reason = str(exc).strip().split("\n")[0][:100]
            return torch.zeros(0, dtype=torch.uint8), (f"cannot read image {self.images.paths_at(i)} "
                                                       f"({type(exc).__name__}: {reason})")


def _collate(items):
    tensors, errors = zip(*items)
    return (torch.stack(tensors) if tensors[0].numel() else None), list(errors)


def check_images(images: FolderImages, decode: bool, strict: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
    """Decode (or, for streamed folders, open) every file once, in worker processes when there are many.

    Returns (the decoded uint8 images of the readable files, or None when not decoding; a boolean
    mask of the readable files; the messages of the unreadable ones). With ``strict`` the first
    unreadable file is a :class:`DataError`.
    """
    from torch.utils.data import DataLoader
    workers = min(8, os.cpu_count() or 1) if len(images) >= 2048 else 0
    loader = DataLoader(_Checked(images, decode), batch_size=256, num_workers=workers, collate_fn=_collate)
    decoded, errors = [], []
    for batch, batch_errors in loader:
        if batch is not None:
            decoded.append(batch)
        errors += batch_errors
    ok = torch.tensor([not e for e in errors], dtype=torch.bool)
    bad = [e for e in errors if e]
    if bad and strict:
        raise DataError(f"{bad[0]}; remove or fix the file (without --strict-data unreadable images are skipped)")
    images_out = torch.cat(decoded)[ok] if decode and decoded else None
    return images_out, ok, bad


def _decode_all(images: FolderImages) -> torch.Tensor:
    """Decode every file into one uint8 tensor (unreadable files are an error)."""
    return check_images(images, decode=True, strict=True)[0]


def load_folder(path: str, image_size: int | None = None, stream: bool | None = None,
                strict: bool = False) -> ImageData:
    """``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` (or ``test/``), as RGB images.

    Without a train/ sub-folder, ``PATH/<class>/*`` is split 90/10 with a fixed seed.
    Images are resized (shorter side) and centre-cropped to ``image_size`` (default 64).
    ``stream=True`` keeps both splits on disk as ``FolderImages`` (decoded batch by batch), False
    decodes them into memory once, None (auto) streams when the decoded training split would
    exceed 2 GiB. Every file is checked once here (decoded, or for streamed folders opened):
    unreadable ones are skipped and listed in ``ImageData.skipped``, or with ``strict`` they are
    an error.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {path} does not exist; use --dataset folder:PATH with an existing folder")
    size = image_size or FOLDER_SIDE
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        tx, ty, classes = _list_folder(root / "train", size, None)
        vx, vy, _ = _list_folder(test_dir, size, classes)
    else:
        x, y, classes = _list_folder(root, size, None)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        cut = max(1, int(0.9 * len(y)))
        tx, ty, vx, vy = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    if stream is None:
        stream = len(tx) * 3 * size * size > STREAM_BYTES
    skipped: list[str] = []
    splits = []
    for files, labels in ((tx, ty), (vx, vy)):
        decoded, ok, bad = check_images(files, decode=not stream, strict=strict)
        skipped += bad
        splits += [decoded if decoded is not None else files[ok.nonzero().flatten()], labels[ok]]
    if len(splits[0]) == 0:
        raise DataError(f"no readable training images in {path} ({len(skipped)} unreadable); check the folder")
    return ImageData(f"folder:{path}", *splits, IMAGENET_MEAN, IMAGENET_STD, tuple(classes), tuple(skipped))


def load_dataset(name: str, data_dir: str | None = None, image_size: int | None = None,
                 download: bool = True, stream: bool | None = None, strict: bool = False) -> ImageData:
    """The named data set; ``stream`` and ``strict`` apply to ``folder:PATH`` (see ``load_folder``).

    Args:
        name: one of :data:`DATASETS`: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``digits``
            (scikit-learn's, offline) or ``folder:PATH``.
        data_dir: where the files are (default: the usual places, then a download).
        image_size: the side image folders are resized to (default 64); the others keep theirs.
    Returns:
        :class:`ImageData`: train and test images (N, C, H, W) uint8 and labels (N,) int64.
    Raises:
        DataError: the data set is unknown, missing or unreadable.

    >>> data = sg.load_dataset("digits")  # 1,797 8x8 gray digits, split 80/20
    >>> data.train_x.shape, data.train_x.dtype, data.train_y.shape, data.test_x.shape
    (torch.Size([1437, 1, 8, 8]), torch.uint8, torch.Size([1437]), torch.Size([360, 1, 8, 8]))
    >>> data.channels, data.image_size, data.num_classes, data.mean, data.std
    (1, 8, 10, (0.3,), (0.38,))
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, download)
    if name in _CIFAR:
        return load_cifar(name, data_dir, download)
    if name == "digits":
        return load_digits_data()
    if name.startswith("folder:") and len(name) > len("folder:"):
        return load_folder(name[len("folder:"):], image_size, stream, strict)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
