"""Step-time stability: settling, spread, spikes, periodic slowdowns and drift.

Pure analysis (lists of floats in, a JSON-ready dict out; no torch, no files).
It answers the validation guide's "Training Speed" questions from the measured
per-step times of one run: is speed consistent (CV < 20%), are there periodic
slowdowns, does speed degrade over time?

Rules (all thresholds are the module constants below and are copied into the
entry under ``thresholds``):

* **Detected warm-up.**  ``ref`` = median of the steps after the run's reported
  warm-up.  A step ``i`` is *settled* when its own time is at most
  ``(1 + WARMUP_BAND) * ref`` and the forward rolling medians (window
  ``WARMUP_WINDOW`` steps) starting at ``i, i+1, ..., i+WARMUP_WINDOW-1`` are
  all at most ``(1 + WARMUP_BAND) * ref`` too.  The detected warm-up is the
  first settled index.  Only the slow side counts: warm-up means slower first
  steps, and a run that speeds up (or drifts) is not in warm-up.
* **Analysed steps** are the record's measured steps: those after the reported
  warm-up, exactly the steps behind ``metrics.step_time_s`` and the it/s.  A
  detected warm-up longer than the reported one is *said* (``settled_late``, a
  reason and a note: measure with a longer ``--warmup-steps``), never dropped, so
  every section shows one CV and one median of one set of steps.
* ``cv_pct`` and ``median_s`` are :func:`hjepa_bench.stats.summarize`'s
  ``cv`` (x 100) and ``median`` of those steps (the one definition);
  ``variance_pct`` = (p90 - p10) / median * 100.  The verdict uses the CV (the
  guide's "< 20%").
* **Spikes**: step time > median + ``SPIKE_K`` * MAD * 1.4826 (MAD floored at
  ``MAD_FLOOR_FRAC`` of the median, so a perfectly even series does not flag
  nanosecond jitter).  Adjacent spike steps form one spike event.
* **Spike period**: with at least ``MIN_SPIKES_FOR_PERIOD`` events, the median
  gap between event starts is the candidate period; it is reported when at
  least ``PERIOD_AGREE_FRAC`` of the gaps lie within ``max(1,
  PERIOD_TOL_FRAC * period)`` steps of it.
* **Degradation**: least-squares slope of step time against step index;
  ``change_pct`` is the fitted change over the analysed span (``span_steps``,
  never extrapolated beyond it); ``significant`` when p < ``DEGRADATION_P`` and
  ``|change_pct|`` exceeds ``DEGRADATION_MIN_CHANGE_PCT`` of the median.
* **Verdict**: "unstable" when CV >= ``THRESHOLD_CV_PCT`` or the step time
  significantly *rises* (``degrading``; a significant speed-up is reported but
  only means warm-up lasted longer), else "stable"; None when too few steps.

Indices in the entry (``spike_indices``, ``detected_warmup_steps``) count steps
from the start of the run, warm-up included (as ``record["series"]`` does).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from ..format import finite
from ..stats import Floats, linear_fit, summarize
from ..stats import median as median_of
from ..status import FAIL, NOT_MEASURED, PASS
from ..thresholds import DEFAULTS as _TH  # the one place thresholds live

# --------------------------------------------------------------------------- thresholds
THRESHOLD_CV_PCT = _TH.max_step_cv_pct  # the validation guide: "Speed variance < 20%"
WARMUP_WINDOW = 5  # rolling-median window (steps) for warm-up detection
WARMUP_BAND = 0.20  # settled: rolling median <= (1 + band) * post-warm-up median
SPIKE_K = 5.0  # spike: > median + k * scaled MAD
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
MAD_FLOOR_FRAC = 0.01  # scaled MAD is at least 1% of the median
MIN_SPIKES_FOR_PERIOD = 3  # spike events needed to call a period
PERIOD_TOL_FRAC = 0.10  # a gap agrees with the period within max(1, 10%) steps
PERIOD_AGREE_FRAC = 0.80  # share of gaps that must agree
DEGRADATION_P = 0.01  # slope p-value below this ...
DEGRADATION_MIN_CHANGE_PCT = 5.0  # ... and |fitted change over the run| above this (% of median)
MIN_STEPS_SPREAD = 5  # fewer analysed steps: no CV / variance / verdict
MIN_STEPS_SPIKES = 10  # fewer: no spike detection
MIN_STEPS_TREND = 10  # fewer: no degradation fit

DEFINITIONS = {
    "cv_pct": "sample standard deviation (ddof=1) / mean of the analysed step times * 100",
    "variance_pct": "(p90 - p10) / median of the analysed step times * 100 (robust spread)",
    "detected_warmup_steps": (f"first step index i whose time and the forward rolling medians "
                              f"(window {WARMUP_WINDOW}) starting at i..i+{WARMUP_WINDOW - 1} are all "
                              f"<= (1 + {WARMUP_BAND}) * median of the steps after the reported warm-up"),
    "n": "steps analysed: the record's measured steps (after the reported warm-up) with a finite time",
    "spike": (f"step time > median + {SPIKE_K} * MAD * {MAD_SCALE} (MAD floored at "
              f"{MAD_FLOOR_FRAC:.0%} of the median); adjacent spike steps are one event"),
    "spike_period_steps": (f"median gap between spike events when >= {MIN_SPIKES_FOR_PERIOD} events and "
                           f">= {PERIOD_AGREE_FRAC:.0%} of the gaps lie within max(1, "
                           f"{PERIOD_TOL_FRAC:.0%}) of it"),
    "degradation": ("least-squares slope of step time vs step index; change_pct = slope * span / median * 100 "
                    "over the analysed span (span_steps), never extrapolated; significant when "
                    f"p < {DEGRADATION_P} and |change_pct| > {DEGRADATION_MIN_CHANGE_PCT}"),
    "verdict": (f"unstable when cv_pct >= {THRESHOLD_CV_PCT} or the step time rises significantly "
                "(degradation.degrading), else stable"),
}


_num = finite


def detect_warmup(times: Sequence[float], ref: float, window: int = WARMUP_WINDOW,
                  band: float = WARMUP_BAND) -> int | None:
    """First index where the series has settled (module docstring), None if never."""
    x = np.asarray(times, dtype=float)
    n = len(x)
    if n < window or not ref > 0:
        return None
    limit = (1.0 + band) * ref
    roll = np.array([median_of(x[j:j + window]) for j in range(n - window + 1)])
    for i in range(n - window + 1):
        if x[i] > limit:
            continue
        last = min(i + window - 1, len(roll) - 1)
        if np.all(roll[i:last + 1] <= limit):
            return i
    return None


def spike_events(indices: Sequence[int]) -> list[int]:
    """Start index of each run of consecutive spike indices."""
    events: list[int] = []
    prev: int | None = None
    for i in indices:
        if prev is None or i != prev + 1:
            events.append(int(i))
        prev = int(i)
    return events


def spike_period(event_starts: Sequence[int]) -> int | None:
    """Regular spacing of spike events (module docstring), or None."""
    if len(event_starts) < MIN_SPIKES_FOR_PERIOD:
        return None
    return regular_period(np.diff(np.asarray(event_starts, dtype=float)))


def regular_period(gaps: Floats) -> int | None:
    """The median of ``gaps`` (steps between events) when at least ``PERIOD_AGREE_FRAC`` of them lie
    within ``max(1, PERIOD_TOL_FRAC * median)`` steps of it (and it is >= 2 steps), else None.  Needs
    ``MIN_SPIKES_FOR_PERIOD - 1`` gaps (the spike period; the stall period of a training log)."""
    gap_array = np.asarray(gaps, dtype=float)
    if gap_array.size < MIN_SPIKES_FOR_PERIOD - 1:
        return None
    period = median_of(gap_array)
    if period is None or period < 2:
        return None
    tol = max(1.0, PERIOD_TOL_FRAC * period)
    agree = float(np.mean(np.abs(gap_array - period) <= tol))
    return int(round(period)) if agree >= PERIOD_AGREE_FRAC else None


def drift_span(deg: dict[str, Any]) -> str:
    """"N measured steps" the drift was fitted over (or "measured steps")."""
    span = deg.get("span_steps")
    return f"{int(span) + 1} measured steps" if isinstance(span, (int, float)) else "measured steps"


def drift_text(deg: dict[str, Any]) -> str | None:
    """The fitted change over the measured span, e.g. "+23% over 20 measured steps" (None: not fitted).
    Never a rate per some number of steps: nothing is said beyond the steps that were measured."""
    change = _num(deg.get("change_pct"))
    if change is None:
        return None
    return f"{change:+.0f}% over {drift_span(deg)}"


def degradation_fit(steps: Floats, times: Floats, median: float) -> dict[str, Any]:
    """Drift of the step time (the ``degradation`` rule): least-squares slope of ``times`` (seconds
    per step) against ``steps`` (their step indices), its fitted change over the span as a % of
    ``median`` (never extrapolated past the span, ``span_steps``), its p-value, ``significant``
    (p < DEGRADATION_P and |change| > DEGRADATION_MIN_CHANGE_PCT) and ``degrading`` (significant and
    rising).  Needs at least 2 distinct steps and varying times."""
    slope, pvalue = linear_fit(steps, times)  # scipy, imported at use: loading the probe plugins stays light
    span = float(steps[-1] - steps[0])
    change = slope * span / median * 100 if median > 0 else None
    p = _num(pvalue)
    significant = bool(p is not None and change is not None and p < DEGRADATION_P
                       and abs(change) > DEGRADATION_MIN_CHANGE_PCT)
    return {"slope_s_per_step": _num(slope), "span_steps": span,
            "change_pct": _num(change), "p_value": p, "significant": significant,
            "degrading": bool(significant and change is not None and change > 0)}


def judge_stability(entry: dict[str, Any], max_cv_pct: float = THRESHOLD_CV_PCT) -> dict[str, Any]:
    """The verdict of an :func:`analyze_stability` entry against ``max_cv_pct`` (in place, and
    returned): ``criterion_cv_below_limit``, ``verdict``, ``reasons`` and ``thresholds.cv_pct``.
    The probe calls it with the default; a report calls it again with its own threshold."""
    entry.setdefault("thresholds", {})["cv_pct"] = max_cv_pct
    entry.setdefault("definitions", {})["verdict"] = (
        f"unstable when cv_pct >= {max_cv_pct:g} or the step time rises significantly "
        "(degradation.degrading), else stable")
    reasons: list[str] = []
    entry["reasons"] = reasons
    entry["criterion_cv_below_limit"] = NOT_MEASURED
    entry["verdict"] = None
    cv_pct = _num(entry.get("cv_pct"))
    if cv_pct is None:
        return entry
    deg = entry.get("degradation") or {}
    n = entry.get("n")
    ok = cv_pct < max_cv_pct
    entry["criterion_cv_below_limit"] = PASS if ok else FAIL
    reasons.append(f"CV {cv_pct:.1f}% {'<' if ok else '>='} {max_cv_pct:g}% over {n} steps")
    unstable = not ok
    if deg.get("significant"):
        # only a slow-down is degradation; a speed-up means warm-up lasted longer than measured
        unstable = unstable or bool(deg.get("degrading"))
        direction = "slows down" if deg.get("degrading") else "speeds up (warm-up may be longer than measured)"
        change, p = _num(deg.get("change_pct")), _num(deg.get("p_value"))
        reasons.append(f"step time {direction}" + ("" if change is None else f" by {abs(change):.1f}%")
                       + f" over the {drift_span(deg)} ("
                       + ("" if p is None else f"p={p:.2g}; ") + f"limit {DEGRADATION_MIN_CHANGE_PCT:.0f}%)")
    if entry.get("settled_late"):
        reasons.append(f"step times settled only after {entry.get('detected_warmup_steps')} steps (reported warm-up "
                       f"{entry.get('warmup_steps_reported')}): the slower first steps are in the CV")
    if entry.get("spike_count"):
        period, above = entry.get("spike_period_steps"), _num(entry.get("spike_threshold_s"))
        reasons.append(f"{entry['spike_count']} spike step(s)"
                       + ("" if above is None else f" above {above * 1000:.3g} ms")
                       + (f", recurring every {period} steps" if period else ""))
    entry["verdict"] = "unstable" if unstable else "stable"
    return entry


def _detected_warmup(idx_all: list[int], val_all: list[float], reported: int, notes: list[str]) -> int | None:
    """The step at which the times settled (:func:`detect_warmup`), or None (a note says why)."""
    post = [t for i, t in zip(idx_all, val_all) if i >= reported] or val_all
    ref = median_of(post)
    if len(val_all) < 2 * WARMUP_WINDOW:
        notes.append(f"warm-up detection needs >= {2 * WARMUP_WINDOW} timed steps, got {len(val_all)}")
    elif ref is not None:
        pos = detect_warmup(val_all, ref)
        if pos is None:
            notes.append("step times never settled within the warm-up band; using the reported warm-up")
        else:
            return idx_all[pos]
    return None


def _stability_entry(reported: int, detected: int | None, start: int, n: int, notes: list[str]) -> dict[str, Any]:
    """The analysis before any statistic: every key, the thresholds and the definitions."""
    return {
        "warmup_steps_reported": reported,
        "detected_warmup_steps": detected,
        "first_analysed_step": start,
        "settled_late": bool(detected is not None and detected > reported),
        "n": n,
        "median_s": None, "cv_pct": None, "variance_pct": None,
        "spike_threshold_s": None, "spike_indices": [], "spike_count": None, "spike_events": None,
        "spike_period_steps": None,
        "degradation": {"slope_s_per_step": None, "change_pct": None, "span_steps": None,
                        "p_value": None, "significant": None, "degrading": None},
        "criterion_cv_below_limit": NOT_MEASURED,
        "verdict": None,
        "reasons": [],
        "thresholds": {
            "cv_pct": THRESHOLD_CV_PCT, "warmup_window": WARMUP_WINDOW, "warmup_band": WARMUP_BAND,
            "spike_k": SPIKE_K, "mad_scale": MAD_SCALE, "mad_floor_frac": MAD_FLOOR_FRAC,
            "min_spikes_for_period": MIN_SPIKES_FOR_PERIOD, "period_tol_frac": PERIOD_TOL_FRAC,
            "period_agree_frac": PERIOD_AGREE_FRAC, "degradation_p": DEGRADATION_P,
            "degradation_min_change_pct": DEGRADATION_MIN_CHANGE_PCT,
            "min_steps_spread": MIN_STEPS_SPREAD, "min_steps_spikes": MIN_STEPS_SPIKES,
            "min_steps_trend": MIN_STEPS_TREND,
        },
        "definitions": dict(DEFINITIONS),
        "notes": notes,
    }


def _spread(entry: dict[str, Any], summary: Mapping[str, Any], median: float, n: int) -> None:
    """CV and p10-p90 variance of the analysed steps (enough of them)."""
    if n < MIN_STEPS_SPREAD:
        entry["notes"].append(f"CV, variance and verdict need >= {MIN_STEPS_SPREAD} analysed steps, got {n}")
        return
    cv = summary["cv"]
    entry["cv_pct"] = None if cv is None else _num(cv * 100)
    entry["variance_pct"] = _num((summary["p90"] - summary["p10"]) / median * 100) if median > 0 else None


def _spikes(entry: dict[str, Any], idx: list[int], x: np.ndarray, median: float) -> None:
    """Spikes above median + k * scaled MAD, their events and the period of those."""
    n, notes = int(x.size), entry["notes"]
    if n < MIN_STEPS_SPIKES:
        notes.append(f"spike detection needs >= {MIN_STEPS_SPIKES} analysed steps, got {n}")
        return
    mad = cast(float, median_of(np.abs(x - median))) * MAD_SCALE  # finite steps, n >= MIN_STEPS_SPIKES
    scale = max(mad, MAD_FLOOR_FRAC * median)
    threshold = median + SPIKE_K * scale
    spikes = [i for i, t in zip(idx, x) if t > threshold]
    events = spike_events(spikes)
    entry["spike_threshold_s"] = _num(threshold)
    entry["spike_indices"] = spikes
    entry["spike_count"] = len(spikes)
    entry["spike_events"] = len(events)
    entry["spike_period_steps"] = spike_period(events)
    if len(events) < MIN_SPIKES_FOR_PERIOD:
        notes.append(f"spike period needs >= {MIN_SPIKES_FOR_PERIOD} spike events, got {len(events)}")


def _degradation(entry: dict[str, Any], idx: list[int], x: np.ndarray, median: float) -> None:
    """The step-time trend over the run (:func:`degradation_fit`)."""
    n, notes = int(x.size), entry["notes"]
    deg = entry["degradation"]
    if n < MIN_STEPS_TREND:
        notes.append(f"degradation fit needs >= {MIN_STEPS_TREND} analysed steps, got {n}")
    elif float(np.ptp(x)) == 0.0:
        deg.update(slope_s_per_step=0.0, change_pct=0.0, span_steps=int(idx[-1] - idx[0]), significant=False)
        notes.append("all analysed step times are identical: slope 0, no p-value")
    else:
        deg.update(degradation_fit(idx, x, median))


def analyze_stability(step_times: Sequence[float | None], warmup_steps: int,
                      max_cv_pct: float = THRESHOLD_CV_PCT) -> dict[str, Any]:
    """Stability of per-step times of one run (warm-up steps included at the front).

    ``step_times``: ``record["series"]["step_time_s"]``; None / non-finite
    entries (steps whose timing window never closed) are skipped.
    ``warmup_steps``: the run's reported warm-up count; ``max_cv_pct``: the CV limit
    of the verdict (:func:`judge_stability`).
    """
    notes: list[str] = []
    reported = max(0, int(warmup_steps))
    raw = [_num(t) for t in step_times]
    missing = sum(1 for t in raw if t is None)
    if missing:
        notes.append(f"{missing} step(s) without a finite time were skipped")
    idx_all = [i for i, t in enumerate(raw) if t is not None]
    val_all = [t for t in raw if t is not None]
    detected = _detected_warmup(idx_all, val_all, reported, notes)
    start = reported  # the record's measured steps: one step set for every statistic of the record
    idx = [i for i in idx_all if i >= start]
    x = np.asarray([t for i, t in zip(idx_all, val_all) if i >= start], dtype=float)
    n = int(x.size)
    summary = summarize(x)
    entry = _stability_entry(reported, detected, start, n, notes)
    if n == 0:
        notes.append("no timed steps after warm-up: nothing to analyse")
        return entry
    median = cast(float, summary["median"])  # n > 0 finite steps: a median
    entry["median_s"] = _num(median)
    _spread(entry, summary, median, n)
    _spikes(entry, idx, x, median)
    _degradation(entry, idx, x, median)
    if detected is not None and detected > reported:
        notes.append(f"step times settled only after {detected} steps (reported warm-up: {reported}); the "
                     f"{detected - reported} slower measured step(s) count in every statistic (measure with "
                     f"--warmup-steps {detected})")
    judge_stability(entry, max_cv_pct)
    return entry
