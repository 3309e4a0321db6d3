"""Time-to-train projections (pure: result records in, plain dicts out).

A full run of ``epochs`` epochs over ``dataset_size`` images at batch ``b`` per process, with
``world_size`` data-parallel processes (1 for one device; a DDP job's record says how many), is

    steps          = epochs x (dataset_size // (world_size x b))
                     (drop_last, as upstream; a DDP job's DistributedSampler gives each of its
                     ranks dataset_size // world_size images, so each step takes world_size x b)
    training time  = steps x measured time per step
    + per epoch    = DataLoader worker start-up (train loader, when workers are not
                     persistent; also the validation loader)
                   + a validation pass every ``val_every_epochs`` epochs
                     (ceil(val_size / (world_size x b)) forward-only steps, measured: the
                     validation images are sharded over the ranks like the training images)
    + checkpoints  = one write every ``checkpoint_every_epochs`` epochs and one at
                     the end (measured ``torch.save`` of model + optimizer)

The time per step is ``1 / it_per_s`` of the record (steps / summed window time,
the run's own throughput; for a DDP job, the job's steps per second, i.e. its slowest rank's).  Its band is the Student t confidence interval of the
mean per-step time (mean +- t(n-1) x s / sqrt(n), scipy.stats.t; honest at small n,
where a bootstrap of a handful of steps is far too narrow) scaled to that
throughput: the uncertainty of the measurement itself.  Fewer than
``MIN_STEPS_BAND`` (5) measured steps give no band at all (``band_note`` says
so).  A run that slows
down over hours, or a busy machine, is not in the band; the stability probe
reports drift.  Per-epoch costs come from the ``epoch_costs`` probe of the same
record; a cost that was not measured is named in ``missing`` and counted as 0,
so the projection is then a lower bound and says so.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as sstats

from ..format import finite
from .policy import shortfall
from ..record import batch_achieved, batch_requested, probe
from ..record import world_size as record_world_size

#: fewer measured steps than this: no band (a t interval from 2-4 steps is too wide to use,
#: and any narrower one is not honest)
MIN_STEPS_BAND = 5
BAND_METHOD = "Student t interval of the mean step time"


def measured_step_times(record: Mapping[str, Any]) -> list[float]:
    """Per-step times after warm-up (seconds), finite ones only."""
    series = record.get("series") or {}
    times = series.get("step_time_s") or []
    skip = int(series.get("warmup_steps") or 0)
    return [t for t in (finite(x) for x in times[skip:]) if t is not None]


def no_band_note(n: int) -> str | None:
    """Why there is no band for ``n`` measured steps (None: there is one)."""
    return f"no band (n < {MIN_STEPS_BAND})" if n < MIN_STEPS_BAND else None


def mean_band(times: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the mean per-step time and its Student t confidence interval
    (mean +- t_{(1+confidence)/2, n-1} x s / sqrt(n), the low end floored at 0).  No
    band (None, None) below ``MIN_STEPS_BAND`` steps."""
    x = np.asarray([t for t in times if t is not None and math.isfinite(t)], dtype=float)
    if x.size == 0:
        return None, None, None
    mean = float(x.mean())
    if x.size < MIN_STEPS_BAND:
        return mean, None, None
    half = float(sstats.t.ppf((1 + confidence) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, max(0.0, mean - half), mean + half


def seconds_per_step(record: Mapping[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """The record's time per step (``1 / it_per_s``) with its band (``band_note`` when there is none)."""
    metrics = record.get("metrics") or {}
    ips = finite(metrics.get("it_per_s"))
    times = measured_step_times(record)
    mean, low, high = mean_band(times, confidence)
    note = no_band_note(len(times))
    if ips is None or ips <= 0:
        return {"mid": None, "low": None, "high": None, "n": len(times), "source": "not measured", "band_note": note}
    mid = 1.0 / ips
    if mean and low is not None and high is not None:
        lo, hi = mid * low / mean, mid * high / mean
    else:
        lo = hi = None
    return {"mid": mid, "low": lo, "high": hi, "n": len(times), "confidence": confidence, "band_note": note,
            "source": f"1 / it_per_s; band: {BAND_METHOD} (none below {MIN_STEPS_BAND} steps)"}


def epoch_costs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The per-epoch costs the ``epoch_costs`` probe measured in this record (None: not measured)."""
    entry = probe(record, "epoch_costs") or {}
    ok = entry.get("status", "ok") == "ok" and entry.get("measured", True) is not False
    get = (lambda k: finite(entry.get(k))) if ok else (lambda k: None)
    return {
        "worker_startup_s": get("worker_startup_s"),
        "worker_startup_every_epoch": bool(entry.get("paid_every_epoch", True)),
        "val_step_s": get("val_step_s"),
        "val_batch_size": entry.get("val_batch_size") if ok else None,
        "checkpoint_save_s": get("checkpoint_save_s"),
        "checkpoint_bytes": entry.get("checkpoint_bytes") if ok else None,
    }


def project(*, sec_per_step: Mapping[str, Any], batch_size: int, epochs: int, dataset_size: int,
            costs: Mapping[str, Any] | None, val_size: int = 10_000, val_every_epochs: int = 1,
            checkpoint_every_epochs: int = 1, world_size: int = 1) -> dict[str, Any]:
    """Project a full run.  See the module docstring for the arithmetic."""
    if batch_size < 1 or epochs < 1 or dataset_size < 1 or world_size < 1:
        raise ValueError("batch_size, epochs, dataset_size and world_size must be positive")
    spe = dataset_size // (batch_size * world_size)
    total_steps = spe * epochs
    mid = sec_per_step.get("mid")
    per_step = f"{world_size} processes x batch {batch_size}" if world_size > 1 else f"batch {batch_size}"
    out: dict[str, Any] = {
        "epochs": epochs, "batch_size": batch_size, "world_size": world_size, "dataset_size": dataset_size,
        "steps_per_epoch": spe, "total_steps": total_steps, "seconds_per_step": dict(sec_per_step), "missing": [],
        "band_note": sec_per_step.get("band_note"),
        "assumptions": [f"{dataset_size:,} images per epoch, drop_last, {per_step} per step "
                        f"(steps/epoch = {spe:,})"],
    }
    if mid is None or spe == 0:
        out.update(train_s=None, overheads_s={}, total_s=None, hours=None)
        out["missing"].append("step time")
        return out
    train = {k: (None if sec_per_step.get(k) is None else total_steps * sec_per_step[k]) for k in ("mid", "low", "high")}
    costs = costs or {}
    overheads: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    ws = finite(costs.get("worker_startup_s"))
    val_passes = epochs // max(1, val_every_epochs)
    if ws is None:
        overheads["worker_startup"] = None
        out["missing"].append("worker start-up")
    else:
        starts = (epochs if costs.get("worker_startup_every_epoch", True) else 1) + val_passes
        counts["worker_startups"] = starts
        overheads["worker_startup"] = starts * ws
    vs = finite(costs.get("val_step_s"))
    val_batch = int(costs.get("val_batch_size") or batch_size)
    if vs is None:
        overheads["validation"] = None
        out["missing"].append("validation pass")
    else:
        val_steps = math.ceil(val_size / (max(1, val_batch) * world_size))
        counts["validation_passes"] = val_passes
        counts["validation_steps_per_pass"] = val_steps
        overheads["validation"] = val_passes * val_steps * vs
    ck = finite(costs.get("checkpoint_save_s"))
    every = max(1, checkpoint_every_epochs)
    writes = epochs // every + (1 if epochs % every else 0)
    if ck is None:
        overheads["checkpoints"] = None
        out["missing"].append("checkpoint writes")
    else:
        counts["checkpoint_writes"] = writes
        overheads["checkpoints"] = writes * ck
    fixed = sum(v for v in overheads.values() if v is not None)
    total = {k: (None if v is None else v + fixed) for k, v in train.items()}
    out.update(train_s=train, overheads_s=overheads, overhead_counts=counts, overhead_total_s=fixed, total_s=total,
               hours={k: (None if v is None else v / 3600.0) for k, v in total.items()},
               lower_bound=bool(out["missing"]))
    out["assumptions"] += [
        f"validation pass every {val_every_epochs} epoch(s) over {val_size:,} images at batch {val_batch}"
        + (f", sharded over the {world_size} processes" if world_size > 1 else ""),
        f"checkpoint every {every} epoch(s) and at the end ({writes} writes)",
        "DataLoader workers restarted every epoch (upstream)" if costs.get("worker_startup_every_epoch", True)
        else "persistent DataLoader workers: start-up paid once",
    ]
    return out


def project_record(record: Mapping[str, Any], *, epochs: int, dataset_size: int = 50_000, val_size: int = 10_000,
                   val_every_epochs: int = 1, checkpoint_every_epochs: int = 1,
                   confidence: float = 0.95) -> dict[str, Any]:
    """``project`` with the step time, per-epoch costs and world size measured in ``record``."""
    batch = batch_achieved(record) or batch_requested(record)  # (achieved is a list when the batch varied)
    sps = seconds_per_step(record, confidence)
    short = shortfall(record)  # fewer steps than its minimum: no hours at all, the reason instead
    if short is not None:
        sps = {**sps, "mid": None, "low": None, "high": None, "source": short["text"], "band_note": short["text"]}
    out = project(sec_per_step=sps, batch_size=batch, epochs=epochs,
                  dataset_size=dataset_size, costs=epoch_costs(record), val_size=val_size,
                  val_every_epochs=val_every_epochs, checkpoint_every_epochs=checkpoint_every_epochs,
                  world_size=record_world_size(record))
    if short is not None:
        out["not_measured"] = short["text"]
    return out
