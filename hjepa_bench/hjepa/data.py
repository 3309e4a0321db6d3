"""Data path for the benchmark: the same one the upstream H-JEPA trainer uses.

Upstream H-JEPA trains on CIFAR-10 (32x32x3 uint8, 10 classes) read through a
``torch.utils.data.DataLoader`` with ``drop_last=True``.  Every image gets one
augmented view, built inside the DataLoader workers on a PIL image with the
torchvision v1 transforms: bicubic ``Resize(S + 32)``, ``RandomResizedCrop(S,
scale=(0.8, 1.0))``, ``RandomHorizontalFlip``, ``ColorJitter``, ``ToTensor``
and ImageNet ``Normalize``.  Reproducing that pipeline matters because at small
model sizes the CPU-side decode/augment cost, not the GPU, often sets the step
time.

Two sources feed it: :class:`CIFAR10Folder` reads an already unpacked CIFAR-10
(python version, never downloaded) and :class:`SyntheticCIFAR` generates
deterministic, class-structured images of the same geometry lazily, so a
benchmark needs no data set on disk.
"""
from __future__ import annotations

import pickle
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms as T

from ..errors import UserError, input_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCH_MAX_BYTES = 256 * 2**20  # a batch of the python version is about 30 MiB
Transform = Callable[[Image.Image], Any]
_BICUBIC = T.InterpolationMode.BICUBIC


def build_transform(image_size: int, color_jitter: float, horizontal_flip: bool = True,
                    random_crop: bool = True) -> T.Compose:
    """The upstream per-image training augmentation (one view per image)."""
    if image_size < 1:
        raise UserError(f"Image size must be a positive number of pixels, got {image_size}.")
    if not 0 <= color_jitter <= 5:
        raise UserError(f"Colour jitter must be between 0 and 5, got {color_jitter}.")
    steps: list[Any] = [T.Resize(image_size + 32, interpolation=_BICUBIC)]
    if random_crop:
        steps.append(T.RandomResizedCrop(image_size, scale=(0.8, 1.0), interpolation=_BICUBIC))
    else:
        steps.append(T.CenterCrop(image_size))
    if horizontal_flip:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    if color_jitter > 0:
        cj = color_jitter
        steps.append(T.ColorJitter(0.4 * cj, 0.4 * cj, 0.2 * cj, 0.1 * cj))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def build_eval_transform(image_size: int) -> T.Compose:
    """Deterministic transform for feature extraction (kNN / linear probe)."""
    return build_transform(image_size, 0.0, horizontal_flip=False, random_crop=False)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _upsample_matrix(grid: int, size: int) -> np.ndarray:
    """(size, grid) matrix of linear-interpolation weights."""
    pos = np.linspace(0, grid - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = pos - lo
    w = np.zeros((size, grid))
    w[np.arange(size), lo] = 1 - frac
    w[np.arange(size), lo + 1] = frac
    return w


class SyntheticCIFAR(Dataset):
    """CIFAR-10-shaped images generated on the fly; image i depends only on (seed, train, i).

    Each class has a fixed smooth colour pattern (seeded by ``seed`` and the class,
    shared by train and test); an image is its class pattern randomly shifted,
    maybe mirrored, rescaled in brightness and overlaid with pixel noise.
    """

    classes = list(CIFAR10_CLASSES)

    def __init__(self, size: int = 50_000, seed: int = 0, train: bool = True,
                 transform: Transform | None = None) -> None:
        if size < 1:
            raise UserError(f"Synthetic data set size must be at least 1, got {size}.")
        self.size, self.seed, self.train, self.transform = size, seed, train, transform
        self._seed = seed % 2**63
        key = _mix64(np.array([self._seed * 2 + int(train)], dtype=np.uint64))
        self.labels = (_mix64(np.arange(size, dtype=np.uint64) + key) % np.uint64(10)).astype(np.int64)
        rng = np.random.default_rng([self._seed, 0xC1FA])
        grids = rng.uniform(0, 255, size=(10, 5, 5, 3))
        w = _upsample_matrix(5, 32)
        self.patterns = np.einsum("hg,cgkx,wk->chwx", w, grids, w).astype(np.float32)

    def __len__(self) -> int:
        return self.size

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as a 32x32x3 uint8 array."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} samples")
        rng = np.random.default_rng([self._seed, int(self.train), i])
        dy, dx = rng.integers(-4, 5, size=2)
        img = np.roll(self.patterns[self.labels[i]], (int(dy), int(dx)), axis=(0, 1))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = img * rng.uniform(0.8, 1.2) + rng.normal(0.0, 24.0, size=img.shape)
        return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = Image.fromarray(self.image(i))
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 python batch holds: dicts, lists, bytes, ints and
    numpy arrays (plus the numpy and codec functions that rebuild them).  Any other
    global is refused, so a crafted ``data_batch_N`` cannot run code."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _safe_pickle_load(f: Any) -> Any:
    return _CifarUnpickler(f, encoding="bytes").load()


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch into (N x 32 x 32 x 3 uint8, N int64 labels)."""
    input_file(path, "CIFAR-10 batch", CIFAR_BATCH_MAX_BYTES)
    try:
        with open(path, "rb") as f:
            batch = _safe_pickle_load(f)
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # garbage bytes, truncated file, not a dict, missing keys...
        raise UserError(f"Cannot read CIFAR-10 batch {path} ({type(exc).__name__}: {exc}); "
                        "the file is corrupt or not from the python version of CIFAR-10.") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise UserError(f"CIFAR-10 batch {path} has data of shape {data.shape} and {labels.size} labels, "
                        "but N x 3072 pixels with N labels are expected.")
    if data.dtype != np.uint8 or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise UserError(f"CIFAR-10 batch {path} holds {data.dtype} pixels or labels outside 0..9, "
                        "but uint8 pixels and labels 0..9 are expected.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar_folder(root: str | Path, train: bool = True) -> tuple[Path, list[str]]:
    """The ``cifar-10-batches-py`` folder at or under ``root`` and the batch files of the split, or
    a UserError saying what is missing (paths only: cheap enough to check before any work)."""
    root = Path(root).expanduser()
    inside = root.name == CIFAR_FOLDER or any((root / n).exists() for n in ("batches.meta", "test_batch"))
    folder = root if inside else root / CIFAR_FOLDER
    if not root.exists():
        raise UserError(f"CIFAR-10 data not found: {root} does not exist (hjepa-bench never downloads; "
                        "unpack the python version of CIFAR-10 there).")
    if not folder.is_dir():
        raise UserError(f"CIFAR-10 data not found: {root} has no {CIFAR_FOLDER} folder (hjepa-bench "
                        "never downloads; unpack the python version of CIFAR-10 there).")
    names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"CIFAR-10 data incomplete: {folder} lacks {', '.join(missing)} "
                        "(unpack the full python version of CIFAR-10 there).")
    return folder, names


class CIFAR10Folder(Dataset):
    """CIFAR-10 from an unpacked ``cifar-10-batches-py`` folder (never downloads)."""

    def __init__(self, root: str | Path, train: bool = True, transform: Transform | None = None) -> None:
        folder, names = cifar_folder(root, train)
        parts = [_load_batch(folder / n) for n in names]
        self.root, self.train, self.transform = folder, train, transform
        self.data = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        self.labels = np.concatenate([p[1] for p in parts])
        self.classes = list(CIFAR10_CLASSES)
        if (folder / "batches.meta").is_file():
            try:
                with open(folder / "batches.meta", "rb") as f:
                    self.classes = [n.decode() for n in _safe_pickle_load(f)[b"label_names"]]
            except Exception as exc:
                raise UserError(f"Cannot read CIFAR-10 class names from {folder / 'batches.meta'} "
                                f"({type(exc).__name__}: {exc}).") from exc

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class _Limited(Subset):
    """The first ``n`` samples of a data set, keeping ``.labels`` and ``.classes``."""

    def __init__(self, dataset: Any, n: int) -> None:
        super().__init__(dataset, range(n))
        self.labels = np.asarray(dataset.labels)[:n]
        self.classes = dataset.classes
        self.full_size = len(dataset)  # the split's own size, before the limit


def build_dataset(kind: str, *, path: str | None = None, train: bool = True, size: int | None = None,
                  seed: int = 0, transform: Transform | None = None, limit: int | None = None) -> Dataset:
    """``kind`` is "synthetic" or "cifar10" (the latter needs ``path``)."""
    if kind == "synthetic":
        ds: Any = SyntheticCIFAR(50_000 if size is None else size, seed=seed, train=train, transform=transform)
    elif kind == "cifar10":
        if not path:
            raise UserError("The cifar10 data set needs a path to the unpacked python version of CIFAR-10.")
        ds = CIFAR10Folder(path, train=train, transform=transform)
    else:
        raise UserError(f"Unknown data set '{kind}'; choose 'synthetic' or 'cifar10'.")
    if limit is not None:
        if limit < 1:
            raise UserError(f"The data set limit must be at least 1, got {limit}.")
        if limit < len(ds):
            ds = _Limited(ds, limit)
    return ds


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def data_shard() -> tuple[int, int] | None:
    """(rank, world size) when this process is a rank of a data-parallel job (torch.distributed is
    initialised with more than one process), else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def build_loader(dataset: Dataset, *, batch_size: int, num_workers: int, pin_memory: bool = False,
                 persistent_workers: bool = False, shuffle: bool = True, seed: int = 0,
                 collate_fn: Callable[[list], Any] | None = None,
                 multiprocessing_context: str | None = None, shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader like upstream's: ``drop_last=True``, seeded shuffling, seeded workers.

    ``shard=(rank, world_size)``: this rank's part of the data, through a ``DistributedSampler``
    (every rank sees len(dataset) // world_size different samples per epoch, reshuffled per epoch
    with the same seed on every rank; drop_last), so an epoch is len(dataset) // (world_size x batch)
    steps, as in a DDP training run."""
    if batch_size < 1:
        raise UserError(f"Batch size must be at least 1, got {batch_size}.")
    if num_workers < 0:
        raise UserError(f"The number of data workers cannot be negative, got {num_workers}.")
    world = shard[1] if shard else 1
    if len(dataset) < batch_size * world:  # type: ignore[arg-type]
        ranks = f" for each of {world} ranks" if world > 1 else ""
        raise UserError(f"The data set has {len(dataset)} samples, fewer than one batch of {batch_size}{ranks} "
                        "(drop_last=True would yield nothing); use a smaller batch or more data.")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if shard is not None:
        sampler = DistributedSampler(dataset, num_replicas=shard[1], rank=shard[0], shuffle=shuffle, seed=seed,
                                     drop_last=True)
        shuffle = False  # the sampler shuffles
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")  # recorded by the run instead
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                          pin_memory=pin_memory, drop_last=True, collate_fn=collate_fn,
                          persistent_workers=persistent_workers and num_workers > 0,
                          worker_init_fn=_seed_worker, generator=generator,
                          multiprocessing_context=multiprocessing_context if num_workers > 0 else None)


class EndlessBatches:
    """Yields batches forever, starting a new epoch (new loader iterator) when one ends."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.steps_per_epoch = len(loader)
        self.epochs_started = 0
        self._it: Iterator[Any] | None = None
        if self.steps_per_epoch == 0:
            raise UserError("The data loader yields no batches; use a smaller batch or more data.")

    def __iter__(self) -> EndlessBatches:
        return self

    def __next__(self) -> Any:
        if self._it is not None:
            try:
                return next(self._it)
            except StopIteration:
                pass
        set_epoch = getattr(self.loader.sampler, "set_epoch", None)
        if set_epoch is not None:  # a DistributedSampler: a new shuffle every epoch, as a DDP trainer does
            set_epoch(self.epochs_started)
        with warnings.catch_warnings():
            # torch warns when workers outnumber cores; the run records its own note
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            self._it = iter(self.loader)
        self.epochs_started += 1
        return next(self._it)

    def close(self) -> None:
        """Drop the current iterator and shut its workers down (persistent ones too)."""
        it, self._it = self._it, None
        if it is None:
            return
        if getattr(self.loader, "_iterator", None) is it:  # persistent workers live on the loader
            self.loader._iterator = None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
