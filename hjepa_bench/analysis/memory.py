"""Memory of one run (peak, mean, headroom, leak) and of a sweep (batch-size fit).

Pure functions: plain data in, JSON-safe dicts out (no torch, no files).

Answers the validation guide's "Memory Usage" questions (VALIDATION_LEARNINGS.md):
peak and average memory, stability (leaks), can the batch grow, is there room
for a larger model, any memory pressure.

Thresholds:

* ``LEAK_GROWTH_FRAC`` (5%): a leak is suspected when the least-squares slope of
  memory vs step (after warm-up) times the measured span of steps exceeds 5% of
  the mean memory, AND the slope is significant: ``slope / stderr >=
  LEAK_MIN_T`` (3) over at least ``LEAK_MIN_SAMPLES`` (5) samples (an exactly
  linear series has stderr 0 and counts as significant when it grows).  Allocator
  caches and RSS settle during the first steps; a one-off jump is not a trend and
  rarely passes both tests.
* ``PRESSURE_PEAK_FRAC`` (90%): torch-tb-profiler's rule "peak memory > 90% ->
  checkpointing/AMP" (MEASURING.md): ``memory_pressure`` when peak / total > 90%.
* ``fit_memory(margin=0.10)``: the largest batch whose predicted peak stays below
  ``device_total * (1 - margin)``.
"""
from __future__ import annotations

from ..thresholds import DEFAULTS as _TH  # the one place thresholds live

import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from ..format import finite_int
from ..record import batch_achieved, device_name, lookup, model_short, node_label, peak_bytes

LEAK_GROWTH_FRAC = 0.05
LEAK_MIN_T = 3.0
LEAK_MIN_SAMPLES = 5
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
    "pressure_peak_frac": PRESSURE_PEAK_FRAC,
}


# --------------------------------------------------------------------------- one run
def leak_check(steps: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    """Least-squares slope of memory (bytes) vs step index, and whether it looks
    like a leak (see the module docstring for the rule)."""
    pts = [(float(s), float(v)) for s, v in zip(steps, values) if v is not None]
    base: dict[str, Any] = {"slope_bytes_per_step": None, "growth_bytes": None, "growth_frac": None,
                            "t_stat": None, "n_samples": len(pts), "suspected": None,
                            "rule": (f"suspected when slope * steps > {LEAK_GROWTH_FRAC:.0%} of mean and "
                                     f"slope/stderr >= {LEAK_MIN_T:g} over >= {LEAK_MIN_SAMPLES} samples")}
    if len(pts) < 2 or len({s for s, _ in pts}) < 2:
        base["note"] = "fewer than 2 samples after warm-up: no slope"
        return base
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    n = len(pts)
    if n > 2:
        resid = y - (intercept + slope * x)
        s2 = float((resid ** 2).sum()) / (n - 2)
        stderr = math.sqrt(s2 / sxx)
    else:
        stderr = math.inf
    scale = max(1.0, abs(float(ym)))
    if stderr <= 1e-12 * scale:  # exactly linear (or flat)
        t = math.inf if abs(slope) > 1e-12 * scale else 0.0
    else:
        t = slope / stderr
    span = float(x.max() - x.min())
    growth = slope * span
    growth_frac = growth / float(ym) if ym > 0 else None
    suspected = bool(n >= LEAK_MIN_SAMPLES and growth_frac is not None and growth_frac > LEAK_GROWTH_FRAC
                     and t >= LEAK_MIN_T)
    base.update({
        "slope_bytes_per_step": slope,
        "growth_bytes": growth,
        "growth_frac": growth_frac,
        "t_stat": None if not math.isfinite(t) else t,
        "t_stat_infinite": bool(math.isinf(t)),
        "suspected": suspected,
    })
    if n < LEAK_MIN_SAMPLES:
        base["note"] = f"only {n} samples after warm-up: too few to call a leak"
    return base


def memory_entry(samples: Sequence[tuple[int, int]], warmup_steps: int, metrics: Mapping[str, Any],
                 source: str = "", sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
    headroom = total - peak if total is not None and peak is not None else None
    headroom_frac = headroom / total if headroom is not None and total else None
    leak = leak_check([s for s, _ in after], [b for _, b in after])
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
        "headroom_bytes": headroom,
        "headroom_frac": headroom_frac,
        "memory_pressure": None if headroom_frac is None else bool(1.0 - headroom_frac > PRESSURE_PEAK_FRAC),
        "leak": leak,
        "memory_source": source or metrics.get("memory_source") or "",
        "samples": len([1 for _, b in samples if b is not None]),
        "thresholds": dict(THRESHOLDS),
    }
    if sampling:
        entry["sampling"] = dict(sampling)
    return entry


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
    """Per (device, model): linear fit ``peak_device_bytes ~ a + b * batch`` over the
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
            answer = "not measured"
            evidence.append("no larger model measured on this device; run one to answer")
        else:
            answer = "yes" if any_fits else "no"
        res["room_for_larger_model"] = {"answer": answer, "evidence": evidence}
    return out


def _fit_group(key: tuple[str, str], rs: Sequence[Mapping[str, Any]], margin: float) -> dict[str, Any]:
    ok_pts = [(b, p) for r in rs if r.get("status") == "ok" for b, p in [(batch_achieved(r), peak_bytes(r))]
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
        "can_increase_batch": None, "note": "",
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
        if pred < 1:
            notes.append("even batch 1 is predicted not to fit within the margin")
    if oom_cap is not None and largest_ok is not None and oom_cap < largest_ok:
        notes.append(f"inconsistent: batch {oom_batches[0]} ran out of memory but batch {largest_ok} ran ok")
    if res["predicted_max_batch"] is not None and largest_ok is not None:
        res["can_increase_batch"] = bool(res["predicted_max_batch"] > largest_ok)
    res["note"] = "; ".join(notes)
    return res
