"""Tests for hjepa_bench.hjepa.data: synthetic data, transforms, CIFAR-10 folder, loaders."""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from hjepa_bench.errors import UserError
from hjepa_bench.hjepa.data import (
    CIFAR10Folder,
    EndlessBatches,
    SyntheticCIFAR,
    build_dataset,
    build_eval_transform,
    build_loader,
    build_transform,
)

# --------------------------------------------------------------------------- synthetic

def _pixels(ds: SyntheticCIFAR, n: int) -> np.ndarray:
    return np.stack([np.asarray(ds[i][0]) for i in range(n)])


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b, c = SyntheticCIFAR(100, seed=3), SyntheticCIFAR(100, seed=3), SyntheticCIFAR(100, seed=4)
    img, label = a[7]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == "RGB"
    assert isinstance(label, int)
    assert np.array_equal(_pixels(a, 20), _pixels(b, 20))
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(_pixels(a, 20), _pixels(c, 20))
    # image i depends only on (seed, train, i): not on the data set size nor on access order
    big = SyntheticCIFAR(5000, seed=3)
    assert np.array_equal(np.asarray(big[99][0]), np.asarray(a[99][0])) and big[99][1] == a[99][1]
    assert not np.array_equal(np.asarray(SyntheticCIFAR(100, seed=3, train=False)[7][0]), np.asarray(img))
    assert len(a) == 100
    with pytest.raises(IndexError):
        a[100]


def test_synthetic_labels() -> None:
    ds = SyntheticCIFAR(1000, seed=0)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (1000,)
    assert ds.labels.min() >= 0 and ds.labels.max() <= 9
    assert set(ds.labels.tolist()) == set(range(10))
    assert len(ds.classes) == 10
    assert [ds[i][1] for i in range(50)] == ds.labels[:50].tolist()


def test_synthetic_is_class_structured() -> None:
    train, test = SyntheticCIFAR(400, seed=1), SyntheticCIFAR(200, seed=1, train=False)
    x = _pixels(train, 400).reshape(400, -1).astype(np.float32)
    xt = _pixels(test, 200).reshape(200, -1).astype(np.float32)
    y, yt = train.labels, test.labels
    centroids = np.stack([x[y == c].mean(0) for c in range(10)])
    nc = ((xt[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    dist = (xt ** 2).sum(1)[:, None] - 2 * xt @ x.T + (x ** 2).sum(1)[None]
    nn = y[dist.argmin(1)]
    assert (nc == yt).mean() > 0.5
    assert (nn == yt).mean() > 0.5


def test_synthetic_item_is_cheap() -> None:
    ds = SyntheticCIFAR(50_000)
    ds[0]
    start = time.perf_counter()
    for i in range(300):
        ds[i * 97]
    assert (time.perf_counter() - start) / 300 < 2e-3  # spec: well under 1 ms; slack for busy CI


# --------------------------------------------------------------------------- transforms

@pytest.mark.parametrize("size", [64, 224])
def test_transform_shape_and_normalisation(size: int) -> None:
    ds = SyntheticCIFAR(16, transform=build_transform(size, 0.5))
    batch = torch.stack([ds[i][0] for i in range(16)])
    assert batch.shape == (16, 3, size, size) and batch.dtype == torch.float32
    assert abs(batch.mean().item()) < 0.6 and 0.3 < batch.std().item() < 2.0
    # an image of exactly the ImageNet mean colour normalises to ~0
    mean_rgb = Image.new("RGB", (32, 32), (124, 116, 104))
    for tf in (build_transform(size, 0.0), build_eval_transform(size)):
        out = tf(mean_rgb)
        assert out.shape == (3, size, size) and out.abs().max().item() < 0.02


def test_transform_composition() -> None:
    types = lambda tf: [type(t) for t in tf.transforms]  # noqa: E731
    full = types(build_transform(64, 1.0))
    assert full == [T.Resize, T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter,
                    T.ToTensor, T.Normalize]
    jitter = build_transform(64, 1.0).transforms[3]
    assert jitter.brightness == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    resize = build_transform(64, 1.0).transforms[0]
    assert resize.size == 96 and resize.interpolation == T.InterpolationMode.BICUBIC
    assert T.ColorJitter not in types(build_transform(64, 0.0))
    plain = types(build_transform(64, 0.0, horizontal_flip=False, random_crop=False))
    assert plain == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert types(build_eval_transform(64)) == plain
    with pytest.raises(UserError):
        build_transform(0, 1.0)


# --------------------------------------------------------------------------- CIFAR-10 folder

def _write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # channel-major, as upstream
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": path.name.encode(), b"labels": labels, b"data": data,
                     b"filenames": [b"x.png"] * len(images)}, f)


@pytest.fixture
def fake_cifar(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(120, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=120)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        sl = slice(20 * k, 20 * (k + 1))
        _write_batch(folder / name, images[sl], labels[sl].tolist())
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072}, f)
    return folder, images, labels


def test_cifar_folder_reads_train_and_test(fake_cifar: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, images, labels = fake_cifar
    for root in (folder, folder.parent, str(folder.parent)):
        train, test = CIFAR10Folder(root), CIFAR10Folder(root, train=False)
        assert len(train) == 100 and len(test) == 20
        assert train.data.shape == (100, 32, 32, 3) and train.data.dtype == np.uint8
        assert np.array_equal(train.data, images[:100]) and np.array_equal(test.data, images[100:])
        assert np.array_equal(train.labels, labels[:100]) and train.labels.dtype == np.int64
        assert train.classes == [f"c{k}" for k in range(10)]
    img, label = test[5]
    assert np.array_equal(np.asarray(img), images[105]) and label == labels[105]
    tf = CIFAR10Folder(folder, transform=build_eval_transform(64))
    assert tf[0][0].shape == (3, 64, 64)


def test_cifar_folder_errors(fake_cifar: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    folder, images, _ = fake_cifar
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (empty, tmp_path / "nowhere"):
        with pytest.raises(UserError, match="never downloads") as err:
            CIFAR10Folder(root)
        assert str(root) in str(err.value)

    (folder / "data_batch_3").write_bytes(b"\x00garbage, not a pickle\xff" * 10)
    with pytest.raises(UserError) as err:
        CIFAR10Folder(folder)
    assert str(folder / "data_batch_3") in str(err.value)

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": images[:4].reshape(4, 32 * 32, 3), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(UserError, match="shape") as err:
        CIFAR10Folder(folder, train=False)
    assert str(folder / "test_batch") in str(err.value)

    (folder / "data_batch_5").unlink()
    with pytest.raises(UserError, match="data_batch_5") as err:
        CIFAR10Folder(folder)
    assert str(folder) in str(err.value)


def test_build_dataset(fake_cifar: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, _, labels = fake_cifar
    assert len(build_dataset("synthetic", size=50)) == 50
    assert len(build_dataset("synthetic")) == 50_000
    limited = build_dataset("cifar10", path=str(folder.parent), limit=30)
    assert len(limited) == 30 and np.array_equal(limited.labels, labels[:30])
    assert len(limited.classes) == 10 and limited[29][1] == labels[29]
    assert len(build_dataset("cifar10", path=str(folder), train=False, limit=1000)) == 20
    with pytest.raises(UserError):
        build_dataset("cifar10")
    with pytest.raises(UserError):
        build_dataset("imagenet")


# --------------------------------------------------------------------------- loaders

@pytest.mark.parametrize("persistent", [True, False])
def test_loader_and_endless_batches(persistent: bool) -> None:
    ds = build_dataset("synthetic", size=32, transform=build_transform(64, 0.4))
    loader = build_loader(ds, batch_size=8, num_workers=2, persistent_workers=persistent, seed=0)
    assert loader.drop_last and loader.persistent_workers == persistent
    endless = EndlessBatches(loader)
    assert endless.steps_per_epoch == 4 and endless.epochs_started == 0
    it = iter(endless)
    for step in range(6):
        x, y = next(it)
        assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
        assert y.shape == (8,) and y.dtype == torch.int64
        assert endless.epochs_started == (1 if step < 4 else 2)
    endless.close()
    x, _ = next(it)  # usable again after close: starts a fresh epoch
    assert x.shape == (8, 3, 64, 64) and endless.epochs_started == 3
    endless.close()


def test_loader_shuffle_is_seeded_and_checks_size() -> None:
    ds = build_dataset("synthetic", size=40)
    order = lambda seed: [y.tolist() for _, y in build_loader(  # noqa: E731
        ds, batch_size=4, num_workers=0, seed=seed, persistent_workers=True,
        collate_fn=lambda b: (None, torch.tensor([lab for _, lab in b])))]
    assert order(1) == order(1)
    assert len(build_loader(ds, batch_size=16, num_workers=0)) == 2  # drop_last
    with pytest.raises(UserError):
        build_loader(ds, batch_size=41, num_workers=0)
