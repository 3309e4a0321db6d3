"""Measuring what a real training run pays besides its steps (the ``epoch_costs`` probe and the
validation run's self-check both call :func:`measure_epoch_costs`).

1. **Worker start-up**: a non-persistent DataLoader starts fresh workers at every epoch; timed from
   ``iter(loader)`` to the first batch in hand (:func:`first_batch`), then the workers are shut down.
2. **Validation step**: one forward of the loss in eval mode without gradients (:func:`measure_val_step`).
3. **Checkpoint**: ``torch.save`` of the upstream layout, flushed and fsynced, and the copies the
   upstream ``CheckpointManager`` makes of it (``checkpoint_latest.pth``, and ``checkpoint_best.pth``
   when the validation loss improved) (:func:`measure_checkpoint`).
4. **The trainer's periodic work** (read-backs, TensorBoard scalars and gradient histograms, collapse
   metrics, ``empty_cache``): :func:`hjepa_bench.hjepa.periodic.measure_periodic`.
5. **Model build**: building the model from the config and moving it to the device, once
   (:func:`measure_model_build`).

A measurement that fails leaves its fields ``None`` and its error, one line, under
``errors[<its main field>]``; the others still come back.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..analysis.periodic import LoggingPlan
from ..errors import error_line
from ..hjepa.masks import to_device
from ..hjepa.periodic import measure_periodic
from ..plugin.api import Trainer
from ..stats import median

STARTUP_REPEATS = 2
VAL_REPEATS = 3
CHECKPOINT_REPEATS = 2
#: a DataLoader timeout for the probe's own iterators, so a dead worker cannot hang the run
LOADER_TIMEOUT_S = 120.0


def _start_method(loader: Any) -> tuple[str | None, str]:
    if int(getattr(loader, "num_workers", 0) or 0) == 0:
        return None, "no workers"
    ctx = getattr(loader, "multiprocessing_context", None)
    if ctx is not None:
        return (ctx.get_start_method() if hasattr(ctx, "get_start_method") else str(ctx)), "loader"
    # get_all_start_methods()[0] is the platform default; get_start_method() would fix it as a side effect
    return mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0], "platform default"


def _steady_wait(record: Mapping[str, Any]) -> float | None:
    series = record.get("series") or {}
    warm = int(series.get("warmup_steps") or 0)
    return median((series.get("data_wait_s") or [])[warm:])


def first_batch(loader: Any) -> tuple[Any, dict[str, float]]:
    """One epoch start: fresh iterator, first batch, workers shut down.  Returns (batch, timings)."""
    persistent_slot = hasattr(loader, "_iterator")
    saved = loader._iterator if persistent_slot else None
    old_timeout = getattr(loader, "timeout", 0)
    if int(getattr(loader, "num_workers", 0) or 0) > 0:
        loader.timeout = LOADER_TIMEOUT_S
    it = None
    try:
        if persistent_slot:
            loader._iterator = None  # a persistent loader would reuse (reset) a live iterator: start fresh
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            t0 = time.perf_counter()
            it = iter(loader)
            t1 = time.perf_counter()
            batch = next(it)
            t2 = time.perf_counter()
    finally:
        t3 = time.perf_counter()
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        t4 = time.perf_counter()
        if persistent_slot:
            loader._iterator = saved
        loader.timeout = old_timeout
    return batch, {"start_workers_s": t1 - t0, "first_batch_wait_s": t2 - t1, "total_s": t2 - t0,
                   "shutdown_s": t4 - t3}


def _split_batch(batch: Any, variant: str) -> tuple[torch.Tensor, Any]:
    if variant == "efficient":
        images, _labels, masks = batch
        return images, masks
    return batch[0], None


def measure_val_step(trainer: Trainer, backend: Any, batch: Any, variant: str,
                     repeats: int = VAL_REPEATS) -> dict[str, Any]:
    images_host, masks_host = _split_batch(batch, variant)
    device = getattr(trainer, "device", None) or backend.device()
    model = trainer.model
    was_training = model.training
    inputs, forwards, loss = [], [], None
    model.eval()
    try:
        with torch.no_grad():
            for i in range(1 + repeats):
                backend.synchronize()
                t0 = time.perf_counter()
                images = to_device(images_host, device)
                if masks_host is None:
                    masks = trainer.make_masks(images.shape[0])
                else:
                    masks = masks_host.to(device, non_blocking=True)
                backend.synchronize()
                t1 = time.perf_counter()
                with trainer.autocast():
                    loss, _ = trainer.loss(images, masks)
                backend.synchronize()
                t2 = time.perf_counter()
                if i:  # the first run is untimed
                    inputs.append(t1 - t0)
                    forwards.append(t2 - t1)
    finally:
        model.train(was_training)
    runs = [a + b for a, b in zip(inputs, forwards)]
    value = float(loss.detach().float().cpu()) if loss is not None else None
    return {
        "val_step_s": median(runs),
        "val_inputs_s": median(inputs),
        "val_forward_s": median(forwards),
        "val_step_runs_s": runs,
        "val_batch_size": int(images_host.shape[0]),
        "val_loss": value if value is not None and math.isfinite(value) else None,
        "val_precision": getattr(trainer, "precision", None),
    }


def _make_parent(path: str) -> list[str]:
    """Create ``path`` if missing; return the folders created, deepest first."""
    created, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        created.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    os.makedirs(path, exist_ok=True)
    return created


def measure_checkpoint(trainer: Trainer, parent: str | None, repeats: int = CHECKPOINT_REPEATS) -> dict[str, Any]:
    from ..hjepa.checkpoint import checkpoint_state, save_checkpoint  # (training only: timm, torchvision)

    created = _make_parent(parent) if parent else []
    try:
        runs, sizes, copies = [], [], []
        with tempfile.TemporaryDirectory(prefix="hjepa-bench-ckpt-", dir=parent or None) as tmp:
            for i in range(repeats):
                path = os.path.join(tmp, f"checkpoint_{i}.pth")
                t0 = time.perf_counter()
                state = checkpoint_state(trainer, 0)
                save_checkpoint(state, path, atomic=False)
                runs.append(time.perf_counter() - t0)
                del state
                sizes.append(os.path.getsize(path))
                for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):  # the upstream manager's copies
                    t0 = time.perf_counter()
                    shutil.copy(path, os.path.join(tmp, name))
                    copies.append(time.perf_counter() - t0)
                    os.remove(os.path.join(tmp, name))
                os.remove(path)
            dir_parent = os.path.dirname(tmp)
    finally:
        for d in created:  # only folders this probe made, and only while empty
            try:
                os.rmdir(d)
            except OSError:
                break
    save, copy = median(runs), median(copies)
    return {"checkpoint_save_s": save, "checkpoint_runs_s": runs, "checkpoint_copy_s": copy,
            "checkpoint_write_s": None if save is None or copy is None else save + 2 * copy,
            "checkpoint_bytes": int(median(sizes)), "checkpoint_dir_parent": dir_parent}


_FIELDS = {
    "worker_startup_s": ("worker_startup_s", "worker_startup_runs_s", "first_batch_s", "worker_shutdown_s",
                         "startup_extra_s"),
    "val_step_s": ("val_step_s", "val_inputs_s", "val_forward_s", "val_step_runs_s", "val_batch_size",
                   "val_loss", "val_precision"),
    "checkpoint_save_s": ("checkpoint_save_s", "checkpoint_runs_s", "checkpoint_copy_s", "checkpoint_write_s",
                          "checkpoint_bytes", "checkpoint_dir_parent"),
    "periodic": ("periodic",),
    "model_build_s": ("model_build_s",),
}


def measure_model_build(config: Mapping[str, Any], device: Any) -> float:
    """Seconds to build the H-JEPA model of ``config`` (timm modules, initialised weights) and move it
    to ``device``: what a real run pays once before its first step."""
    from ..hjepa.model import HJEPA
    t0 = time.perf_counter()
    model = HJEPA.from_config(config).to(device)
    elapsed = time.perf_counter() - t0
    del model
    return elapsed


def measure_epoch_costs(trainer: Trainer, loader: Any, backend: Any, config: Mapping[str, Any], *,
                        artifacts_dir: str | None, steady_wait: float | None,
                        build_model: bool = True) -> dict[str, Any]:
    """Every measurement above on ``trainer`` / ``loader`` (the run's own), as one probe entry."""
    bench = config.get("bench") or {}
    variant = getattr(trainer, "variant", None) or bench.get("variant", "reference")
    workers = int(getattr(loader, "num_workers", 0) or 0)
    persistent = bool(bench.get("persistent_workers", False))
    effective = bool(getattr(loader, "persistent_workers", False)) and workers > 0
    method, method_source = _start_method(loader)
    entry: dict[str, Any] = {
        "measured": True,
        "variant": variant,
        "steps_per_epoch": len(loader) if hasattr(loader, "__len__") else None,
        "num_workers": workers,
        "persistent_workers": persistent,
        "persistent_workers_effective": effective,
        "multiprocessing_context": method,
        "multiprocessing_context_source": method_source,
        "paid_every_epoch": workers > 0 and not effective,
        "steady_batch_wait_s": steady_wait,
    }
    for fields in _FIELDS.values():
        entry.update(dict.fromkeys(fields))
    errors: dict[str, str] = {}

    # 1. worker start-up
    batch = None
    try:
        runs = []
        for _ in range(STARTUP_REPEATS):
            b, t = first_batch(loader)
            batch = b if batch is None else batch
            runs.append(t)
        startup = median(r["total_s"] for r in runs)
        entry.update({
            "worker_startup_s": startup,
            "worker_startup_runs_s": [r["total_s"] for r in runs],
            "first_batch_s": {"start_workers_s": median(r["start_workers_s"] for r in runs),
                              "first_batch_wait_s": median(r["first_batch_wait_s"] for r in runs)},
            "worker_shutdown_s": median(r["shutdown_s"] for r in runs),
            "startup_extra_s": None if steady_wait is None or startup is None else max(0.0, startup - steady_wait),
        })
    except Exception as exc:
        errors["worker_startup_s"] = error_line(exc, 200)

    # 2. validation forward
    try:
        if batch is None:
            batch, _ = first_batch(loader)
        entry.update(measure_val_step(trainer, backend, batch, variant))
    except Exception as exc:
        errors["val_step_s"] = error_line(exc, 200)

    # 3. checkpoint
    try:
        entry.update(measure_checkpoint(trainer, artifacts_dir))
    except Exception as exc:
        errors["checkpoint_save_s"] = error_line(exc, 200)

    # 4. the trainer's periodic work
    try:
        images, masks_host = _split_batch(batch, variant)
        device = getattr(trainer, "device", None) or backend.device()
        images = images.to(device)
        masks = trainer.make_masks(images.shape[0]) if masks_host is None else masks_host.to(device)
        entry["periodic"] = measure_periodic(trainer, backend, images, masks, LoggingPlan.from_config(config))
    except Exception as exc:
        errors["periodic"] = error_line(exc, 200)
    batch = None

    # 5. model build
    if build_model:
        try:
            entry["model_build_s"] = measure_model_build(config, getattr(trainer, "device", None) or backend.device())
        except Exception as exc:
            errors["model_build_s"] = error_line(exc, 200)
    entry["errors"] = errors
    return entry

