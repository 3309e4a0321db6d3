"""Where a training run stands while its log is still being written (pure: an
:func:`~hjepa_bench.analysis.log_speed.analyze_log` result in, a JSON-ready dict out).

``hjepa-bench analyze --follow`` calls :func:`live_status` on what the log holds so far.  Every
number comes from the log:

* **progress**: steps done = the training bars' counters (each epoch's last refresh, at most
  its total); steps planned = the planned epochs x steps per epoch (both as the log prints them);
* **time per step**: the wall clock of the training bars (steps / elapsed: start-up and stalls
  included, as in the log record), with the band of
  :func:`~hjepa_bench.analysis.projection.seconds_per_step` (the Student t interval of the steady
  intervals' seconds per step, scaled to it; none from fewer than 5 intervals);
* **per-epoch costs as the log shows them**: a validation pass (the mean time of the complete
  validation bars), and the time between the bars (checkpoints, logging) from consecutive epoch
  summaries' ``Elapsed`` (what the run took between them less its training and validation bars);
  a cost the log does not show yet is named in ``missing`` and counted as 0 (the ETA is then a
  lower bound);
* **ETA** = remaining steps x time per step (with its band) + the remaining epochs' costs;
  ``total_s`` = the run's time so far (the last summary's ``Elapsed`` plus the bars after it, else
  the bars' time) + ETA;
* **stalls** and their period (``overall`` of the analysis), **drift**: the stability rule
  (:func:`~hjepa_bench.analysis.stability.degradation_fit`) on the steady intervals' seconds per
  step against their global step (from ``MIN_INTERVALS_DRIFT`` intervals);
* **loss**: the last value, the trend and divergence of the analysis, non-finite values.

``warnings`` are what the validation guide flags, each with a ``key`` (a follower prints each key
once): ``drift`` (the step time rises significantly, past the stability rule's limit), ``stalls``
(stalls at a regular period), ``non_finite`` (NaN / inf loss), ``diverged`` (loss rising) and
``budget`` (the projected total past ``budget_hours``).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from ..format import finite, fmt_duration, fmt_finite
from ..stats import median
from .log_speed import steady_interval_rates
from .loss_curve import DIVERGE_RISE_PCT
from .projection import seconds_per_step
from .stability import DEGRADATION_MIN_CHANGE_PCT, DEGRADATION_P, MIN_STEPS_TREND, degradation_fit

#: steady intervals needed for a drift fit (the stability rule's minimum of steps)
MIN_INTERVALS_DRIFT = MIN_STEPS_TREND


def _steady_points(result: Mapping[str, Any], spe: int | None) -> tuple[list[float], list[float]]:
    """(global step, seconds per step) of every steady interval, in order."""
    steps: list[float] = []
    times: list[float] = []
    offset = 0
    for e in result["epochs"]:
        base = (e["epoch"] - 1) * spe if spe else offset
        offset += e["steps"]
        for iv in e.get("steady_intervals") or []:
            rate = finite(iv.get("it_per_s"))
            if rate and rate > 0:
                steps.append(float(base + (iv["from_step"] + iv["to_step"]) / 2))
                times.append(1.0 / rate)
    return steps, times


def drift(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stability rule's drift fit on the steady intervals (None below MIN_INTERVALS_DRIFT)."""
    steps, times = _steady_points(result, (result.get("info") or {}).get("steps_per_epoch"))
    if len(times) < MIN_INTERVALS_DRIFT or float(np.ptp(times)) == 0.0 or steps[-1] == steps[0]:
        return None
    fit = degradation_fit(steps, times, cast(float, median(times)))  # finite, non-empty
    return {**fit, "n_intervals": len(times), "from_step": int(steps[0]), "to_step": int(steps[-1])}


def _epoch_costs(result: Mapping[str, Any]) -> dict[str, Any]:
    """Per-epoch costs the log shows: a validation pass, the time between the bars."""
    val = [v for v in result.get("val_bars") or [] if v.get("total_steps") and v["steps"] >= v["total_steps"]]
    val_pass = float(np.mean([v["elapsed_s"] for v in val])) if val else None
    train_s = {e["epoch"]: e["elapsed_s"] for e in result["epochs"]}
    val_s = {v["epoch"]: v["elapsed_s"] for v in result.get("val_bars") or []}
    summ = sorted((s for s in result.get("epoch_summaries") or [] if s.get("run_elapsed_s") is not None),
                  key=lambda s: s["epoch"])
    between = [b["run_elapsed_s"] - a["run_elapsed_s"] - train_s.get(b["epoch"], 0.0) - val_s.get(b["epoch"], 0.0)
               for a, b in itertools.pairwise(summ) if b["epoch"] == a["epoch"] + 1 and b["epoch"] in train_s]
    return {"val_pass_s": val_pass, "val_passes": len(val),
            "between_epochs_s": max(0.0, float(np.mean(between))) if between else None,
            "summaries": summ}


def live_status(result: Mapping[str, Any], *, budget_hours: float | None = None,
                confidence: float = 0.95) -> dict[str, Any]:
    """Progress, ETA with its band, stalls, drift, loss and the guide's warnings (module docstring)."""
    info = result.get("info") or {}
    overall = result["overall"]
    epochs = result["epochs"]
    spe = info.get("steps_per_epoch")
    planned = result.get("epochs_planned")
    done = sum(min(e["steps"], e["total_steps"] or e["steps"]) for e in epochs)
    total = planned * spe if planned and spe else None
    current = epochs[-1] if epochs else None
    ips = finite(overall.get("it_per_s"))
    rates = [r for r in steady_interval_rates(result) if r > 0]  # the per-interval speeds the log record uses
    sps = seconds_per_step({"metrics": {"it_per_s": ips},
                            "series": {"warmup_steps": 0, "step_time_s": [1.0 / r for r in rates]}}, confidence)
    costs = _epoch_costs(result)
    missing: list[str] = []
    status: dict[str, Any] = {
        "epoch": current["epoch"] if current else None, "epoch_steps": current["steps"] if current else None,
        "epochs_planned": planned, "epochs_completed": result.get("epochs_completed"), "steps_per_epoch": spe,
        "steps_done": done, "steps_total": total, "progress_frac": done / total if total else None,
        "it_per_s": ips, "steady_it_per_s": finite(overall.get("steady_it_per_s")), "seconds_per_step": sps,
        "epoch_costs": {k: v for k, v in costs.items() if k != "summaries"},
        "elapsed_s": None, "remaining_s": None, "total_s": None, "missing": missing,
        "stalls": {"count": overall.get("stall_count"), "time_s": overall.get("stall_time_s"),
                   "period_steps": overall.get("stall_period_steps"),
                   "cost_pct": (100 * overall["stall_time_s"] / overall["elapsed_s"]
                                if overall.get("elapsed_s") else None)},
        "drift": drift(result), "loss": _loss(result), "warnings": [],
    }
    # the run's time so far: the last summary's Elapsed plus the bars after it, else the bars
    last = costs["summaries"][-1] if costs["summaries"] else None
    after = [e for e in epochs if last is None or e["epoch"] > last["epoch"]]
    vals = {v["epoch"]: v["elapsed_s"] for v in result.get("val_bars") or []}
    elapsed = (last["run_elapsed_s"] if last else 0.0) + sum(e["elapsed_s"] + vals.get(e["epoch"], 0.0) for e in after)
    status["elapsed_s"] = elapsed
    if total is None:
        missing.append("the planned epochs" if not planned else "the steps per epoch")
    elif sps.get("mid") is not None and planned:  # (a total means planned epochs)
        remaining_steps = max(0, total - done)
        epochs_left = max(0, planned - (result.get("epochs_completed") or 0))
        fixed = 0.0
        if costs["val_pass_s"] is not None:
            fixed += max(0, planned - costs["val_passes"]) * costs["val_pass_s"]
        elif (result.get("epochs_completed") or 0) >= 1 and len(epochs) > (result.get("epochs_completed") or 0):
            pass  # an epoch ended and the next began without a validation bar: the run validates not
        else:
            missing.append("validation pass")
        if costs["between_epochs_s"] is not None:
            fixed += max(0, planned - len(costs["summaries"])) * costs["between_epochs_s"]
        else:
            missing.append("time between epochs (needs two epoch summaries with Elapsed)")
        status["remaining_steps"] = remaining_steps
        status["epochs_left"] = epochs_left
        status["remaining_s"] = {k: (None if sps.get(k) is None else remaining_steps * sps[k] + fixed)
                                 for k in ("mid", "low", "high")}
        status["total_s"] = {k: (None if v is None else elapsed + v) for k, v in status["remaining_s"].items()}
        status["lower_bound"] = bool(missing)
    status["warnings"] = _warnings(status, budget_hours)
    return status


def _loss(result: Mapping[str, Any]) -> dict[str, Any]:
    loss = result.get("loss") or {}
    pts = loss.get("points") or []
    finite_pts = [p for p in pts if p[1] is not None]
    first_bad = next((p[0] for p in pts if p[1] is None), None)
    return {"last": finite_pts[-1][1] if finite_pts else None, "last_step": finite_pts[-1][0] if finite_pts else None,
            "trend": loss.get("trend"), "decrease_pct": loss.get("decrease_pct"), "start": loss.get("start"),
            "end": loss.get("end"), "non_finite": loss.get("non_finite") or 0, "first_non_finite_step": first_bad,
            "diverged": loss.get("diverged")}


def _warnings(s: Mapping[str, Any], budget_hours: float | None) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    d = s.get("drift")
    if d and d.get("degrading"):
        out.append({"key": "drift", "text": (
            f"the step time drifts up {fmt_finite(d['change_pct'], '.1f')}% over steps {d['from_step']}-{d['to_step']} "
            f"(p = {d['p_value']:.2g}; limit: p < {DEGRADATION_P:g} "
            f"and a change over {DEGRADATION_MIN_CHANGE_PCT:g}%)")})
    st = s["stalls"]
    if st.get("period_steps"):
        out.append({"key": "stalls", "text": (
            f"stalls every {st['period_steps']} steps: {st['count']} so far, {fmt_finite(st['time_s'], '.0f')} s"
            + (f" ({st['cost_pct']:.1f}% of the training time)" if st.get("cost_pct") is not None else "")
            + "; logging, checkpointing or I/O at that interval?")})
    loss = s["loss"]
    if loss["non_finite"]:
        out.append({"key": "non_finite", "text": (
            f"non-finite loss (NaN or inf) at step {loss['first_non_finite_step']}"
            + (f", {loss['non_finite']} value(s) so far" if loss["non_finite"] > 1 else "")
            + ": the run is diverging; stop it and lower the learning rate")})
    elif loss.get("trend") == "diverged":
        out.append({"key": "diverged", "text": (
            f"the loss is rising: {fmt_finite(loss['start'], '.4g')} -> {fmt_finite(loss['end'], '.4g')} "
            f"(smoothed; more than {DIVERGE_RISE_PCT:g}% up)")})
    tot = s.get("total_s") or {}
    if budget_hours is not None and tot.get("mid") is not None and tot["mid"] > budget_hours * 3600:
        band = (f" [{fmt_duration(tot['low'])}-{fmt_duration(tot['high'])}]"
                if tot.get("low") is not None and tot.get("high") is not None else "")
        out.append({"key": "budget", "text": (
            f"the run is projected to take {fmt_duration(tot['mid'])}{band} in all, past --budget-hours "
            f"{budget_hours:g} ({fmt_duration(budget_hours * 3600)})"
            + (" (a lower bound: " + ", ".join(s["missing"]) + " not in the log yet)" if s.get("missing") else ""))})
    return out


def status_line(s: Mapping[str, Any]) -> str:
    """One line for people: progress, speed, ETA [band], stalls, drift, loss."""
    parts = []
    if s.get("epoch") is None:
        return "waiting for the first training bar"
    ep = f"epoch {s['epoch']}" + (f"/{s['epochs_planned']}" if s.get("epochs_planned") else "")
    if s.get("steps_total"):
        parts.append(f"{ep}, step {s['steps_done']:,}/{s['steps_total']:,} ({100 * s['progress_frac']:.1f}%)")
    else:
        parts.append(f"{ep}, step {s['steps_done']:,}")
    parts.append(f"{fmt_finite(s.get('it_per_s'))} it/s")
    rem = s.get("remaining_s")
    if rem and rem.get("mid") is not None:
        band = (f" [{fmt_duration(rem['low'])}-{fmt_duration(rem['high'])}]"
                if rem.get("low") is not None and rem.get("high") is not None
                else f" [{(s.get('seconds_per_step') or {}).get('band_note') or 'no band'}]")
        parts.append(f"ETA {fmt_duration(rem['mid'])}{band}" + (" (lower bound)" if s.get("lower_bound") else ""))
    else:
        parts.append("ETA -" + (f" ({s['missing'][0]} not in the log)" if s.get("missing") else ""))
    st = s["stalls"]
    if st.get("count"):
        parts.append(f"stalls {st['count']}" + (f" every {st['period_steps']} steps" if st.get("period_steps") else ""))
    d = s.get("drift")
    if d and d.get("change_pct") is not None:
        parts.append(f"drift {d['change_pct']:+.1f}%")
    loss = s["loss"]
    if loss.get("last") is not None or loss.get("non_finite"):
        parts.append(f"loss {fmt_finite(loss.get('last'), '.4g')}" + (f" {loss['trend']}" if loss.get("trend") else "")
                     + (f", {loss['non_finite']} non-finite" if loss.get("non_finite") else ""))
    return " | ".join(parts)
