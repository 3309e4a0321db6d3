"""Setting up H-JEPA training and pulling features out of it, in one place:
the ``hjepa`` workload, the validation run, the ``epoch_costs`` and ``features`` probes and the
checkpoint evaluation all come through here (its checkpoints: :mod:`hjepa_bench.hjepa.checkpoint`).

* :func:`build_training`: the precision (checked against the backend), the training data set through
  the upstream augmentation, its DataLoader (the masks built in the workers for the ``efficient``
  step) and the :class:`~hjepa_bench.hjepa.step.HJEPAStep` trainer.
* :func:`extract_features`: pooled target-encoder features (mean of the patch tokens) as CPU float64;
  :func:`level_features`: the same per hierarchy level.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import resolve_precision
from ..errors import UserError
from ..plugin.api import Backend
from .data import build_dataset, build_loader, build_transform, data_shard
from .loss import _pool
from .masks import MaskCollator, MaskSpec
from .model import HJEPA, pooled_features
from .step import HJEPAStep


# --------------------------------------------------------------------------- setting up
def training_precision(config: Mapping[str, Any], backend: Backend) -> str:
    """The precision the config gives on ``backend``; one the backend cannot run is a UserError."""
    precision = resolve_precision(config, backend.name)
    why = backend.supported_precisions().get(precision, f"unknown precision {precision}")
    if why:
        raise UserError(f"precision {precision} does not run on {backend.name}: {why}")
    return precision


def train_loader(config: Mapping[str, Any], backend: Backend) -> tuple[Dataset, DataLoader]:
    """The training data set (upstream augmentation) and its DataLoader, as the config says; in a rank
    of a data-parallel job, the loader reads that rank's shard (``data_shard``)."""
    bench, data = config["bench"], config["data"]
    aug = data["augmentation"]
    transform = build_transform(int(data["image_size"]), float(aug["color_jitter"]),
                                bool(aug.get("horizontal_flip", True)), bool(aug.get("random_crop", True)))
    path = bench.get("data_path") or data.get("data_path")
    dataset = build_dataset(bench["data"], path=path, train=True, size=int(bench["synthetic_size"]),
                            seed=int(config["seed"]), transform=transform, limit=bench.get("limit_samples"))
    collate = MaskCollator(MaskSpec.from_config(config)) if bench["variant"] == "efficient" else None
    loader = build_loader(dataset, batch_size=int(data["batch_size"]), num_workers=int(data["num_workers"]),
                          # as upstream: the DataLoader pins for the accelerator (and itself turns it off on MPS,
                          # with a warning); a CPU run has nothing to copy to
                          pin_memory=bool(data["pin_memory"]) and backend.device().type != "cpu",
                          persistent_workers=bool(bench["persistent_workers"]), seed=int(config["seed"]),
                          collate_fn=collate, shard=data_shard())
    return dataset, loader


@dataclass
class Training:
    precision: str
    dataset: Dataset
    loader: DataLoader
    steps_per_epoch: int
    trainer: HJEPAStep


def build_training(config: Mapping[str, Any], backend: Backend, *,
                   max_steps_per_epoch: int | None = None) -> Training:
    """Precision, data, loader and trainer for ``config`` on ``backend``.  An epoch is ``len(loader)``
    steps, or ``max_steps_per_epoch`` when that is fewer (the LR and EMA schedules span the epochs)."""
    precision = training_precision(config, backend)
    dataset, loader = train_loader(config, backend)
    full = len(loader)
    spe = full if max_steps_per_epoch is None else max(1, min(full, int(max_steps_per_epoch)))
    trainer = HJEPAStep(config, backend, precision, steps_per_epoch=spe)
    return Training(precision=precision, dataset=dataset, loader=loader, steps_per_epoch=spe, trainer=trainer)


# --------------------------------------------------------------------------- features
@torch.no_grad()
def extract_features(encoder: torch.nn.Module, batches: Iterable[torch.Tensor],
                     sync: Callable[[], None] | None = None) -> tuple[torch.Tensor, float]:
    """Pooled features (n, D) of ``encoder`` on every batch of images, as CPU float64, and the forward
    seconds (synced with ``sync`` when given; 0.0 without it).  Images go to the encoder's device and dtype."""
    param = next(encoder.parameters())
    out, forward_s = [], 0.0
    for images in batches:
        images = images.to(param.device, dtype=param.dtype)
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        feats = pooled_features(encoder, images)
        if sync is not None:
            sync()
            forward_s += time.perf_counter() - t0
        out.append(feats.float().cpu().double())
    return torch.cat(out), forward_s


@torch.no_grad()
def level_features(model: HJEPA, images: torch.Tensor) -> list[torch.Tensor]:
    """Pooled target-encoder features per hierarchy level, each (B, D) in the model's dtype.

    One forward of the EMA target encoder; tokens = its output without CLS (B, N, D).
    Level 0: ``tokens.mean(1)``.  Level l > 0: ``hierarchy_projections[l](tokens)``,
    1-D average pooling along the patch sequence with kernel = stride = min(2**l, N)
    (the loss's ``_pool``, after the projection as in the loss), then the mean over
    the pooled tokens."""
    tokens = model.target_encoder(images)[:, 1:]
    n = tokens.shape[1]
    out = [tokens.mean(dim=1)]
    for level in range(1, len(model.hierarchy_projections)):
        k = min(2 ** level, n)
        projected = model.hierarchy_projections[level](tokens)
        out.append(_pool(projected, k).mean(dim=1))
    return out
