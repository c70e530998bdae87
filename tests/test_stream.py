"""Image folders streamed from disk: FolderImages, iter_batches, and load_dataset(stream=...)."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from stopgrad.data import DataError, load_dataset
from stopgrad.data import datasets
from stopgrad.data.stream import FolderImages, iter_batches

S = 16


def _tree(root):
    """2 classes x 6 images of odd sizes: grayscale, RGBA and palette PNGs, small and large RGB JPEGs."""
    rng = np.random.default_rng(0)
    sizes = [(23, 17), (17, 31), (45, 70), (90, 41), (16, 16), (33, 19)]  # (width, height)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if i == 0:
                Image.fromarray(rgb[..., 0]).save(root / c / f"{i}.png")  # grayscale
            elif i == 1:
                Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / c / f"{i}.png")  # RGBA
            elif i == 5:
                Image.fromarray(rgb).convert("P").save(root / c / f"{i}.png")  # palette
            else:  # RGB JPEGs, some large enough for reduced-scale decoding
                Image.fromarray(rgb).save(root / c / f"{i}.jpg", quality=90)
    return sorted(str(p) for p in root.rglob("*.*"))


@pytest.fixture
def files(tmp_path):
    return _tree(tmp_path / "images")


def test_decode_gives_rgb_centre_crops(tmp_path):
    colours = {"gray.png": Image.new("L", (40, 20), 90), "rgba.png": Image.new("RGBA", (20, 40), (10, 200, 30, 0)),
               "palette.png": Image.new("RGB", (19, 23), (250, 5, 120)).convert("P", palette=Image.ADAPTIVE),
               "small.jpg": Image.new("RGB", (25, 18), (40, 80, 160)),
               "large.jpg": Image.new("RGB", (130, 70), (40, 80, 160))}
    for name, im in colours.items():
        im.save(tmp_path / name)
    x = FolderImages([tmp_path / n for n in colours], S)
    expect = [(90, 90, 90), (10, 200, 30), (250, 5, 120), (40, 80, 160), (40, 80, 160)]
    for i, (name, rgb) in enumerate(zip(colours, expect)):
        img = x.decode(i)
        assert img.shape == (3, S, S) and img.dtype == torch.uint8
        diff = (img.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max()
        assert diff <= (3 if name.endswith(".jpg") else 0), name
    # a wide image keeps its centre: black | white | black thirds, 48x16 -> the white middle
    stripes = np.zeros((16, 48), np.uint8)
    stripes[:, 16:32] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    assert (FolderImages([tmp_path / "stripes.png"], S).decode(0) == 255).all()


def test_folder_images_quack_like_a_tensor(files):
    x = FolderImages(files, S)
    assert len(x) == 12 and x.shape == torch.Size((12, 3, S, S)) and x.dtype == torch.uint8
    assert x.to("cpu", non_blocking=True) is x and x.paths == files
    sub = x[torch.tensor([5, 0, 7, 3])]
    assert isinstance(sub, FolderImages) and sub.paths == [files[i] for i in (5, 0, 7, 3)]
    assert sub[[3, 1]].paths == [files[3], files[0]]  # a subset of a subset
    assert sub[1:3].paths == [files[0], files[7]] and len(x[[]]) == 0
    assert torch.equal(sub[2], x.decode(7)) and torch.equal(sub[torch.tensor(2)], x.decode(7))


def test_pickle_round_trip(files):
    x = FolderImages(files, S)[[4, 2]]
    y = pickle.loads(pickle.dumps(x))
    assert y.paths == x.paths and y.shape == x.shape and torch.equal(y.decode(1), x.decode(1))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("drop_last", [True, False])
def test_iter_batches_order_and_drop_last(files, workers, streamed, drop_last):
    x = FolderImages(files, S)
    decoded = torch.stack([x.decode(i) for i in range(len(x))])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    batches = list(iter_batches(x if streamed else decoded, order, 5, "cpu", drop_last=drop_last, workers=workers))
    sizes = [5, 5] if drop_last else [5, 5, 2]
    assert [len(b) for b in batches] == sizes
    for b, start in zip(batches, range(0, 12, 5)):
        assert b.dtype == torch.uint8 and torch.equal(b, decoded[order[start:start + 5]])


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_file_is_a_data_error_naming_it(files, tmp_path, workers):
    raw = open(files[3], "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image" * 10)
    for name in ("truncated.jpg", "garbage.png"):
        x = FolderImages(files[:3] + [tmp_path / name], S)
        with pytest.raises(DataError) as err:
            list(iter_batches(x, torch.arange(4), 2, "cpu", workers=workers))
        message = str(err.value)
        assert name in message and "remove or fix" in message and "\n" not in message


def test_streamed_folder_equals_in_memory_folder(files, tmp_path):
    root = tmp_path / "images"
    mem = load_dataset(f"folder:{root}", image_size=S, stream=False)
    disk = load_dataset(f"folder:{root}", image_size=S, stream=True)
    assert isinstance(mem.train_x, torch.Tensor) and isinstance(disk.train_x, FolderImages)
    assert isinstance(disk.test_x, FolderImages) and len(disk.train_x) == 10 and len(disk.test_x) == 2
    assert disk.channels == 3 and disk.image_size == S and disk.num_classes == 2
    assert torch.equal(mem.train_y, disk.train_y) and torch.equal(mem.test_y, disk.test_y)
    for streamed, tensor in ((disk.train_x, mem.train_x), (disk.test_x, mem.test_x)):
        assert torch.equal(torch.stack([streamed.decode(i) for i in range(len(streamed))]), tensor)
        order = torch.arange(len(tensor)).flip(0)
        batches = iter_batches(streamed, order, 2, "cpu", workers=0)
        assert torch.equal(torch.cat(list(batches)), tensor[order])


def test_auto_streams_only_large_training_splits(files, tmp_path, monkeypatch):
    root = tmp_path / "images"
    assert isinstance(load_dataset(f"folder:{root}", image_size=S).train_x, torch.Tensor)
    monkeypatch.setattr(datasets, "STREAM_BYTES", 10 * 3 * S * S - 1)  # 10 training images
    assert isinstance(load_dataset(f"folder:{root}", image_size=S).train_x, FolderImages)
    assert isinstance(load_dataset(f"folder:{root}", image_size=S, stream=False).train_x, torch.Tensor)


def test_training_on_a_streamed_folder_equals_training_in_memory(tmp_path):
    """Same pixels, same order: a streamed run and an in-memory run log the same metrics."""
    from stopgrad.config import build_config
    from stopgrad.train import train
    root = tmp_path / "images"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(12):
            img = np.random.default_rng(c * 100 + i).integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    rows = {}
    for stream in (False, True):
        cfg = build_config(overrides={"dataset": f"folder:{root}", "image_size": S, "stream": stream, "workers": 0,
                                      "width": 4, "epochs": 2, "batch_size": 8, "knn_k": 5, "augment": "cifar"})
        result = train(cfg, tmp_path / f"run-{stream}", quiet=True, progress=False)
        rows[stream] = [(r["loss"], r["knn_top1"]) for r in result["metrics"]]
    assert rows[True] == rows[False]
