"""Time-to-train projections (pure: result records in, plain dicts out).

A full run of ``epochs`` epochs over ``dataset_size`` images at batch ``b`` per process, with
``world_size`` data-parallel processes (1 for one device; a DDP job's record says how many), is

    steps          = epochs x (dataset_size // (world_size x b))
                     (drop_last, as upstream; a DDP job's DistributedSampler gives each of its
                     ranks dataset_size // world_size images, so each step takes world_size x b)
    training time  = steps x measured time per step
    + per epoch    = DataLoader worker start-up (train loader, when workers are not
                     persistent: its excess over a steady batch wait when measured; also the
                     validation loader, whole)
                   + a validation pass every ``val_every_epochs`` epochs
                     (ceil(val_size / (world_size x b)) forward-only steps, measured: the
                     validation images are sharded over the ranks like the training images)
    + checkpoints  = one write at each epoch that is a ``checkpoint_every_epochs`` multiple or
                     whose validation loss improved (the upstream trainer's rule; an upper
                     bound of one per epoch unless the caller knows how many improved): a
                     measured ``torch.save`` of model + optimizer and the copies to
                     ``checkpoint_latest.pth`` / ``checkpoint_best.pth``
    + trainer's periodic work (:mod:`hjepa_bench.hjepa.periodic`): count x measured cost of the
                     per-step read-backs, TensorBoard scalars, gradient histograms, collapse
                     metrics and ``empty_cache``, the counts from the config's ``logging`` section
                     (a disabled logger costs nothing)
    + once         = the warm-up steps' excess over as many steady steps, and the model build

The time per step is ``1 / it_per_s`` of the record (steps / summed window time,
the run's own throughput; for a DDP job, the job's steps per second, i.e. its slowest rank's).  Its band is
the Student t confidence interval of the mean per-step time (mean +- t(n-1) x s / sqrt(n), scipy.stats.t;
honest at small n, where a bootstrap of a handful of steps is far too narrow) scaled to that
throughput: the uncertainty of the measurement itself.  Fewer than
``MIN_STEPS_BAND`` (5) measured steps give no band at all (``band_note`` says
so).  A run that slows
down over hours, or a busy machine, is not in the band; the stability probe
reports drift.  Per-epoch costs come from a probe of the same record (its fact
``epoch_costs``: :func:`epoch_costs`); a cost that was not measured is named in ``missing`` and counted as 0,
so the projection is then a lower bound and says so.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..format import finite
from ..plugin.api import Probe
from ..record import batch_achieved, batch_requested
from ..record import world_size as record_world_size
from ..stats import mean_band as _mean_band
from ..stats import median
from ..status import NOT_MEASURED
from .periodic import LoggingPlan, has_empty_cache, periodic_counts, periodic_seconds
from .policy import shortfall
from .verdicts import probe_facts

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
    (:func:`hjepa_bench.stats.mean_band`); no band (None, None) below ``MIN_STEPS_BAND`` steps."""
    return _mean_band(times, confidence, min_n=MIN_STEPS_BAND)


def seconds_per_step(record: Mapping[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """The record's time per step (``1 / it_per_s``) with its band (``band_note`` when there is none)."""
    metrics = record.get("metrics") or {}
    ips = finite(metrics.get("it_per_s"))
    times = measured_step_times(record)
    mean, low, high = mean_band(times, confidence)
    note = no_band_note(len(times))
    if ips is None or ips <= 0:
        return {"mid": None, "low": None, "high": None, "n": len(times), "source": NOT_MEASURED, "band_note": note}
    mid = 1.0 / ips
    lo: float | None
    hi: float | None
    if mean and low is not None and high is not None:
        lo, hi = mid * low / mean, mid * high / mean
    else:
        lo = hi = None
    return {"mid": mid, "low": lo, "high": hi, "n": len(times), "confidence": confidence, "band_note": note,
            "source": f"1 / it_per_s; band: {BAND_METHOD} (none below {MIN_STEPS_BAND} steps)"}


def epoch_costs(record: Mapping[str, Any], probes: Mapping[str, Probe] | None = None) -> dict[str, Any]:
    """The per-epoch costs a probe measured in this record (its fact ``epoch_costs``; None: not measured)."""
    return probe_facts(record, probes).get("epoch_costs") or costs_from_entry({})


def costs_from_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The per-epoch costs of an entry of the costs' probe (None: not measured)."""
    ok = entry.get("status", "ok") == "ok" and entry.get("measured", True) is not False

    def get(key: str) -> float | None:
        return finite(entry.get(key)) if ok else None

    return {
        "worker_startup_s": get("worker_startup_s"),
        "startup_extra_s": get("startup_extra_s"),
        "worker_startup_every_epoch": bool(entry.get("paid_every_epoch", True)),
        "val_step_s": get("val_step_s"),
        "val_batch_size": entry.get("val_batch_size") if ok else None,
        "checkpoint_save_s": get("checkpoint_save_s"),
        "checkpoint_write_s": get("checkpoint_write_s"),
        "checkpoint_bytes": entry.get("checkpoint_bytes") if ok else None,
        "periodic": (entry.get("periodic") or None) if ok else None,
        "model_build_s": get("model_build_s"),
    }


#: the periodic-work columns of a projection, in table order
PERIODIC_COLUMNS = ("readbacks", "scalars", "histograms", "collapse", "empty_cache")
LOGGING_MISSING = "trainer's periodic work (read-backs, TensorBoard, collapse metrics)"


def _worker_startup_cost(costs: Mapping[str, Any], epochs: int, val_passes: int, overheads: dict[str, Any],
                         counts: dict[str, int], missing: list[str]) -> None:
    """Worker start-ups: every epoch (or once, persistent workers) for training, every validation pass."""
    ws = finite(costs.get("worker_startup_s"))
    if ws is None:
        overheads["worker_startup"] = None
        missing.append("worker start-up")
        return
    train_starts = epochs if costs.get("worker_startup_every_epoch", True) else 1
    counts["worker_startups"] = train_starts + val_passes
    # an epoch's first training batch is also one of its steps: only its excess over a steady
    # batch wait is extra (startup_extra_s, when measured); a validation pass pays it whole
    extra = finite(costs.get("startup_extra_s"))
    overheads["worker_startup"] = train_starts * (ws if extra is None else extra) + val_passes * ws


def _validation_cost(costs: Mapping[str, Any], batch_size: int, val_size: int, world_size: int, val_passes: int,
                     overheads: dict[str, Any], counts: dict[str, int], missing: list[str]) -> int:
    """Validation passes over ``val_size`` images, sharded over the processes; returns the validation batch."""
    vs = finite(costs.get("val_step_s"))
    val_batch = int(costs.get("val_batch_size") or batch_size)
    if vs is None:
        overheads["validation"] = None
        missing.append("validation pass")
    else:
        val_steps = math.ceil(val_size / (max(1, val_batch) * world_size))
        counts["validation_passes"] = val_passes
        counts["validation_steps_per_pass"] = val_steps
        overheads["validation"] = val_passes * val_steps * vs
    return val_batch


def _checkpoint_cost(costs: Mapping[str, Any], epochs: int, every: int, checkpoint_writes: int | None,
                     val_size: int, val_passes: int, overheads: dict[str, Any], counts: dict[str, int],
                     missing: list[str]) -> tuple[int, str]:
    """Checkpoint writes: as counted, else one per epoch (the best checkpoint's upper bound) or the
    scheduled ones; returns (writes, how they were counted)."""
    ck = finite(costs.get("checkpoint_write_s"))
    ck = finite(costs.get("checkpoint_save_s")) if ck is None else ck
    scheduled = epochs // every
    if checkpoint_writes is not None:
        writes, how = int(checkpoint_writes), "as counted"
    elif val_size > 0 and val_passes > 0:
        writes, how = epochs, "upper bound: the validation loss improves every epoch"
    else:
        writes, how = scheduled, "no validation loss, no best checkpoint"
    if ck is None:
        overheads["checkpoints"] = None
        missing.append("checkpoint writes")
    else:
        counts["checkpoint_writes"] = writes
        counts["checkpoint_writes_scheduled"] = scheduled
        overheads["checkpoints"] = writes * ck
    return writes, how


def _periodic_cost(costs: Mapping[str, Any], plan: LoggingPlan | None, spe: int, epochs: int, levels: int,
                   device_type: str, overheads: dict[str, Any], counts: dict[str, int], missing: list[str]) -> None:
    """The trainer's periodic work as ``plan`` asks (None: not modelled, named as missing)."""
    periodic = costs.get("periodic")
    if plan is None:
        missing.append(LOGGING_MISSING)
        overheads.update(dict.fromkeys(PERIODIC_COLUMNS))
        return
    pc = periodic_counts(plan, spe, epochs, levels=levels, empty_cache=has_empty_cache(device_type))
    counts.update({f"periodic_{k}": v for k, v in pc.items()})
    secs = periodic_seconds(pc, periodic or {}, plan)
    overheads.update(secs)
    unmeasured = [k for k, v in secs.items() if v is None]
    if unmeasured:
        missing.append(LOGGING_MISSING if not plan.wandb else
                       "Weights & Biases logging (not measurable here)")


def _one_time_cost(costs: Mapping[str, Any], warmup_excess_s: float | None, overheads: dict[str, Any],
                   missing: list[str]) -> None:
    """Once per run: the warm-up steps' excess and the model build."""
    once = [x for x in (finite(warmup_excess_s), finite(costs.get("model_build_s"))) if x is not None]
    overheads["one_time"] = sum(once) if once else None
    if not once:
        missing.append("one-time costs (warm-up, model build)")


def _overhead_assumptions(costs: Mapping[str, Any], plan: LoggingPlan | None, val_every_epochs: int, val_size: int,
                          val_batch: int, world_size: int, every: int, writes: int, how: str) -> list[str]:
    """The assumptions behind the per-epoch and periodic costs, one sentence each."""
    return [
        f"validation pass every {val_every_epochs} epoch(s) over {val_size:,} images at batch {val_batch}"
        + (f", sharded over the {world_size} processes" if world_size > 1 else ""),
        f"a checkpoint every {every} epoch(s) and whenever the validation loss improves ({writes} writes: {how})",
        ("trainer logging: log_frequency " + str(plan.log_frequency) + ", TensorBoard "
         + ("on" if plan.tensorboard else "off") + ", W&B " + ("on" if plan.wandb else "off")
         + "; visualizations and embeddings every 5 epochs not modelled") if plan is not None
        else "trainer logging not modelled",
        "DataLoader workers restarted every epoch (upstream)" if costs.get("worker_startup_every_epoch", True)
        else "persistent DataLoader workers: start-up paid once",
    ]


def project(*, sec_per_step: Mapping[str, Any], batch_size: int, epochs: int, dataset_size: int,
            costs: Mapping[str, Any] | None, val_size: int = 10_000, val_every_epochs: int = 1,
            checkpoint_every_epochs: int = 1, world_size: int = 1, plan: LoggingPlan | None = None,
            levels: int = 1, device_type: str = "cpu", checkpoint_writes: int | None = None,
            warmup_excess_s: float | None = None) -> dict[str, Any]:
    """Project a full run.  See the module docstring for the arithmetic.  ``plan``: the config's
    logging (None: the trainer's periodic work is left out, and named in ``missing``);
    ``checkpoint_writes``: how many epochs wrote a checkpoint, when known (else the upper bound);
    ``warmup_excess_s``: the one-time cost of the first steps."""
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
    train = {k: (None if sec_per_step.get(k) is None else total_steps * sec_per_step[k])
             for k in ("mid", "low", "high")}
    costs = costs or {}
    overheads: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    missing = out["missing"]
    val_passes = epochs // max(1, val_every_epochs)
    every = max(1, checkpoint_every_epochs)
    _worker_startup_cost(costs, epochs, val_passes, overheads, counts, missing)
    val_batch = _validation_cost(costs, batch_size, val_size, world_size, val_passes, overheads, counts, missing)
    writes, how = _checkpoint_cost(costs, epochs, every, checkpoint_writes, val_size, val_passes, overheads, counts,
                                   missing)
    _periodic_cost(costs, plan, spe, epochs, levels, device_type, overheads, counts, missing)
    _one_time_cost(costs, warmup_excess_s, overheads, missing)
    fixed = sum(v for v in overheads.values() if v is not None)
    total = {k: (None if v is None else v + fixed) for k, v in train.items()}
    out.update(train_s=train, overheads_s=overheads, overhead_counts=counts, overhead_total_s=fixed, total_s=total,
               hours={k: (None if v is None else v / 3600.0) for k, v in total.items()},
               lower_bound=bool(out["missing"]))
    out["assumptions"] += _overhead_assumptions(costs, plan, val_every_epochs, val_size, val_batch, world_size,
                                                every, writes, how)
    return out


def warmup_excess(record: Mapping[str, Any]) -> float | None:
    """What the run's warm-up steps cost beyond as many steady steps (s, >= 0): allocator and
    thread-pool warm-up, first-call work; a real run pays it once.  None without both."""
    series = record.get("series") or {}
    warm = int(series.get("warmup_steps") or 0)
    times = [t for t in (finite(x) for x in series.get("step_time_s") or []) if t is not None]
    if warm < 1 or len(times) <= warm:
        return None
    steady = cast(float, median(times[warm:]))  # finite, non-empty
    return max(0.0, sum(times[:warm]) - warm * steady)


def project_record(record: Mapping[str, Any], *, epochs: int, dataset_size: int = 50_000, val_size: int = 10_000,
                   val_every_epochs: int = 1, checkpoint_every_epochs: int = 1,
                   confidence: float = 0.95, logging: Mapping[str, Any] | None = None,
                   checkpoint_writes: int | None = None, probes: Mapping[str, Probe] | None = None) -> dict[str, Any]:
    """``project`` with the step time, per-epoch costs and world size measured in ``record``; the
    trainer's periodic work as ``logging`` (a config with a ``logging`` section: the projected
    run's) asks, else as the record's own config does.  ``probes``: who measured the per-epoch
    costs (None: the registered probes)."""
    batch = batch_achieved(record) or batch_requested(record)  # (achieved is a list when the batch varied)
    config = record.get("config") or {}
    plan = LoggingPlan.from_config(logging if logging is not None else config)
    backend = str((record.get("env") or {}).get("backend") or (config.get("bench") or {}).get("device") or "cpu")
    sps = seconds_per_step(record, confidence)
    short = shortfall(record)  # fewer steps than its minimum: no hours at all, the reason instead
    if short is not None:
        sps = {**sps, "mid": None, "low": None, "high": None, "source": short["text"], "band_note": short["text"]}
    out = project(sec_per_step=sps, batch_size=batch, epochs=epochs,
                   dataset_size=dataset_size, costs=epoch_costs(record, probes), val_size=val_size,
                   val_every_epochs=val_every_epochs, checkpoint_every_epochs=checkpoint_every_epochs,
                   world_size=record_world_size(record), plan=plan,
                   levels=int((config.get("model") or {}).get("num_hierarchies") or 1), device_type=backend,
                   checkpoint_writes=checkpoint_writes, warmup_excess_s=warmup_excess(record))
    if short is not None:
        out["not_measured"] = short["text"]
    return out


def projection_sizes(config: Mapping[str, Any], default_train: int = 50_000,
                     default_val: int = 10_000) -> tuple[int, int, str]:
    """(training images, validation images, where they come from) of the full run of ``config``:
    ``bench.dataset_size`` / ``bench.val_size`` (set by ``--dataset-size`` / ``--val-size``, or from
    the ``--data-path`` folder), else the defaults (CIFAR-10: 50,000 and 10,000).  A dataset size
    without a validation size gets a fifth of it (CIFAR-10's ratio)."""
    bench = config.get("bench") or {}
    train, val = bench.get("dataset_size"), bench.get("val_size")
    if train is None:
        return default_train, (default_val if val is None else int(val)), (
            "CIFAR-10's sizes (default)" if val is None else "default training size, the config's validation size")
    return int(train), (int(round(0.2 * int(train))) if val is None else int(val)), "the config's data"


def own_config_projection(record: Mapping[str, Any], *, default_train: int = 50_000, default_val: int = 10_000,
                          val_every_epochs: int = 1, confidence: float = 0.95) -> dict[str, Any]:
    """The full run of the record's own config: its ``training.epochs``, its data sizes
    (:func:`projection_sizes`), its ``checkpoint.save_frequency`` and ``logging``."""
    config = record.get("config") or {}
    train, val, source = projection_sizes(config, default_train, default_val)
    ck = section if isinstance(section := config.get("checkpoint"), Mapping) else {}
    p = project_record(record, epochs=int(config["training"]["epochs"]), dataset_size=train, val_size=val,
                       val_every_epochs=val_every_epochs, checkpoint_every_epochs=int(ck.get("save_frequency") or 1),
                       confidence=confidence)
    p["sizes_source"] = source
    p["val_size"] = val
    return p


def logging_seconds(p: Mapping[str, Any]) -> float | None:
    """The trainer's periodic work in a projection (s); None when any part was not measured."""
    ov = p.get("overheads_s") or {}
    parts = [part for part in (ov.get(k) for k in PERIODIC_COLUMNS) if part is not None]
    return None if len(parts) < len(PERIODIC_COLUMNS) else float(sum(parts))


def own_config_line(p: Mapping[str, Any]) -> str:
    """``this config: 20 epochs x 1,562 steps -> 5.2 h [4.9-5.5], of which logging 0.1 h, validation 0.4 h``."""
    head = f"this config: {p['epochs']} epochs x {p['steps_per_epoch']:,} steps"
    hours = p.get("hours")
    if not hours or hours.get("mid") is None:
        return head + " -> not projected (" + ", ".join(p.get("missing") or ["step time"]) + " not measured)"
    digits = 1 if hours["mid"] >= 1 else 2

    def n(x: float) -> str:
        return f"{x:.{digits}f}"
    band = (f" [{n(hours['low'])}-{n(hours['high'])}]" if hours.get("low") is not None and hours.get("high") is not None
            else f" ({p.get('band_note') or 'no band'})")
    ov = p.get("overheads_s") or {}

    def h(x: float | None) -> str:
        return NOT_MEASURED if x is None else f"{x / 3600:.{digits}f} h"
    text = (f"{head} -> {n(hours['mid'])} h{band}, of which logging {h(logging_seconds(p))}, validation "
            f"{h(ov.get('validation'))}, checkpoints {h(ov.get('checkpoints'))}")
    if p.get("missing"):
        text += "; a lower bound: " + ", ".join(p["missing"]) + " not measured"
    return text
