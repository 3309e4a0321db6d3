"""Memory of one run (peak, mean, headroom, leak) and of a sweep (batch-size fit).

Pure functions: plain data in, JSON-safe dicts out (no torch, no files).

Answers the H-JEPA validation guide's "Memory Usage" questions (docs/verdicts.md):
peak and average memory, stability (leaks), can the batch grow, is there room
for a larger model, any memory pressure.

Thresholds:

* **Leak** (:func:`leak_check`, on the samples after warm-up).  On CPU the process
  RSS grows during the first tens of steps (allocator arenas, caches, prefetched
  batches: about 55 steps, in stairs of 10-60 MiB, at 224 px batch 8 on this
  project's CPU, ``tests/data/rss_plateau_cpu.json``) and then stays flat, so a
  leak is judged only on the *last third* of the samples, once the start-up is
  over:

  1. fewer than ``LEAK_MIN_SAMPLES`` (5) samples: not judged;
  2. no significant growth over the measured steps: no leak.  Growth is
     significant when the least-squares slope x the measured span of steps
     exceeds ``LEAK_GROWTH_FRAC`` (5%) of the mean and ``slope / stderr >=
     LEAK_MIN_T`` (3) (an exactly linear series has stderr 0 and counts);
  3. the last third (its slope x the whole span, against the whole mean) does
     not grow, and holds at least ``LEAK_MIN_SETTLED`` (20) samples: the growth
     has settled, no leak;
  4. the last third still grows, over at least ``LEAK_MIN_SUSTAINED`` (100)
     samples (so the last third starts after the start-up measured above), at
     no less than ``LEAK_SUSTAINED_RATIO`` (0.5) of the first third's rate:
     sustained growth, leak suspected;
  5. anything else (a short run, or growth that is slowing down but not flat
     yet): not judged, "not enough settled steps to judge".

  ``suspected`` is True, False or None (not judged), and ``reason`` says which
  rule decided.
* ``PRESSURE_PEAK_FRAC`` (90%): torch-tb-profiler's rule "peak memory > 90% ->
  checkpointing/AMP" (docs/measuring.md): ``memory_pressure`` when peak / total > 90%.
* ``fit_memory(margin=0.10)``: the largest batch whose predicted peak footprint stays below
  ``device_total * (1 - margin)``.  The footprint (:func:`footprint_bytes`) is what
  must fit: where the backend reports them (CUDA), the allocator's peak reserve (its cache and rounded
  blocks) plus the device memory in use outside it (the CUDA context, library workspaces), else the
  peak allocated.  Headroom is the total minus the same footprint.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..format import finite, finite_int
from ..record import batch_achieved, device_name, lookup, model_short, node_label
from ..stats import slope_t
from ..status import NOT_MEASURED
from ..thresholds import DEFAULTS as _TH  # the one place thresholds live

LEAK_GROWTH_FRAC = 0.05
LEAK_MIN_T = 3.0
LEAK_MIN_SAMPLES = 5
LEAK_MIN_SETTLED = 20
LEAK_MIN_SUSTAINED = 100
LEAK_SUSTAINED_RATIO = 0.5
PRESSURE_PEAK_FRAC = _TH.memory_pressure_frac
DEFAULT_MARGIN = _TH.memory_margin_frac
# For ordering models by size when a record has no parameter count.
MODEL_ORDER = ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant")
SETUP_KEYS = (("bench", "variant"), ("bench", "precision"), ("data", "image_size"),
              ("model", "num_hierarchies"), ("model", "predictor", "depth"))

THRESHOLDS: dict[str, Any] = {
    "leak_growth_frac": LEAK_GROWTH_FRAC,
    "leak_min_t": LEAK_MIN_T,
    "leak_min_samples": LEAK_MIN_SAMPLES,
    "leak_min_settled": LEAK_MIN_SETTLED,
    "leak_min_sustained": LEAK_MIN_SUSTAINED,
    "leak_sustained_ratio": LEAK_SUSTAINED_RATIO,
    "pressure_peak_frac": PRESSURE_PEAK_FRAC,
}


# --------------------------------------------------------------------------- one run
LEAK_RULE = (f"judged on the last third of the samples after warm-up, once start-up growth has settled: "
             f"growth = slope x measured steps > {LEAK_GROWTH_FRAC:.0%} of the mean with slope/stderr >= "
             f"{LEAK_MIN_T:g}; no growth, or a last third of >= {LEAK_MIN_SETTLED} samples without growth: no leak; "
             f"a last third that still grows over >= {LEAK_MIN_SUSTAINED} samples at >= {LEAK_SUSTAINED_RATIO:g} x "
             "the first third's rate: leak suspected; otherwise not judged")


#: a predicted batch beyond this many times the largest measured one is labelled an extrapolation
EXTRAPOLATION_FACTOR = 4.0

def peak_bytes(record: Mapping[str, Any]) -> int | None:
    """Peak device memory: the memory probe's (the larger of the backend's peak and the per-step
    samples) when it ran, else the backend's own peak (``metrics.peak_device_bytes``)."""
    entry = lookup(record, "probes", "memory")
    if isinstance(entry, Mapping) and entry.get("peak_device_bytes") is not None:
        return finite_int(entry["peak_device_bytes"])
    return finite_int(lookup(record, "metrics", "peak_device_bytes"))


def footprint_bytes(record: Mapping[str, Any]) -> int | None:
    """The device memory a run needed at its peak, what must fit in the total: the memory probe's
    ``peak_footprint_bytes`` (allocated peak, or the allocator's peak reserve plus the memory in use
    outside it, whichever is larger) when it ran, else the same from the metrics, else :func:`peak_bytes`."""
    entry = lookup(record, "probes", "memory")
    if isinstance(entry, Mapping) and entry.get("peak_footprint_bytes") is not None:
        return finite_int(entry["peak_footprint_bytes"])
    m = record.get("metrics") or {}
    peak = peak_bytes(record)
    reserved = finite_int(m.get("peak_reserved_device_bytes"))
    if reserved is None:
        return peak
    return max(peak or 0, reserved + (finite_int(m.get("device_outside_allocator_bytes")) or 0))


def leak_check(steps: Sequence[float], values: Sequence[float]) -> dict[str, Any]:
    """Is memory (bytes, one sample per step index) leaking?  The rule is in the module
    docstring: growth is judged only once it has settled, on the last third of the samples."""
    pts = sorted((float(s), float(v)) for s, v in zip(steps, values) if v is not None)
    base: dict[str, Any] = {"slope_bytes_per_step": None, "growth_bytes": None, "growth_frac": None,
                            "t_stat": None, "n_samples": len(pts), "suspected": None, "reason": None,
                            "rule": LEAK_RULE}
    if len(pts) < 2 or len({s for s, _ in pts}) < 2:
        base["note"] = base["reason"] = "fewer than 2 samples after warm-up: no slope, not judged"
        return base
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    n = len(pts)
    mean = float(y.mean())
    span = float(x.max() - x.min())
    slope, t = slope_t(x, y)
    growth = slope * span
    growth_frac = growth / mean if mean > 0 else None

    def grows(frac: float | None, tt: float) -> bool:
        return frac is not None and frac > LEAK_GROWTH_FRAC and tt >= LEAK_MIN_T

    base.update({
        "slope_bytes_per_step": slope, "growth_bytes": growth, "growth_frac": growth_frac,
        "t_stat": None if not math.isfinite(t) else t, "t_stat_infinite": bool(math.isinf(t)),
    })
    if n < LEAK_MIN_SAMPLES:
        base["note"] = base["reason"] = (f"only {n} samples after warm-up: too few to judge a leak "
                                         f"(>= {LEAK_MIN_SAMPLES})")
        return base
    if not grows(growth_frac, t):
        base.update(suspected=False, reason="no significant growth over the measured steps")
        return base
    third = n // 3
    unsettled = (f"not enough settled steps to judge: memory grew {growth / 2**20:.0f} MiB over {n} samples, and "
                 f"start-up growth can last tens of steps (measure longer: a leak is judged on the last third of "
                 f">= {LEAK_MIN_SUSTAINED} samples)")
    if third < 2:
        base["reason"] = unsettled
        return base
    head_slope, _ = slope_t(x[:third], y[:third])
    tail_slope, tail_t = slope_t(x[-third:], y[-third:])
    tail_frac = tail_slope * span / mean if mean > 0 else None
    base["first_third_slope_bytes_per_step"] = head_slope
    base["last_third"] = {"slope_bytes_per_step": tail_slope, "growth_frac": tail_frac,
                          "t_stat": None if not math.isfinite(tail_t) else tail_t, "n_samples": third,
                          "from_step": int(x[-third])}
    if not grows(tail_frac, tail_t):
        if third >= LEAK_MIN_SETTLED:
            base.update(suspected=False, reason=(f"settled: memory grew early on, then stayed flat over the last "
                                                 f"{third} samples (from step {int(x[-third])})"))
        else:
            base["reason"] = unsettled
        return base
    if n >= LEAK_MIN_SUSTAINED and not (head_slope > 0 and tail_slope < LEAK_SUSTAINED_RATIO * head_slope):
        base.update(suspected=True, reason=(f"sustained growth: {tail_slope / 2**20:.2f} MiB/step over the last "
                                            f"{third} samples (first third: {head_slope / 2**20:.2f} MiB/step)"))
        return base
    base["reason"] = unsettled
    return base


def judge_memory(entry: dict[str, Any], pressure_frac: float = PRESSURE_PEAK_FRAC,
                 margin_frac: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """The verdicts of a :func:`memory_entry` (in place, and returned): ``memory_pressure``
    (peak above ``pressure_frac`` of the total) and ``leak`` (:func:`leak_check` of the stored
    trace after warm-up); ``margin_frac`` is noted for the batch-size fit.  The probe calls it
    with the defaults; a report calls it again with its own thresholds."""
    head = finite(entry.get("headroom_frac"))
    entry["memory_pressure"] = None if head is None else bool(1.0 - head > pressure_frac)
    entry["thresholds"] = {**(entry.get("thresholds") or THRESHOLDS), "pressure_peak_frac": pressure_frac,
                           "fit_margin_frac": margin_frac}
    trace = section if isinstance(section := entry.get("trace"), Mapping) else {}
    steps, values = trace.get("steps"), trace.get("bytes")
    if isinstance(steps, list) and isinstance(values, list) and len(steps) == len(values):
        warm = finite(trace.get("warmup_steps")) or 0
        after = [(s, b) for s, b in ((finite(s), finite(b)) for s, b in zip(steps, values))
                 if s is not None and b is not None and s >= warm]
        entry["leak"] = leak_check([s for s, _ in after], [b for _, b in after])
    return entry


def memory_entry(samples: Sequence[tuple[int, int]], warmup_steps: int, metrics: Mapping[str, Any],
                 source: str = "", sampling: Mapping[str, Any] | None = None,
                 pressure_frac: float = PRESSURE_PEAK_FRAC) -> dict[str, Any]:
    """The memory entry of one run.

    ``samples``: (step index, current device bytes) pairs, warm-up included;
    ``metrics``: the record's metrics (``peak_device_bytes``, ``device_total_bytes``,
    ``peak_rss_bytes``, ``memory_source``).
    """
    after = [(s, b) for s, b in samples if s >= warmup_steps and b is not None]
    use = after or [(s, b) for s, b in samples if b is not None]
    sampled_peak = max((b for _, b in samples if b is not None), default=None)
    backend_peak = finite_int(metrics.get("peak_device_bytes"))
    peaks = [p for p in (backend_peak, sampled_peak) if p is not None]
    peak = max(peaks) if peaks else None
    mean = float(np.mean([b for _, b in use])) if use else None
    total = finite_int(metrics.get("device_total_bytes"))
    # What must fit in the total: the allocator reserves more than its live tensors (its cache, rounded
    # blocks) and the device holds more than the allocator (the CUDA context, library workspaces).
    peak_reserved = finite_int(metrics.get("peak_reserved_device_bytes"))
    outside = finite_int(metrics.get("device_outside_allocator_bytes"))
    footprint = peak
    basis = "peak allocated (the backend reports no allocator reserve)"
    if peak is not None and peak_reserved is not None:
        footprint = max(peak, peak_reserved + (outside or 0))
        basis = ("the larger of the peak allocated and the allocator's peak reserve (cache included)"
                 + (" plus the device memory in use outside the allocator (context, workspaces, other "
                    "processes)" if outside is not None else ""))
    headroom = total - footprint if total is not None and footprint is not None else None
    headroom_frac = headroom / total if headroom is not None and total else None
    entry: dict[str, Any] = {
        "peak_device_bytes": peak,
        "peak_source": ("max of the backend's peak and the per-step samples" if len(peaks) == 2 else
                        "backend peak" if backend_peak is not None else
                        "per-step samples" if sampled_peak is not None else None),
        "mean_device_bytes": mean,
        "mean_over": "measured steps (after warm-up)" if after else ("all samples (none after warm-up)"
                                                                    if use else None),
        "peak_rss_bytes": finite_int(metrics.get("peak_rss_bytes")),
        "device_total_bytes": total,
        "peak_reserved_bytes": peak_reserved,
        "outside_allocator_bytes": outside,
        "peak_footprint_bytes": footprint,
        "headroom_basis": basis,
        "headroom_bytes": headroom,
        "headroom_frac": headroom_frac,
        "memory_pressure": None,
        "leak": None,
        "memory_source": source or metrics.get("memory_source") or "",
        "samples": len([1 for _, b in samples if b is not None]),
        # the raw readings (warm-up included), so a report can judge them again
        "trace": {"steps": [int(s) for s, b in samples if b is not None],
                  "bytes": [int(b) for _, b in samples if b is not None], "warmup_steps": int(warmup_steps)},
        "thresholds": dict(THRESHOLDS),
    }
    if sampling:
        entry["sampling"] = dict(sampling)
    return judge_memory(entry, pressure_frac)


# --------------------------------------------------------------------------- a sweep
def setup_key(r: Mapping[str, Any]) -> str:
    """What else sets a model's memory besides the batch: variant, precision, image size, levels, predictor."""
    return " ".join(f"{lookup(r, 'config', *k)}" for k in SETUP_KEYS)


def device_key(r: Mapping[str, Any]) -> str:
    """The device a memory fit is per: its name, and the node on a cluster (each node its own fit)."""
    node = node_label(r)
    return str(device_name(r) or "?") + (f" on {node}" if node else "")


def _larger(model: str, params: int | None, other: str, other_params: int | None) -> bool:
    if params and other_params:
        return other_params > params
    if model in MODEL_ORDER and other in MODEL_ORDER:
        return MODEL_ORDER.index(other) > MODEL_ORDER.index(model)
    return False


def fit_memory(records: Iterable[Mapping[str, Any]], margin: float = DEFAULT_MARGIN
               ) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (device, model): linear fit ``peak footprint ~ a + b * batch`` (``footprint_bytes``) over the
    ok records, the largest batch predicted to fit in ``device_total * (1 - margin)``
    (capped below the smallest batch that ran out of memory), and the answers
    ``can_increase_batch`` and ``room_for_larger_model``.

    Records of one (device, model) that differ in variant, precision, image size or
    hierarchy levels are fitted separately; the model part of their key then
    carries the setup in brackets.  A group with fewer than two ok batch sizes gets
    ``fit: None`` and a note.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(device_key(r), model_short(r, "?"))].append(r)
    keyed: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for (device, model), rs in groups.items():
        setups = sorted({setup_key(r) for r in rs})
        if len(setups) == 1:
            keyed[(device, model)] = rs
        else:
            for s in setups:
                keyed[(device, f"{model} [{s}]")] = [r for r in rs if setup_key(r) == s]

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, rs in keyed.items():
        out[key] = _fit_group(key, rs, margin)

    # room for a larger model: measured records of larger models on the same device
    facts = {k: (model_short(rs[0], "?"), max((finite_int(lookup(r, "params", "total")) or 0) for r in rs) or None, rs)
             for k, rs in keyed.items()}
    for key, res in out.items():
        device = key[0]
        model, params, _ = facts[key]
        evidence = []
        any_fits = False
        for other_key, (other_model, other_params, other_rs) in facts.items():
            if other_key[0] != device or not _larger(model, params, other_model, other_params):
                continue
            ok = sorted({b for r in other_rs if r.get("status") == "ok" for b in [batch_achieved(r)] if b})
            oom = sorted({b for r in other_rs if r.get("status") == "oom" for b in [batch_achieved(r)] if b})
            if ok:
                any_fits = True
                pred = out[other_key].get("predicted_max_batch")
                evidence.append(f"{other_key[1]}: ran ok at batch {', '.join(map(str, ok))}"
                                + (f" (predicted to fit up to batch {pred})" if pred is not None else ""))
            elif oom:
                evidence.append(f"{other_key[1]}: out of memory at batch {', '.join(map(str, oom))}")
        if not evidence:
            answer = NOT_MEASURED
            evidence.append("no larger model measured on this device; run one to answer")
        else:
            answer = "yes" if any_fits else "no"
        res["room_for_larger_model"] = {"answer": answer, "evidence": evidence}
    return out


def _fit_group(key: tuple[str, str], rs: Sequence[Mapping[str, Any]], margin: float) -> dict[str, Any]:
    ok_pts = [(b, p) for r in rs if r.get("status") == "ok" for b, p in [(batch_achieved(r), footprint_bytes(r))]
              if b and p is not None]
    oom_batches = sorted({b for r in rs if r.get("status") == "oom" for b in [batch_achieved(r)] if b})
    totals = [t for r in rs for t in [finite_int(lookup(r, "metrics", "device_total_bytes"))] if t]
    total = max(totals) if totals else None
    ok_batches = sorted({b for b, _ in ok_pts})
    largest_ok = ok_batches[-1] if ok_batches else None
    oom_cap = oom_batches[0] - 1 if oom_batches else None
    res: dict[str, Any] = {
        "device": key[0], "model": key[1], "margin": margin,
        "ok_batches": ok_batches, "oom_batches": oom_batches,
        "device_total_bytes": total,
        "limit_bytes": None if total is None else int(total * (1.0 - margin)),
        "fit": None, "predicted_max_batch": None, "predicted_max_batch_uncapped": None,
        "oom_cap_batch": oom_cap, "largest_ok_batch": largest_ok,
        "can_increase_batch": None, "extrapolated": False, "note": "",
    }
    notes = []
    if len(ok_batches) < 2:
        notes.append(f"need ok records at >= 2 batch sizes to fit memory vs batch; have {len(ok_batches)}")
        if oom_cap is not None and largest_ok is not None:
            res["can_increase_batch"] = bool(oom_cap > largest_ok)
            notes.append(f"batch {oom_batches[0]} ran out of memory")
        res["note"] = "; ".join(notes)
        return res
    x = np.array([b for b, _ in ok_pts], dtype=float)
    y = np.array([p for _, p in ok_pts], dtype=float)
    xm, ym = x.mean(), y.mean()
    b = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    a = float(ym - b * xm)
    ss_tot = float(((y - ym) ** 2).sum())
    r2 = 1.0 - float(((y - (a + b * x)) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    res["fit"] = {"intercept_bytes": a, "bytes_per_sample": b, "r2": r2, "points": len(ok_pts)}
    if b <= 0:
        notes.append("peak memory does not grow with batch size here: no prediction")
    elif total is None:
        notes.append("device total memory unknown: no prediction")
    else:
        limit = total * (1.0 - margin)
        uncapped = int(math.floor((limit - a) / b + 1e-6))
        res["predicted_max_batch_uncapped"] = uncapped
        pred = uncapped if oom_cap is None else min(uncapped, oom_cap)
        if oom_cap is not None and oom_cap < uncapped:
            notes.append(f"capped below batch {oom_batches[0]}, which ran out of memory")
        res["predicted_max_batch"] = pred
        if largest_ok is not None and pred > EXTRAPOLATION_FACTOR * largest_ok:
            res["extrapolated"] = True
            notes.append(f"batch {pred} is an extrapolation: more than {EXTRAPOLATION_FACTOR:g}x the largest measured "
                         f"batch ({largest_ok}); measure a larger batch before relying on it")
        if pred < 1:
            notes.append("even batch 1 is predicted not to fit within the margin")
    if oom_cap is not None and largest_ok is not None and oom_cap < largest_ok:
        notes.append(f"inconsistent: batch {oom_batches[0]} ran out of memory but batch {largest_ok} ran ok")
    if res["predicted_max_batch"] is not None and largest_ok is not None:
        res["can_increase_batch"] = bool(res["predicted_max_batch"] > largest_ok)
    res["note"] = "; ".join(notes)
    return res
