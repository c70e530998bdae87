"""Data loaders on small files the tests write, and batched augmentation."""
import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from stopgrad.data import RECIPES, DataError, augment, load_dataset, prepare
from stopgrad.data.datasets import read_idx


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    images = rng.integers(0, 256, (5, 28, 28))
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(5), gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[:3], gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(3), gz)
    d = load_dataset("fashion-mnist", str(tmp_path))
    assert d.train_x.shape == (5, 1, 28, 28) and d.train_x.dtype == torch.uint8
    assert torch.equal(d.train_x[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert d.train_y.tolist() == [0, 1, 2, 3, 4] and d.test_x.shape == (3, 1, 28, 28)


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 3, 3)))
    raw = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "x")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path), download=False)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name,folder,train,test,label", [
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    ("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels"),
])
def test_cifar_pickle_batches(tmp_path, name, folder, train, test, label):
    rng = np.random.default_rng(0)
    (tmp_path / folder).mkdir()
    first = None
    for fname in train + test:
        data = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        first = data if first is None else first
        with open(tmp_path / folder / fname, "wb") as f:
            pickle.dump({"data": data, label: [1, 2, 3, 0]}, f)
    d = load_dataset(name, str(tmp_path), download=False)
    assert d.train_x.shape == (4 * len(train), 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    # rows are stored as R plane, G plane, B plane of 32x32
    assert torch.equal(d.train_x[0, 1].flatten(), torch.from_numpy(first[0, 1024:2048]))
    assert d.train_y[:4].tolist() == [1, 2, 3, 0]


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path), download=False)


def _tree(root, classes=("cat", "dog"), n=3, size=(20, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_with_train_and_val(tmp_path):
    _tree(tmp_path / "train")
    _tree(tmp_path / "val", n=2)
    d = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert d.train_x.shape == (6, 3, 16, 16) and d.test_x.shape == (4, 3, 16, 16)
    assert sorted(d.train_y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_image_folder_without_split_holds_out_a_tenth(tmp_path):
    _tree(tmp_path, n=10)
    d = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert len(d.train_x) == 18 and len(d.test_x) == 2


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        load_dataset(f"folder:{tmp_path}")


def test_digits():
    d = load_dataset("digits")
    assert d.train_x.shape == (1437, 1, 8, 8) and len(d.test_x) == 360 and d.num_classes == 10


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("channels", [1, 3])
def test_augment_shapes_and_per_sample_parameters(recipe, channels):
    x = torch.randint(0, 256, (16, channels, 32, 32), dtype=torch.uint8)
    same = x[:1].repeat(16, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = augment(same, RECIPES[recipe], [0.5] * channels, [0.25] * channels, generator=g)
    assert out.shape == (16, channels, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # one image repeated 16 times gives 16 different views: parameters are drawn per sample
    flat = out.flatten(1)
    assert len({tuple(row[:64].tolist()) for row in flat}) == 16
    # the same generator seed gives the same views
    again = augment(same, RECIPES[recipe], [0.5] * channels, [0.25] * channels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert augment(x, RECIPES[recipe], [0.5] * channels, [0.25] * channels, size=16, generator=g).shape[-1] == 16


def test_full_crop_without_flip_or_jitter_is_the_identity():
    from stopgrad.data import AugmentRecipe
    r = AugmentRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(augment(x, r, [0, 0, 0], [1, 1, 1]), x.float() / 255, atol=1e-5, rtol=0)
    flip = AugmentRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, gray_p=0.0)
    torch.testing.assert_close(augment(x, flip, [0, 0, 0], [1, 1, 1]), x.float().flip(-1) / 255, atol=1e-5, rtol=0)


def test_grayscale_and_blur():
    from stopgrad.data import AugmentRecipe
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    gray = AugmentRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=1.0)
    out = augment(x, gray, [0, 0, 0], [1, 1, 1])
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    blur = AugmentRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0,
                         blur_p=1.0, blur_sigma=(2.0, 2.0))
    out = augment(x, blur, [0, 0, 0], [1, 1, 1])
    plain = x.float() / 255
    assert out.std() < plain.std()  # smoothed
    torch.testing.assert_close(out.mean(dim=(2, 3)), plain.mean(dim=(2, 3)), atol=0.02, rtol=0)


def test_prepare_normalises_without_augmenting():
    x = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(prepare(x, [0.5], [0.5]), torch.ones(2, 1, 8, 8))
    assert prepare(x, [0.5], [0.5], size=4).shape == (2, 1, 4, 4)
