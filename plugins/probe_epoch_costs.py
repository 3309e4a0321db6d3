"""Probe ``epoch_costs`` (cheap): what a real training run pays per epoch besides the steps.

Runs in ``finish`` (after the timed loop; the workload's endless iterator is
already shut down, the DataLoader itself can start a new one) and measures, on
the built-in ``hjepa`` workload (any workload whose prepared object has the optional
``PreparedWorkload.loader`` and ``.trainer``, like :class:`hjepa_bench.hjepa.step.HJEPAStep`):

1. **Worker start-up** (``worker_startup_s``): a non-persistent DataLoader
   starts fresh workers at every epoch.  Timed from ``iter(loader)`` to the
   first batch in hand, split into ``iter(loader)`` (worker processes started,
   first indices queued) and the wait in the first ``next()`` (workers import /
   unpickle the data set under ``spawn``, run ``worker_init_fn``, build one
   batch).  Then the iterator's workers are shut down (timed too, as
   ``worker_shutdown_s``).  Repeated ``STARTUP_REPEATS`` times, median
   reported.  With ``persistent_workers`` a real run pays it once, not per
   epoch (``paid_every_epoch``); with ``num_workers == 0`` nothing starts and
   the number is one batch built in the main process.
2. **Validation step** (``val_step_s``): the forward a validation pass runs on
   one batch: ``model.eval()``, ``torch.no_grad()``, the trainer's autocast,
   inputs moved to the device (masks sampled on the host for ``reference``,
   taken from the batch for ``efficient``) and ``trainer.loss(images,
   masks)``, synced with the backend.  1 untimed + ``VAL_REPEATS`` timed,
   median; the model's train/eval mode is restored.
3. **Checkpoint** (``checkpoint_save_s``, ``checkpoint_bytes``): ``torch.save``
   of the upstream checkpoint layout (epoch, model, optimizer and GradScaler
   state dicts) into a temporary folder under ``ctx.artifacts_dir`` (the
   system temp folder when the run keeps none), flushed and fsynced.
   ``CHECKPOINT_REPEATS`` saves, median; the files (and any folder the probe
   had to create) are removed.

A measurement that fails leaves its fields ``None`` and its error, one line,
under ``errors[<its main field>]``; the other measurements still come back.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Iterable, Mapping

import torch

from hjepa_bench.plugin.api import Probe, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.format import fmt_bytes, fmt_ms, fmt_or_dash
from hjepa_bench.hjepa.training import checkpoint_state, save_checkpoint
from hjepa_bench.report.sections import ProbeTable

STARTUP_REPEATS = 2
VAL_REPEATS = 3
CHECKPOINT_REPEATS = 2
#: a DataLoader timeout for the probe's own iterators, so a dead worker cannot hang the run
LOADER_TIMEOUT_S = 120.0

DEFINITIONS = {
    "measured": "True when the workload exposes a DataLoader (.loader) and an H-JEPA trainer (.trainer)",
    "variant": "the step variant (reference: masks sampled on the host per batch; efficient: masks come "
               "with the batch from the DataLoader workers)",
    "steps_per_epoch": "len(loader): training steps in one epoch (drop_last=True)",
    "num_workers": "DataLoader worker processes",
    "persistent_workers": "config bench.persistent_workers",
    "persistent_workers_effective": "the loader's persistent_workers (False whenever num_workers is 0)",
    "multiprocessing_context": "start method of the worker processes (fork, spawn, forkserver); None without "
                               "workers",
    "multiprocessing_context_source": "'loader' when the DataLoader sets one, else 'platform default'",
    "paid_every_epoch": "True when a real run pays worker_startup_s at every epoch start (workers > 0, not "
                        "persistent); False: persistent workers start once per run, or there are no workers",
    "worker_startup_s": "median over repeats of the time from iter(loader) to the first batch in hand, with "
                        "fresh workers (s)",
    "worker_startup_runs_s": "worker_startup_s of each repeat, in order (s)",
    "first_batch_s": "medians of the two parts of worker_startup_s: start_workers_s = iter(loader) returning "
                     "(processes started, first indices queued), first_batch_wait_s = the first next() "
                     "(worker imports under spawn, worker_init_fn, one batch built and sent) (s)",
    "worker_shutdown_s": "median time of the iterator's _shutdown_workers() right after the first batch; an "
                         "upper bound of the shutdown at an epoch's end (workers may still be finishing a "
                         "prefetched batch here) (s)",
    "steady_batch_wait_s": "median series.data_wait_s over the run's measured (post-warm-up) steps: what a "
                           "batch costs to wait for once the workers run (s)",
    "startup_extra_s": "max(0, worker_startup_s - steady_batch_wait_s): what an epoch's first batch costs "
                       "beyond a steady one; paid every epoch when paid_every_epoch, else once per run (s)",
    "val_step_s": "median over timed repeats of one validation forward: inputs to the device (+ host mask "
                  "sampling in the reference variant) and trainer.loss under model.eval(), torch.no_grad() "
                  "and the trainer's autocast, synced (s)",
    "val_inputs_s": "median of the inputs part of val_step_s (to device, masks) (s)",
    "val_forward_s": "median of the trainer.loss part of val_step_s (s)",
    "val_step_runs_s": "val_step_s of each timed repeat (s)",
    "val_batch_size": "samples in the validation batch (one training batch)",
    "val_loss": "the loss of the last timed validation forward (a finite-ness check)",
    "val_precision": "the autocast precision of the validation forward (the trainer's)",
    "checkpoint_save_s": "median over repeats of building the upstream checkpoint dict (epoch, "
                         "model_state_dict, optimizer_state_dict, scaler_state_dict), torch.save into a file, "
                         "flush and os.fsync (s)",
    "checkpoint_runs_s": "checkpoint_save_s of each repeat (s)",
    "checkpoint_bytes": "size of the saved checkpoint file (bytes)",
    "checkpoint_dir_parent": "the folder the temporary checkpoint folder was made in (ctx.artifacts_dir, or "
                             "the system temp folder); its file system sets the fsync cost",
    "errors": "measurement -> one-line error for each measurement that failed (its fields are then None)",
    "probe_time_s": "wall time of the whole probe (s)",
}


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ").rstrip()


def _median(xs: Iterable[float]) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return statistics.median(xs) if xs else None


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
    return _median((series.get("data_wait_s") or [])[warm:])


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


def measure_val_step(trainer: Any, backend: Any, batch: Any, variant: str,
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
                images = images_host.to(device, non_blocking=True)
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
        "val_step_s": _median(runs),
        "val_inputs_s": _median(inputs),
        "val_forward_s": _median(forwards),
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


def measure_checkpoint(trainer: Any, parent: str | None, repeats: int = CHECKPOINT_REPEATS) -> dict[str, Any]:
    created = _make_parent(parent) if parent else []
    try:
        runs, sizes = [], []
        with tempfile.TemporaryDirectory(prefix="hjepa-bench-ckpt-", dir=parent or None) as tmp:
            for i in range(repeats):
                path = os.path.join(tmp, f"checkpoint_{i}.pth")
                t0 = time.perf_counter()
                state = checkpoint_state(trainer, 0)
                save_checkpoint(state, path, atomic=False)
                runs.append(time.perf_counter() - t0)
                del state
                sizes.append(os.path.getsize(path))
                os.remove(path)
            dir_parent = os.path.dirname(tmp)
    finally:
        for d in created:  # only folders this probe made, and only while empty
            try:
                os.rmdir(d)
            except OSError:
                break
    return {"checkpoint_save_s": _median(runs), "checkpoint_runs_s": runs,
            "checkpoint_bytes": int(statistics.median(sizes)), "checkpoint_dir_parent": dir_parent}


_FIELDS = {
    "worker_startup_s": ("worker_startup_s", "worker_startup_runs_s", "first_batch_s", "worker_shutdown_s",
                         "startup_extra_s"),
    "val_step_s": ("val_step_s", "val_inputs_s", "val_forward_s", "val_step_runs_s", "val_batch_size",
                   "val_loss", "val_precision"),
    "checkpoint_save_s": ("checkpoint_save_s", "checkpoint_runs_s", "checkpoint_bytes", "checkpoint_dir_parent"),
}


class EpochCostsProbe(Probe):
    name = "epoch_costs"
    headline = ("worker_startup_s", "val_step_s", "checkpoint_save_s", "checkpoint_bytes")
    cost = "cheap"
    description = ("Per-epoch costs besides the steps: DataLoader worker start-up (fresh workers to the first "
                   "batch), one validation forward, and a checkpoint save (bytes, fsynced)")

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        t_start = time.perf_counter()
        work = ctx.workload
        loader, trainer = work.loader, work.trainer
        needed = ("model", "optimizer", "loss", "make_masks", "autocast")
        if loader is None or trainer is None or not all(hasattr(trainer, a) for a in needed):
            return {"measured": False,
                    "reason": (f"the workload ({type(work).__name__}) exposes no DataLoader (.loader) and H-JEPA "
                               "trainer (.trainer with model, optimizer, loss, make_masks, autocast) to measure "
                               "epoch costs on"),
                    "definitions": {"measured": DEFINITIONS["measured"],
                                    "reason": "why the probe could not measure this workload"}}
        bench = ctx.config.get("bench") or {}
        variant = getattr(trainer, "variant", None) or bench.get("variant", "reference")
        workers = int(getattr(loader, "num_workers", 0) or 0)
        persistent = bool(bench.get("persistent_workers", False))
        effective = bool(getattr(loader, "persistent_workers", False)) and workers > 0
        method, method_source = _start_method(loader)
        steady = _steady_wait(record)
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
            "steady_batch_wait_s": steady,
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
            startup = _median(r["total_s"] for r in runs)
            entry.update({
                "worker_startup_s": startup,
                "worker_startup_runs_s": [r["total_s"] for r in runs],
                "first_batch_s": {"start_workers_s": _median(r["start_workers_s"] for r in runs),
                                  "first_batch_wait_s": _median(r["first_batch_wait_s"] for r in runs)},
                "worker_shutdown_s": _median(r["shutdown_s"] for r in runs),
                "startup_extra_s": None if steady is None else max(0.0, startup - steady),
            })
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
            errors["worker_startup_s"] = _error(exc)

        # 2. validation forward
        try:
            if batch is None:
                batch, _ = first_batch(loader)
            entry.update(measure_val_step(trainer, ctx.backend, batch, variant))
        except Exception as exc:  # noqa: BLE001
            errors["val_step_s"] = _error(exc)
        batch = None

        # 3. checkpoint
        try:
            entry.update(measure_checkpoint(trainer, ctx.artifacts_dir))
        except Exception as exc:  # noqa: BLE001
            errors["checkpoint_save_s"] = _error(exc)

        entry["errors"] = errors
        entry["definitions"] = dict(DEFINITIONS)
        entry["probe_time_s"] = time.perf_counter() - t_start
        return entry

    def summarize(self, entry: Mapping[str, Any]) -> str | None:
        if not entry.get("measured"):
            return f"not measured: {entry.get('reason', 'no reason given')}"
        errors = entry.get("errors") or {}
        parts = []
        startup = entry.get("worker_startup_s")
        if startup is None:
            parts.append("worker start-up failed" if "worker_startup_s" in errors else "worker start-up n/a")
        elif not entry.get("num_workers"):
            parts.append(f"no workers (first batch {fmt_ms(startup)})")
        else:
            how = "/epoch" if entry.get("paid_every_epoch") else " once (persistent)"
            parts.append(f"worker start-up {startup:.2f} s{how}")
        val = entry.get("val_step_s")
        if val is None:
            parts.append("val step failed" if "val_step_s" in errors else "val step n/a")
        else:
            parts.append(f"val step {val * 1000:.0f} ms (b{entry.get('val_batch_size')})")
        ckpt = entry.get("checkpoint_save_s")
        if ckpt is None:
            parts.append("checkpoint failed" if "checkpoint_save_s" in errors else "checkpoint n/a")
        else:
            size = entry.get("checkpoint_bytes")
            size_txt = "n/a" if size is None else f"{size / 2**20:.0f} MiB"
            parts.append(f"checkpoint {ckpt:.2f} s ({size_txt})")
        return ", ".join(parts)


class EpochCostsSection(ProbeTable):
    name = "epoch_costs"
    title = "Per-epoch costs: worker start-up, validation step, checkpoint"
    order = 55
    failed = None  # only measured entries
    note = ("Worker start-up: iter(loader) to the first batch with fresh DataLoader workers (median of "
            f"{STARTUP_REPEATS}), split into starting the workers and waiting for the first batch; a "
            "non-persistent loader pays it at every epoch start. Val step: one forward of the H-JEPA loss in "
            f"eval mode without gradients, inputs moved to the device (median of {VAL_REPEATS}). Checkpoint: "
            "torch.save of model, optimizer and scaler state, flushed and fsynced (median of "
            f"{CHECKPOINT_REPEATS}); the folder's file system matters.")

    def row(self, e: Mapping[str, Any]) -> dict[str, Any] | None:
        if not e.get("measured"):
            return None
        errors = e.get("errors") or {}
        fb = e.get("first_batch_s") or {}
        return {
            "variant": e.get("variant"),
            "steps/epoch": e.get("steps_per_epoch"),
            "mp context": e.get("multiprocessing_context") or "-",
            "worker start-up (s)": fmt_or_dash(e.get("worker_startup_s"), ".3f"),
            "start / first batch (s)": f"{fmt_or_dash(fb.get('start_workers_s'), '.3f')} / {fmt_or_dash(fb.get('first_batch_wait_s'), '.3f')}",
            "paid": "every epoch" if e.get("paid_every_epoch") else (
                "once (persistent)" if e.get("persistent_workers_effective") else "no workers"),
            "steady wait": fmt_ms(e.get("steady_batch_wait_s")),
            "val step": fmt_ms(e.get("val_step_s")),
            "val batch": fmt_or_dash(e.get("val_batch_size"), "d"),
            "checkpoint (s)": fmt_or_dash(e.get("checkpoint_save_s"), ".3f"),
            "checkpoint size": fmt_bytes(e.get("checkpoint_bytes")),
            "errors": "; ".join(f"{k}: {v}" for k, v in errors.items()) or "-",
        }


@hookimpl
def hjepa_bench_register_probes(register):
    register(EpochCostsProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(EpochCostsSection())
