"""Loss curve of one run: decrease, noise, warm-up spikes, divergence, plateau, LR advice.

Pure analysis (lists of floats in, a JSON-ready dict out; no torch, no files).
It answers the validation guide's "Loss Convergence" questions and applies its
"Learning Rate" adjustments to the measured per-step losses.  A benchmark run
covers only the first steps of training, so everything here describes the
start of training and any advice is preliminary.

Rules (all thresholds are the module constants below and are copied into the
entry under ``thresholds``):

* The analysed losses are those after the run's reported warm-up.  None and
  non-finite values count as non-finite (a JSON record stores NaN as None) and
  are left out of every statistic.  ``n`` = finite analysed losses.
* Smoothing window ``w = max(3, n // 10)``.  ``start_loss`` = mean of the first
  ``w`` analysed losses, ``end_loss`` = mean of the last ``w`` (needs
  ``n >= 2w``).  ``decrease_pct`` = (start - end) / |start| * 100.
* ``noise_pct`` = std (ddof=1) of (loss - m) / |m| * 100, with ``m`` the centred
  rolling median over ``w`` points (needs ``n >= MIN_POINTS_NOISE``).
  ``noisy`` when noise_pct > ``NOISE_THRESHOLD_PCT``.
* Warm-up spikes: in the first third of the whole run (benchmark warm-up steps
  included: they are the first training steps of the LR warm-up), a loss more
  than ``WARMUP_SPIKE_PCT`` % above the trailing median of the previous ``w``
  finite losses (at least 3 of them).
* ``diverged``: any non-finite loss in the run, or end_loss above start_loss by
  more than ``DIVERGE_RISE_PCT`` %.
* ``plateau``: least-squares slopes of the first and the last third of the
  analysed losses; True when the first third fell by at least
  ``PLATEAU_MIN_FIRST_DROP_PCT`` % of its mean over its span and the last third's
  slope is above ``PLATEAU_RATIO`` times the first third's (it falls at less than
  a fifth of the early rate, or rises); None when a third has fewer than
  ``MIN_POINTS_PER_THIRD`` points.
* ``trend``: "diverged" if diverged; else "decreasing" when decrease_pct >=
  ``FLAT_BAND_PCT``, "increasing" when <= -``FLAT_BAND_PCT``, else "flat".
* ``lr_advice`` (the guide's rules, first that applies): none while the run is
  still in its LR warm-up at its last step (``in LR warm-up (lr X of Y): no LR
  advice``: the loss of a warm-up moves at a fraction of the LR); diverged or
  increasing -> decrease significantly (and lengthen warm-up); noisy -> decrease
  to 5e-5; decrease_pct < ``CRITERION_DECREASE_PCT`` -> increase to 1.5e-4 or
  2e-4; else keep.  The rules compare the learning rate the run applied at its
  last step (``lr_applied``) when it is recorded, else the configured ``lr``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from ..format import finite, fmt_lr
from ..stats import Floats, linear_fit, median
from ..status import FAIL, NOT_MEASURED, PASS
from ..thresholds import DEFAULTS as _TH  # the one place thresholds live

# --------------------------------------------------------------------------- thresholds
CRITERION_DECREASE_PCT = _TH.min_loss_decrease_pct  # the validation guide: "Loss decreased by >= 20%"
NOISE_THRESHOLD_PCT = 10.0  # our choice: the guide says "noisy" without a number
WARMUP_SPIKE_PCT = 50.0  # warm-up spike: > 50% above the trailing median
DIVERGE_RISE_PCT = 50.0  # end window > start window by more than 50%: diverged
FLAT_BAND_PCT = 5.0  # |decrease| below this: flat
PLATEAU_RATIO = 0.2  # last-third slope / first-third slope below this: plateau
PLATEAU_MIN_FIRST_DROP_PCT = 5.0  # the first third must have fallen at least this much
MIN_WINDOW = 3  # smoothing window: max(3, n // 10)
MIN_POINTS_NOISE = 6
MIN_POINTS_PER_THIRD = 5
LR_NOISY = 5e-5  # the guide: "If loss is noisy: decrease to 5e-5"
LR_SLOW = (1.5e-4, 2e-4)  # the guide: "If converging too slowly: increase to 1.5e-4 or 2e-4"

PRELIMINARY_NOTE = ("a benchmark run covers only the first steps of training: the trend and the learning-rate "
                    "advice describe the start of training and are preliminary; confirm on a validation run")

DEFINITIONS = {
    "window": f"smoothing window w = max({MIN_WINDOW}, n // 10) over the n finite losses after warm-up",
    "start_loss": "mean of the first w finite losses after the reported warm-up",
    "end_loss": "mean of the last w finite losses",
    "decrease_pct": "(start_loss - end_loss) / |start_loss| * 100",
    "noise_pct": "std (ddof=1) of (loss - centred rolling median over w) / |rolling median| * 100",
    "warmup_spikes": (f"losses in the first third of the run (warm-up included) more than {WARMUP_SPIKE_PCT:.0f}% "
                      f"above the trailing median of the previous w finite losses (>= 3 of them)"),
    "diverged": f"any non-finite loss, or end_loss > start_loss by more than {DIVERGE_RISE_PCT:.0f}%",
    "plateau": (f"first third fell >= {PLATEAU_MIN_FIRST_DROP_PCT:.0f}% (least-squares fit over its span) and "
                f"slope(last third) / slope(first third) < {PLATEAU_RATIO}"),
    "trend": (f"diverged if diverged, else decreasing (decrease_pct >= {FLAT_BAND_PCT:.0f}), "
              f"increasing (<= -{FLAT_BAND_PCT:.0f}) or flat"),
    "criterion_loss_decrease_met": f"pass when decrease_pct >= {CRITERION_DECREASE_PCT:.0f} and not diverged",
}


_num = finite


def rolling_median(x: Floats, window: int) -> list[float]:
    """Centred rolling median of finite values (shorter windows at the edges)."""
    a = np.asarray(x, dtype=float)
    half = window // 2
    # each window holds at least one finite value, so it has a median
    return [cast(float, median(a[max(0, i - half):i + window - half])) for i in range(len(a))]


def _slope(y: np.ndarray) -> float:
    if len(y) < 2 or float(np.ptp(y)) == 0.0:
        return 0.0
    return linear_fit(np.arange(len(y), dtype=float), y)[0]  # scipy, imported at use


def lr_advice(diverged: bool, trend: str | None, noise_pct: float | None, decrease_pct: float | None,
              lr: float | None, *, end_vs_start_pct: float | None = None,
              first_non_finite: int | None = None, applied_lr: float | None = None,
              in_warmup: bool | None = None,
              min_decrease_pct: float = CRITERION_DECREASE_PCT) -> dict[str, Any]:
    """The validation guide's learning-rate rule that the measurements trigger (None or a
    non-finite number: not measured).

    ``lr`` is the configured (peak) learning rate; ``applied_lr`` the one the run actually applied
    at its last judged step, when known: the rules compare that one (a run's loss moves at the LR it
    was given).  ``in_warmup``: the schedule was still in its LR warm-up there, so a slow or noisy
    start says nothing about the LR: no advice at all.  ``min_decrease_pct``: "converging too
    slowly" below this decrease (the report's ``min_loss_decrease_pct``)."""
    lr, noise_pct, decrease_pct, end_vs_start_pct, applied_lr = (
        _num(x) for x in (lr, noise_pct, decrease_pct, end_vs_start_pct, applied_lr))
    peak = fmt_lr(lr) if lr else "the configured value"
    if in_warmup:
        at = fmt_lr(applied_lr) if applied_lr is not None else "below its peak"
        return {"action": "none", "suggested_lr": None, "trigger": f"in LR warm-up (lr {at} of {peak})",
                "text": f"in LR warm-up (lr {at} of {peak}): no LR advice"}
    judged = lr if applied_lr is None else applied_lr
    current = fmt_lr(judged) if judged else "the current value"
    if applied_lr is not None and lr and fmt_lr(applied_lr) != peak:
        current += f" applied at the last step, configured {peak}"
    if diverged or trend == "increasing":
        if first_non_finite is not None:
            trigger = f"non-finite loss at step {first_non_finite}"
        elif diverged and end_vs_start_pct is not None:
            trigger = f"end loss {end_vs_start_pct:+.1f}% vs start (limit +{DIVERGE_RISE_PCT:.0f}%)"
        elif diverged:
            trigger = "the loss diverged"
        else:
            trigger = f"loss rose {-(decrease_pct or 0.0):.1f}% from start to end window"
        return {"action": "decrease", "suggested_lr": None, "trigger": trigger,
                "text": f"decrease the learning rate significantly from {current} (and lengthen warm-up)"}
    if noise_pct is not None and noise_pct > NOISE_THRESHOLD_PCT:
        trigger = f"noise {noise_pct:.1f}% > {NOISE_THRESHOLD_PCT:.0f}%"
        if judged is not None and judged <= LR_NOISY:
            return {"action": "decrease", "suggested_lr": None, "trigger": trigger,
                    "text": f"loss is noisy but the learning rate ({current}) is already <= {fmt_lr(LR_NOISY)}: "
                            f"decrease further or raise the batch size"}
        return {"action": "decrease", "suggested_lr": LR_NOISY, "trigger": trigger,
                "text": f"decrease to {fmt_lr(LR_NOISY)} (from {current})"}
    if decrease_pct is not None and decrease_pct < min_decrease_pct:
        trigger = f"decrease {decrease_pct:.1f}% < {min_decrease_pct:g}%"
        if judged is not None and judged >= LR_SLOW[1]:
            return {"action": "increase", "suggested_lr": None, "trigger": trigger,
                    "text": f"converging slowly although the learning rate ({current}) is already >= "
                            f"{fmt_lr(LR_SLOW[1])}: check gradients, masks and augmentation (debugging guide)"}
        return {"action": "increase", "suggested_lr": LR_SLOW[0], "trigger": trigger,
                "text": f"increase to {fmt_lr(LR_SLOW[0])} or {fmt_lr(LR_SLOW[1])} (from {current})"}
    if decrease_pct is None:
        return {"action": NOT_MEASURED, "suggested_lr": None, "trigger": "too few finite losses",
                "text": "no advice: too few finite losses"}
    noise = NOT_MEASURED if noise_pct is None else f"{noise_pct:.1f}% <= {NOISE_THRESHOLD_PCT:.0f}%"
    return {"action": "keep", "suggested_lr": lr,
            "trigger": f"decrease {decrease_pct:.1f}% >= {min_decrease_pct:g}%, noise {noise}",
            "text": f"keep {peak if lr else current}"
                    + (f" ({fmt_lr(applied_lr)} applied at the last step)" if applied_lr is not None and lr
                       and fmt_lr(applied_lr) != peak else "")}


def judge_loss(entry: dict[str, Any], min_decrease_pct: float = CRITERION_DECREASE_PCT) -> dict[str, Any]:
    """The criterion and the learning-rate advice of an :func:`analyze_loss` entry against
    ``min_decrease_pct`` (in place, and returned).  The probe calls it with the default; a
    report calls it again with its own threshold."""
    entry.setdefault("thresholds", {})["criterion_decrease_pct"] = min_decrease_pct
    entry.setdefault("definitions", {})["criterion_loss_decrease_met"] = (
        f"pass when decrease_pct >= {min_decrease_pct:g} and not diverged")
    dec = _num(entry.get("decrease_pct"))
    if entry.get("diverged"):
        entry["criterion_loss_decrease_met"] = FAIL
    elif dec is not None:
        entry["criterion_loss_decrease_met"] = PASS if dec >= min_decrease_pct else FAIL
    else:
        entry["criterion_loss_decrease_met"] = NOT_MEASURED
    start, end = _num(entry.get("start_loss")), _num(entry.get("end_loss"))
    end_vs_start = (end - start) / abs(start) * 100 if start and end is not None else None
    entry["lr_advice"] = lr_advice(bool(entry.get("diverged")), entry.get("trend"), _num(entry.get("noise_pct")), dec,
                                   _num(entry.get("lr")), end_vs_start_pct=end_vs_start,
                                   first_non_finite=entry.get("first_non_finite_step"),
                                   applied_lr=_num(entry.get("lr_applied")), in_warmup=entry.get("lr_in_warmup"),
                                   min_decrease_pct=min_decrease_pct)
    return entry


def _loss_entry(reported: int, n: int, w: int, bad: list[int], lr: float | None, applied_lr: float | None,
                lr_in_warmup: bool | None, notes: list[str]) -> dict[str, Any]:
    """The analysis before any measurement: every key, the thresholds and the definitions."""
    return {
        "warmup_steps_reported": reported,
        "n": n,
        "window": w,
        "non_finite_count": len(bad),
        "first_non_finite_step": bad[0] if bad else None,
        "start_loss": None, "end_loss": None, "decrease_pct": None,
        "noise_pct": None, "noisy": None,
        "warmup_spikes": {"count": None, "indices": [], "scanned_steps": 0},
        "diverged": bool(bad),
        "plateau": None, "plateau_slope_ratio": None, "first_third_drop_pct": None,
        "trend": None,
        "criterion_loss_decrease_met": NOT_MEASURED,
        "lr": _num(lr),
        "lr_applied": _num(applied_lr),
        "lr_in_warmup": lr_in_warmup,
        "lr_advice": None,
        "preliminary": True,
        "thresholds": {
            "criterion_decrease_pct": CRITERION_DECREASE_PCT, "noise_pct": NOISE_THRESHOLD_PCT,
            "warmup_spike_pct": WARMUP_SPIKE_PCT, "diverge_rise_pct": DIVERGE_RISE_PCT,
            "flat_band_pct": FLAT_BAND_PCT, "plateau_ratio": PLATEAU_RATIO,
            "plateau_min_first_drop_pct": PLATEAU_MIN_FIRST_DROP_PCT, "min_window": MIN_WINDOW,
            "min_points_noise": MIN_POINTS_NOISE, "min_points_per_third": MIN_POINTS_PER_THIRD,
            "lr_noisy": LR_NOISY, "lr_slow": list(LR_SLOW),
        },
        "definitions": dict(DEFINITIONS),
        "notes": notes,
    }


def _start_end(entry: dict[str, Any], y: np.ndarray, w: int) -> None:
    """Start and end windows: their means, the decrease, and divergence when the end rose too far."""
    n, notes = int(y.size), entry["notes"]
    if n < 2 * w:
        notes.append(f"start/end windows need >= {2 * w} finite losses after warm-up, got {n}")
        return
    start, end = float(y[:w].mean()), float(y[-w:].mean())
    entry["start_loss"], entry["end_loss"] = _num(start), _num(end)
    if start != 0:
        entry["decrease_pct"] = _num((start - end) / abs(start) * 100)
        end_vs_start = (end - start) / abs(start) * 100
        if end_vs_start > DIVERGE_RISE_PCT:
            entry["diverged"] = True
    else:
        notes.append("start loss is 0: no relative decrease")


def _noise(entry: dict[str, Any], y: np.ndarray, w: int) -> None:
    """Noise: the spread of the losses around their rolling median, in percent of it."""
    n = int(y.size)
    if n < MIN_POINTS_NOISE:
        entry["notes"].append(f"noise needs >= {MIN_POINTS_NOISE} finite losses after warm-up, got {n}")
        return
    m: np.ndarray = np.asarray(rolling_median(y, w))
    keep = m != 0
    if keep.sum() >= 2:
        rel = (y[keep] - m[keep]) / np.abs(m[keep]) * 100
        entry["noise_pct"] = _num(float(rel.std(ddof=1)))
        entry["noisy"] = bool(entry["noise_pct"] is not None and entry["noise_pct"] > NOISE_THRESHOLD_PCT)


def _warmup_spikes(entry: dict[str, Any], vals: Sequence[float | None], w: int) -> None:
    """Warm-up spikes: losses in the first third of the whole run far above their trailing median."""
    finite_all = [(i, v) for i, v in enumerate(vals) if v is not None]
    scan_end = max(1, len(vals) // 3)
    spikes: list[int] = []
    history: list[float] = []
    scanned = 0
    for i, v in finite_all:
        if i >= scan_end:
            break
        prev = history[-w:]
        if len(prev) >= 3:
            scanned += 1
            med = cast(float, median(prev))  # >= 3 finite losses
            if med > 0 and v > med * (1 + WARMUP_SPIKE_PCT / 100):
                spikes.append(i)
        history.append(v)
    entry["warmup_spikes"] = {"count": len(spikes) if scanned else None, "indices": spikes,
                              "scanned_steps": scanned}
    if not scanned:
        entry["notes"].append("warm-up spikes need >= 4 finite losses in the first third of the run")


def _plateau(entry: dict[str, Any], y: np.ndarray) -> None:
    """Plateau: the last third's slope against the first third's, once the first third fell enough."""
    third = int(y.size) // 3
    if third < MIN_POINTS_PER_THIRD:
        entry["notes"].append(f"plateau needs >= {MIN_POINTS_PER_THIRD} finite losses per third, got {third}")
        return
    first, last = y[:third], y[-third:]
    s1, s3 = _slope(first), _slope(last)
    mean1 = float(first.mean())
    drop1 = -s1 * (third - 1) / abs(mean1) * 100 if mean1 != 0 else 0.0
    ratio = s3 / s1 if s1 != 0 else None
    entry["plateau_slope_ratio"] = _num(ratio)
    entry["first_third_drop_pct"] = _num(drop1)
    entry["plateau"] = bool(drop1 >= PLATEAU_MIN_FIRST_DROP_PCT and ratio is not None
                            and ratio < PLATEAU_RATIO)


def _trend(entry: dict[str, Any]) -> str | None:
    """diverged, decreasing, increasing or flat (None when there is no decrease to judge)."""
    dec = entry["decrease_pct"]
    if entry["diverged"]:
        return "diverged"
    if dec is not None:
        return ("decreasing" if dec >= FLAT_BAND_PCT else
                "increasing" if dec <= -FLAT_BAND_PCT else "flat")
    return None


def analyze_loss(losses: Sequence[float | None], warmup_steps: int, lr: float | None, *,
                 applied_lr: float | None = None, lr_in_warmup: bool | None = None,
                 min_decrease_pct: float = CRITERION_DECREASE_PCT) -> dict[str, Any]:
    """Loss-curve analysis of one run (``record["series"]["loss"]``, warm-up included).

    ``lr``: the configured (peak) learning rate; ``applied_lr`` / ``lr_in_warmup``: the LR the run
    applied at its last step and whether its schedule was still in warm-up then
    (:func:`applied_lr_at_end`); the LR advice is judged on them.  ``min_decrease_pct``: the
    criterion's limit (:func:`judge_loss`)."""
    notes: list[str] = [PRELIMINARY_NOTE]
    reported = max(0, int(warmup_steps))
    vals = [_num(v) for v in losses]
    bad = [i for i, v in enumerate(vals) if v is None]
    if bad:
        notes.append(f"{len(bad)} non-finite loss(es), first at step {bad[0]}")
    y = np.asarray([v for i, v in enumerate(vals) if i >= reported and v is not None], dtype=float)
    n = int(y.size)
    w = max(MIN_WINDOW, n // 10)
    entry = _loss_entry(reported, n, w, bad, lr, applied_lr, lr_in_warmup, notes)
    _start_end(entry, y, w)
    _noise(entry, y, w)
    _warmup_spikes(entry, vals, w)
    _plateau(entry, y)
    entry["trend"] = _trend(entry)
    judge_loss(entry, min_decrease_pct)
    if entry["plateau"]:
        notes.append("the loss flattened early: its last third falls at less than "
                     f"{PLATEAU_RATIO:.0%} of the first third's rate")
    return entry


def measured_losses(series: Mapping[str, Any]) -> list[float | None]:
    """Losses of the steps that completed, trailing never-closed steps dropped."""
    losses = list(series.get("loss") or [])
    times = list(series.get("step_time_s") or [])
    end = len(losses)
    while end > 0 and end <= len(times) and times[end - 1] is None and losses[end - 1] is None:
        end -= 1
    return losses[:end]


def applied_lr_at_end(series: Mapping[str, Any], n_steps: int) -> tuple[float | None, bool | None]:
    """(learning rate, still in LR warm-up) the run applied at its step ``n_steps - 1`` (the last one
    analysed), from ``series["lr"]`` and ``series["lr_in_warmup"]``; None where not recorded."""
    i = n_steps - 1
    lrs = list(series.get("lr") or [])
    warm = list(series.get("lr_in_warmup") or [])
    lr = _num(lrs[i]) if 0 <= i < len(lrs) else None
    in_warmup = warm[i] if 0 <= i < len(warm) and warm[i] is not None else None
    return lr, None if in_warmup is None else bool(in_warmup)


def configured_lr(config: Mapping[str, Any]) -> float | None:
    """``training.lr`` of a config as a float, or None."""
    value = (config.get("training") or {}).get("lr")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
