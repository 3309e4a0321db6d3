"""Speed and loss of an upstream training log, from what :func:`hjepa_bench.analysis.log_parse.parse_log`
read (pure: a ParsedLog in, a JSON-ready dict out).  Every number in the result comes from the log; a fact
the log does not hold is None, never guessed.  The rules (the constants below, copied into
``analyze_log(...)["rules"]``) are described in ``docs/logformat.md``, "Analysis rules".
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..format import finite
from ..stats import cv as step_cv
from ..stats import median
from .log_parse import BarPoint, ParsedLog
from .loss_curve import (
    DIVERGE_RISE_PCT,
    FLAT_BAND_PCT,
    MIN_POINTS_NOISE,
    MIN_WINDOW,
    NOISE_THRESHOLD_PCT,
    rolling_median,
)
from .stability import PERIOD_AGREE_FRAC, PERIOD_TOL_FRAC, regular_period

# --------------------------------------------------------------------------- rules
MIN_INTERVAL_S = 10.0  # merge refreshes into intervals of at least this many seconds
MIN_PARTIAL_S = 1.0  # a partial interval before a long gap stands alone only from this length
MIN_INTERVALS_CLASSIFY = 3  # an epoch needs this many intervals for a warm-up / stall split
WARMUP_FRACTION = 0.8  # leading intervals slower than this x the epoch's median rate: warm-up
STALL_FRACTION = 0.5  # later intervals slower than this x the epoch's median rate: stall
MIN_INTERVALS_CV = 3  # step_time_cv needs this many steady intervals
ELAPSED_RESOLUTION_S = 1.0  # tqdm prints elapsed in whole seconds (rounded down)

RULES: dict[str, Any] = {
    "min_interval_s": MIN_INTERVAL_S,
    "min_partial_s": MIN_PARTIAL_S,
    "min_intervals_classify": MIN_INTERVALS_CLASSIFY,
    "warmup_fraction": WARMUP_FRACTION,
    "stall_fraction": STALL_FRACTION,
    "min_intervals_cv": MIN_INTERVALS_CV,
    "elapsed_resolution_s": ELAPSED_RESOLUTION_S,
    "loss_min_window": MIN_WINDOW,
    "loss_min_points_noise": MIN_POINTS_NOISE,
    "loss_noise_threshold_pct": NOISE_THRESHOLD_PCT,
    "loss_diverge_rise_pct": DIVERGE_RISE_PCT,
    "loss_flat_band_pct": FLAT_BAND_PCT,
    "definitions": {
        "it_per_s": "steps / elapsed_s of the epoch's last training-bar refresh (counters, not tqdm's smoothed rate)",
        "bar_it_per_s": "the last smoothed rate the bar showed (s/it inverted); for comparison only",
        "intervals": (f"distinct (n, elapsed) refreshes from (0, 0 s) merged into intervals >= {MIN_INTERVAL_S:g} s; "
                      f"a single refresh gap >= {MIN_INTERVAL_S:g} s is its own interval"),
        "warmup": (f"leading intervals of an epoch slower than {WARMUP_FRACTION:g} x its median interval rate "
                   f"(epochs with >= {MIN_INTERVALS_CLASSIFY} intervals)"),
        "stall": f"a later interval slower than {STALL_FRACTION:g} x the epoch's median interval rate",
        "stall_period_steps": ("the regular gap (analysis.stability.regular_period: the median gap, when >= "
                               f"{PERIOD_AGREE_FRAC:.0%} of the gaps agree with it within {PERIOD_TOL_FRAC:.0%}) "
                               "between the stalls' first steps inside each "
                               "epoch (stalls at the same batch of every epoch), else between their global steps "
                               "(stalls every N steps of the run)"),
        "steady_it_per_s": "steps / seconds excluding warm-up and stall intervals",
        "step_time_cv": (f"std (ddof=1) / mean of seconds-per-step over the steady intervals "
                         f"(>= {MIN_INTERVALS_CV} needed)"),
        "overall": "sums over the training bars only (validation and time between bars excluded)",
        "loss_points": "distinct loss/lr postfix emissions, at global step (epoch - 1) * steps_per_epoch + n",
        "loss_window": f"smooth_window, else max({MIN_WINDOW}, n // 10) over the n finite loss points",
        "loss_start_end": "mean of the first / last w finite loss points (needs 2 w points)",
        "loss_smoothed": "trailing mean over w finite loss points",
        "decrease_pct": "(start - end) / |start| * 100",
        "noise_pct": "std (ddof=1) of (loss - centred rolling median over w) / |median| * 100",
        "diverged": f"any non-finite loss, or end above start by more than {DIVERGE_RISE_PCT:g}%",
        "trend": (f"diverged, else decreasing (decrease_pct >= {FLAT_BAND_PCT:g}), increasing "
                  f"(<= -{FLAT_BAND_PCT:g}) or flat"),
        "val_loss": "epoch summary 'Val Loss' (mean over the set) when logged, else the validation bar's last val_loss",
    },
}


_num = finite  # a finite float or None (the output is JSON, which has no NaN)


# --------------------------------------------------------------------------- speed analysis
@dataclass
class _Interval:
    n0: int
    t0: float
    n1: int
    t1: float
    gap: bool = False  # one refresh gap >= MIN_INTERVAL_S

    @property
    def steps(self) -> int:
        return self.n1 - self.n0

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def rate(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf


def _close_partial(out: list[_Interval], a: tuple[int, float], b: tuple[int, float], *, at_end: bool) -> bool:
    """Close the partial interval a..b; False when it is left to the following gap interval."""
    if out and not out[-1].gap and (out[-1].n1, out[-1].t1) == a:
        out[-1].n1, out[-1].t1 = b
        return True
    if b[1] - a[1] >= MIN_PARTIAL_S and b[0] > a[0]:
        out.append(_Interval(a[0], a[1], b[0], b[1]))
        return True
    if at_end:
        if out and (out[-1].n1, out[-1].t1) == a:
            out[-1].n1, out[-1].t1 = b
        elif b[1] > a[1] and b[0] > a[0]:
            out.append(_Interval(a[0], a[1], b[0], b[1]))
        return True
    return False


def build_intervals(points: list[tuple[int, float]]) -> list[_Interval]:
    """Merge (n, elapsed_s) refreshes of one bar (origin (0, 0) added) into intervals (see the rules)."""
    pts: list[tuple[int, float]] = [(0, 0.0)]
    for p in points:
        if p != pts[-1]:
            pts.append(p)
    out: list[_Interval] = []
    anchor = prev = pts[0]
    for p in pts[1:]:
        if (p[1] - prev[1] >= MIN_INTERVAL_S and prev != anchor
                and _close_partial(out, anchor, prev, at_end=False)):
            anchor = prev
        if p[1] - anchor[1] >= MIN_INTERVAL_S and p[0] > anchor[0]:
            out.append(_Interval(anchor[0], anchor[1], p[0], p[1], gap=(p[1] - prev[1] >= MIN_INTERVAL_S)))
            anchor = p
        prev = p
    if prev != anchor:
        _close_partial(out, anchor, prev, at_end=True)
    return out


def _epoch_runs(train: list[BarPoint], warnings: list[str]) -> dict[int, list[BarPoint]]:
    """The refreshes of each epoch's bar (its last run when the bar restarted)."""
    runs: dict[int, list[BarPoint]] = {}
    for p in train:
        cur = runs.get(p.epoch)
        if cur and (p.n < cur[-1].n or p.elapsed_s < cur[-1].elapsed_s):
            warnings.append(f"line {p.line_no}: the bar of epoch {p.epoch} restarted; only its last run is used")
            cur = None
        if cur is None:
            cur = runs[p.epoch] = []
        cur.append(p)
    return runs


def _epoch_speed(epoch: int, pts: list[BarPoint]) -> tuple[dict[str, Any], list[_Interval], list[_Interval],
                                                            list[_Interval]]:
    last = pts[-1]
    steps, elapsed = last.n, last.elapsed_s
    rates = [p.rate_it_per_s for p in pts if p.rate_it_per_s is not None]
    intervals = build_intervals([(p.n, p.elapsed_s) for p in pts])
    entry: dict[str, Any] = {
        "epoch": epoch, "steps": steps, "total_steps": last.total,
        "complete": bool(last.total is not None and steps >= last.total),
        "elapsed_s": elapsed,
        "it_per_s": _num(steps / elapsed) if elapsed > 0 else None,
        "bar_it_per_s": _num(rates[-1]) if rates else None,
        "steady_it_per_s": None, "warmup_steps": None, "warmup_s": None, "stalls": [],
        "interval_count": len(intervals), "median_interval_it_per_s": None,
        "first_line": pts[0].line_no, "last_line": last.line_no,
    }
    warm: list[_Interval] = []
    stalls: list[_Interval] = []
    steady: list[_Interval] = []
    if len(intervals) < MIN_INTERVALS_CLASSIFY:
        entry["note"] = (f"{len(intervals)} interval(s) of >= {MIN_INTERVAL_S:g} s: too few to separate warm-up "
                         f"and stalls (needs {MIN_INTERVALS_CLASSIFY})")
        return entry, warm, stalls, steady
    med = cast(float, median(iv.rate for iv in intervals))  # >= MIN_INTERVALS_CLASSIFY finite rates
    entry["median_interval_it_per_s"] = _num(med)
    i = 0
    while i < len(intervals) and intervals[i].rate < WARMUP_FRACTION * med:
        warm.append(intervals[i])
        i += 1
    for iv in intervals[i:]:
        (stalls if iv.rate < STALL_FRACTION * med else steady).append(iv)
    warm_steps = warm[-1].n1 if warm else 0
    warm_s = warm[-1].t1 if warm else 0.0
    entry["warmup_steps"], entry["warmup_s"] = warm_steps, warm_s
    entry["stalls"] = [{"from_step": iv.n0, "to_step": iv.n1, "seconds": iv.seconds,
                        "it_per_s": _num(iv.rate),
                        "excess_s": _num(iv.seconds - iv.steps / med) if med > 0 else None}
                       for iv in stalls]
    s_steps = steps - warm_steps - sum(iv.steps for iv in stalls)
    s_time = elapsed - warm_s - sum(iv.seconds for iv in stalls)
    entry["steady_it_per_s"] = _num(s_steps / s_time) if s_time > 0 else None
    entry["_steady_steps"], entry["_steady_s"] = s_steps, s_time
    entry["steady_intervals"] = [{"from_step": iv.n0, "to_step": iv.n1, "seconds": iv.seconds,
                                  "it_per_s": _num(iv.rate)} for iv in steady]
    return entry, warm, stalls, steady


def stall_period(epochs: list[dict[str, Any]]) -> int | None:
    """Steps between periodic stalls (see the rules), or None when they are not periodic."""
    def gaps(starts: list[int]) -> list[int]:
        starts = sorted(starts)
        return [b - a for a, b in itertools.pairwise(starts)]

    within = [g for e in epochs for g in gaps([s["from_step"] for s in e["stalls"]])]
    period = regular_period(within)
    if period is None:
        period = regular_period(gaps([s["global_step"] for e in epochs for s in e["stalls"]]))
    return period


# --------------------------------------------------------------------------- loss analysis
def _loss_stats(points: list[list[Any]], smooth_window: int | None) -> dict[str, Any]:
    steps = [p[0] for p in points if p[1] is not None]
    y = np.asarray([p[1] for p in points if p[1] is not None], dtype=float)
    n = int(y.size)
    non_finite = sum(1 for p in points if p[1] is None)
    w = int(smooth_window) if smooth_window else max(MIN_WINDOW, n // 10)
    w = max(1, w)
    out: dict[str, Any] = {"points": points, "smoothed": [], "window": w, "n": n, "start": None, "end": None,
                           "decrease_pct": None, "noise_pct": None, "non_finite": non_finite,
                           "diverged": non_finite > 0, "trend": None}
    if n >= w:
        c = np.cumsum(np.insert(y, 0, 0.0))
        means = (c[w:] - c[:-w]) / w
        out["smoothed"] = [[steps[i + w - 1], _num(float(v))] for i, v in enumerate(means)]
    if n >= 2 * w:
        start, end = float(y[:w].mean()), float(y[-w:].mean())
        out["start"], out["end"] = _num(start), _num(end)
        if start != 0:
            out["decrease_pct"] = _num((start - end) / abs(start) * 100)
            if (end - start) / abs(start) * 100 > DIVERGE_RISE_PCT:
                out["diverged"] = True
    if n >= MIN_POINTS_NOISE:
        med = np.asarray(rolling_median(y, w))
        keep = med != 0
        if keep.sum() >= 2:
            rel = (y[keep] - med[keep]) / np.abs(med[keep]) * 100
            out["noise_pct"] = _num(float(rel.std(ddof=1)))
    dec = out["decrease_pct"]
    if out["diverged"]:
        out["trend"] = "diverged"
    elif dec is not None:
        out["trend"] = "decreasing" if dec >= FLAT_BAND_PCT else "increasing" if dec <= -FLAT_BAND_PCT else "flat"
    return out


# --------------------------------------------------------------------------- the analysis
def _step_offsets(epochs: list[dict[str, Any]], spe: int | None) -> dict[int, int]:
    """The global step before each epoch: (epoch - 1) * steps_per_epoch (without totals: the steps of the
    earlier epochs); every stall learns its global step."""
    offsets: dict[int, int] = {}
    acc = 0
    for e in epochs:
        offsets[e["epoch"]] = (e["epoch"] - 1) * spe if spe else acc
        acc += e["steps"]
    for e in epochs:
        for s in e["stalls"]:
            s["global_step"] = offsets[e["epoch"]] + s["from_step"]
    return offsets


def _steady_cv(steady_all: list[_Interval]) -> float | None:
    """The CV of the seconds per step over the steady intervals (enough of them)."""
    if len(steady_all) >= MIN_INTERVALS_CV:
        spp = [iv.seconds / iv.steps for iv in steady_all if iv.steps > 0]
        if len(spp) >= MIN_INTERVALS_CV:
            return _num(step_cv(spp))
    return None


def _overall_speed(epochs: list[dict[str, Any]], steady_all: list[_Interval], warm_total_steps: int,
                   warm_total_s: float) -> dict[str, Any]:
    """The whole log's speed, warm-up and stalls (the epochs' steady sums are taken out of them)."""
    tot_steps = sum(e["steps"] for e in epochs)
    tot_s = sum(e["elapsed_s"] for e in epochs)
    classified = [e for e in epochs if "_steady_steps" in e]
    st_steps = sum(e.pop("_steady_steps") for e in classified)
    st_s = sum(e.pop("_steady_s") for e in classified)
    all_stalls = [s for e in epochs for s in e["stalls"]]
    return {
        "steps": tot_steps, "elapsed_s": tot_s,
        "it_per_s": _num(tot_steps / tot_s) if tot_s > 0 else None,
        "steady_it_per_s": _num(st_steps / st_s) if classified and st_s > 0 else None,
        "step_time_cv": _steady_cv(steady_all),
        "warmup": {"steps": warm_total_steps if classified else None,
                   "seconds": warm_total_s if classified else None,
                   "epochs_with_warmup": [e["epoch"] for e in epochs if e["warmup_steps"]],
                   "first_epoch_steps": epochs[0]["warmup_steps"] if epochs else None,
                   "first_epoch_s": epochs[0]["warmup_s"] if epochs else None},
        "stall_count": len(all_stalls),
        "stall_time_s": sum(s["seconds"] for s in all_stalls),
        "stall_period_steps": stall_period(epochs),
        "epochs_classified": len(classified),
    }


def _postfix_points(runs: Mapping[int, list[BarPoint]],
                    offsets: Mapping[int, int]) -> tuple[list[list[Any]], list[list[Any]]]:
    """Loss and lr at global steps: the distinct postfix emissions of the training bars."""
    loss_pts: list[list[Any]] = []
    lr_pts: list[list[Any]] = []
    for epoch in sorted(runs):
        prev = None
        for p in runs[epoch]:
            if not p.postfix or p.postfix == prev:
                continue
            prev = p.postfix
            g = offsets[epoch] + p.n
            if p.loss is not None:
                loss_pts.append([g, _num(p.loss)])
            if p.lr is not None and _num(p.lr) is not None:
                lr_pts.append([g, _num(p.lr)])
    return loss_pts, lr_pts


def _validation_loss(parsed: ParsedLog) -> tuple[list[list[Any]], dict[str, str], list[dict[str, Any]]]:
    """The validation loss per epoch (from the epoch summary, else the validation bar), where each came
    from, and the validation bars."""
    val_bar: dict[int, dict[str, Any]] = {}
    for v in parsed.val:
        if v["epoch"] is not None:
            val_bar[v["epoch"]] = v  # the last refresh of that epoch's validation bar
    summ = {s["epoch"]: s for s in parsed.epoch_summaries}
    val_loss: list[list[Any]] = []
    val_source: dict[str, str] = {}
    for ep in sorted(set(val_bar) | {e for e, s in summ.items() if s.get("val_loss") is not None}):
        s = summ.get(ep)
        if s is not None and s.get("val_loss") is not None:
            val_loss.append([ep, s["val_loss"]])
            val_source[str(ep)] = "summary"
        elif val_bar.get(ep, {}).get("val_loss") is not None and _num(val_bar[ep]["val_loss"]) is not None:
            val_loss.append([ep, _num(val_bar[ep]["val_loss"])])
            val_source[str(ep)] = "bar"
    val_bars = [{"epoch": ep, "steps": v["n"], "total_steps": v["total"], "elapsed_s": v["elapsed_s"],
                 "last_val_loss": _num(v["val_loss"])} for ep, v in sorted(val_bar.items())]
    return val_loss, val_source, val_bars


def _planned_epochs(parsed: ParsedLog, warnings: list[str]) -> Any:
    """The epochs the log plans (its header, else its bars); a warning when the two disagree."""
    planned_bar = max((p.epochs_total for p in parsed.train if p.epochs_total), default=None)
    planned = parsed.info.get("epochs", planned_bar)
    if planned_bar is not None and parsed.info.get("epochs") not in (None, planned_bar):
        warnings.append(f"the log says {parsed.info['epochs']} epochs but the bars count to {planned_bar}")
    return planned


def analyze_log(parsed: ParsedLog, *, smooth_window: int | None = None) -> dict[str, Any]:
    """Speed, warm-up, stalls, loss and validation facts of a parsed log (JSON-ready; see the rules)."""
    warnings = list(parsed.warnings)
    runs = _epoch_runs(parsed.train, warnings)
    epochs: list[dict[str, Any]] = []
    steady_all: list[_Interval] = []
    warm_total_steps = 0
    warm_total_s = 0.0
    for epoch in sorted(runs):
        entry, warm, _, steady = _epoch_speed(epoch, runs[epoch])
        epochs.append(entry)
        steady_all.extend(steady)
        if warm:
            warm_total_steps += entry["warmup_steps"]
            warm_total_s += entry["warmup_s"]
    offsets = _step_offsets(epochs, parsed.info.get("steps_per_epoch"))
    overall = _overall_speed(epochs, steady_all, warm_total_steps, warm_total_s)
    loss_pts, lr_pts = _postfix_points(runs, offsets)
    val_loss, val_source, val_bars = _validation_loss(parsed)
    planned = _planned_epochs(parsed, warnings)
    return {
        "epochs": epochs,
        "overall": overall,
        "loss": _loss_stats(loss_pts, smooth_window),
        "val_loss": val_loss,
        "val_loss_source": val_source,
        "val_bars": val_bars,
        "lr": lr_pts,
        "info": dict(parsed.info),
        "epoch_summaries": [dict(s) for s in parsed.epoch_summaries],
        "epochs_completed": sum(1 for e in epochs if e["complete"]),
        "epochs_planned": planned,
        "stopped_at": parsed.stopped_at,
        "warnings": warnings,
        "lines_total": parsed.lines_total,
        "logging_lines": parsed.logging_lines,
        "bar_refreshes": parsed.bar_refreshes,
        "rules": RULES,
    }


def steady_interval_rates(result: Mapping[str, Any]) -> list[float]:
    """it/s of every steady interval of an :func:`analyze_log` result, in order (one value per epoch,
    its steady or wall rate, when no epoch has classified intervals)."""
    rates = []
    for e in result["epochs"]:
        for iv in e.get("steady_intervals") or []:
            if finite(iv.get("it_per_s")):
                rates.append(float(iv["it_per_s"]))
    if not rates:  # fall back to one value per epoch
        rates = [float(e["steady_it_per_s"] or e["it_per_s"]) for e in result["epochs"]
                 if finite(e.get("steady_it_per_s") or e.get("it_per_s"))]
    return rates
