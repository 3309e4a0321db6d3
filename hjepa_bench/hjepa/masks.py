"""Multi-block masks of the H-JEPA step (docs/step.md, "Masks").

Per sample, ``num_masks`` non-overlapping target blocks are placed on the patch
grid.  Block area fraction comes from ``mask_scale`` (level 0; doubled per
hierarchy level, capped at 0.95), aspect ratio from ``aspect_ratio`` (narrowed
to 0.85-1.15 at level 0).  Height = round(sqrt(scale * N / ar)), width =
round(height * ar), position uniform, up to 10 tries, then a fallback block of
(grid/2)^2 patches.  The step predicts the union of the level-0 blocks.

One guard that never triggers at 224 px (the union there is at most 175 of 196
patches) keeps tiny grids usable: a block is only accepted while at least
``min_keep`` patches stay visible as context.

Two ways to build a batch of masks, drawing from the same sampler:

* :func:`reference_masks` - as upstream: a Python loop over the batch on the
  host, every level generated, one device mask and one host-device sync
  (``nonzero``) per sample.
* :class:`MaskCollator` - as I-JEPA: masks built on the CPU inside DataLoader
  workers as padded index tensors that travel with the batch, so the training
  step never waits on a host-device sync for them.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

Block = tuple[int, int, int, int]  # top, left, height, width
MAX_TRIES = 10
LEVEL0_ASPECT = (0.85, 1.15)


def to_device(t: torch.Tensor, device: torch.device | str, non_blocking: bool = True) -> torch.Tensor:
    """``t`` on ``device``, copied asynchronously (``non_blocking``) only from pinned memory: from pageable
    memory the host waits for the copy anyway (CUDA stages it), so the copy is made synchronous, where
    it shows as the wait it is.  Pinned memory comes from ``data.pin_memory`` (the DataLoader pins)."""
    device = torch.device(device)
    if device.type == "cpu" or t.device.type != "cpu":  # not a host-to-device copy
        return t.to(device)
    try:
        pinned = bool(t.is_pinned())
    except Exception:
        pinned = False
    return t.to(device, non_blocking=non_blocking and pinned)


@dataclass(frozen=True)
class MaskSpec:
    grid: int
    num_masks: int = 4
    mask_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    num_levels: int = 2

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> MaskSpec:
        m = values["masking"]
        return cls(
            grid=values["data"]["image_size"] // 16,
            num_masks=int(m["num_masks"]),
            mask_scale=tuple(float(x) for x in m["mask_scale"]),
            aspect_ratio=tuple(float(x) for x in m["aspect_ratio"]),
            num_levels=int(values["model"]["num_hierarchies"]),
        )

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def min_keep(self) -> int:
        return max(1, math.ceil(0.1 * self.num_patches))

    def level_ranges(self, level: int) -> tuple[tuple[float, float], tuple[float, float]]:
        f = 2.0 ** level
        scale = (min(self.mask_scale[0] * f, 0.95), min(self.mask_scale[1] * f, 0.95))
        if level == 0:
            ar = (max(self.aspect_ratio[0], LEVEL0_ASPECT[0]), min(self.aspect_ratio[1], LEVEL0_ASPECT[1]))
            if ar[0] > ar[1]:  # configured range outside 0.85-1.15: keep the nearest edge
                ar = (ar[1], ar[1]) if self.aspect_ratio[1] < LEVEL0_ASPECT[0] else (ar[0], ar[0])
        else:
            ar = self.aspect_ratio
        return scale, ar


def block_shape(scale: float, ar: float, grid: int) -> tuple[int, int]:
    h = round(math.sqrt(scale * grid * grid / ar))
    w = round(h * ar)
    return max(1, min(h, grid)), max(1, min(w, grid))


def sample_blocks(rng: random.Random, spec: MaskSpec, level: int = 0) -> tuple[list[Block], np.ndarray]:
    """Blocks of one sample at one level and their union as a (grid, grid) bool array."""
    g = spec.grid
    (s_lo, s_hi), (a_lo, a_hi) = spec.level_ranges(level)
    occupied = np.zeros((g, g), dtype=bool)
    blocks: list[Block] = []
    budget = spec.num_patches - spec.min_keep
    for _ in range(spec.num_masks):
        placed = False
        for _ in range(MAX_TRIES):
            h, w = block_shape(rng.uniform(s_lo, s_hi), rng.uniform(a_lo, a_hi), g)
            top, left = rng.randint(0, g - h), rng.randint(0, g - w)
            region = occupied[top:top + h, left:left + w]
            if not region.any() and occupied.sum() + h * w <= budget:
                placed = True
                break
        if not placed:  # fallback block, (grid/2)^2, may overlap earlier blocks
            h = w = max(1, g // 2)
            top, left = rng.randint(0, g - h), rng.randint(0, g - w)
            region = occupied[top:top + h, left:left + w]
            if occupied.sum() + int((~region).sum()) > budget:
                continue
        occupied[top:top + h, left:left + w] = True
        blocks.append((top, left, h, w))
    return blocks, occupied


@dataclass
class BatchMasks:
    """Padded index tensors of one batch (B rows).

    ``target_idx``/``target_valid``: masked (predicted) patches, padded to the
    largest count in the batch; ``context_idx``/``context_valid``: the visible
    patches; ``target_mask``: (B, N) bool, True where a patch is predicted.
    Padding repeats a valid index and is False in the ``*_valid`` tensors.
    """

    target_idx: torch.Tensor
    target_valid: torch.Tensor
    context_idx: torch.Tensor
    context_valid: torch.Tensor
    target_mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BatchMasks:
        """On ``device``; ``non_blocking`` only where a tensor is in pinned memory (:func:`to_device`)."""
        return BatchMasks(**{k: to_device(getattr(self, k), device, non_blocking) for k in self.__dataclass_fields__})

    def pin_memory(self) -> BatchMasks:  # called by DataLoader(pin_memory=True)
        return BatchMasks(**{k: getattr(self, k).pin_memory() for k in self.__dataclass_fields__})

    @property
    def max_targets(self) -> int:
        return self.target_idx.shape[1]


def _pad(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    idx = np.zeros((len(rows), width), dtype=np.int64)
    valid = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = r
        idx[i, len(r):] = r[0] if len(r) else 0
        valid[i, : len(r)] = True
    return torch.from_numpy(idx), torch.from_numpy(valid)


def masks_from_union(union: np.ndarray) -> BatchMasks:
    """(B, N) bool union of target blocks -> padded index tensors (CPU)."""
    targets = [np.flatnonzero(row) for row in union]
    contexts = [np.flatnonzero(~row) for row in union]
    t_idx, t_valid = _pad(targets)
    c_idx, c_valid = _pad(contexts)
    return BatchMasks(t_idx, t_valid, c_idx, c_valid, torch.from_numpy(union.copy()))


def sample_batch_union(rng: random.Random, spec: MaskSpec, batch_size: int) -> np.ndarray:
    return np.stack([sample_blocks(rng, spec, 0)[1].reshape(-1) for _ in range(batch_size)])


def reference_masks(rng: random.Random, spec: MaskSpec, batch_size: int, device: torch.device) -> BatchMasks:
    """Upstream's way: per-sample host loop over every level, one device sync per sample."""
    g = spec.grid
    target_rows: list[torch.Tensor] = []
    for _ in range(batch_size):
        level_masks = []
        for level in range(spec.num_levels):
            blocks, _ = sample_blocks(rng, spec, level)
            m = torch.zeros(g, g, dtype=torch.bool, device=device)
            for top, left, h, w in blocks:
                m[top:top + h, left:left + w] = True
            level_masks.append(m)
        target_rows.append(level_masks[0].flatten().nonzero().squeeze(1))  # host-device sync
    union = torch.zeros(batch_size, g * g, dtype=torch.bool, device=device)
    k_max = max(1, max(len(r) for r in target_rows))
    n_ctx = [g * g - len(r) for r in target_rows]
    c_max = max(1, max(n_ctx))
    t_idx = torch.zeros(batch_size, k_max, dtype=torch.long, device=device)
    t_valid = torch.zeros(batch_size, k_max, dtype=torch.bool, device=device)
    for i, rows in enumerate(target_rows):
        union[i, rows] = True
        t_idx[i, : len(rows)] = rows
        t_idx[i, len(rows):] = rows[0] if len(rows) else 0
        t_valid[i, : len(rows)] = True
    # context indices: visible patches first (stable sort keeps patch order)
    order = torch.sort(union.to(torch.float32), dim=1, stable=True).indices  # float: sorts on every backend
    c_idx = order[:, :c_max].clone()
    c_valid = torch.arange(c_max, device=device)[None, :] < torch.tensor(n_ctx, device=device)[:, None]
    return BatchMasks(t_idx, t_valid, c_idx, c_valid, union)


class MaskCollator:
    """DataLoader collate_fn: default collation plus masks built on the CPU.

    Runs inside the DataLoader workers; each worker seeds its own sampler from
    ``torch.initial_seed()`` (distinct per worker and epoch).
    """

    def __init__(self, spec: MaskSpec):
        self.spec = spec
        self._rng: random.Random | None = None
        self._seed: int | None = None

    def __call__(self, samples: list[Any]) -> tuple[Any, Any, BatchMasks]:
        seed = torch.initial_seed()
        if self._rng is None or seed != self._seed:
            self._rng, self._seed = random.Random(seed), seed
        images, labels = default_collate(samples)
        union = sample_batch_union(self._rng, self.spec, len(samples))
        return images, labels, masks_from_union(union)
