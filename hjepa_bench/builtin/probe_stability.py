"""Probe ``stability``: is the step time steady, spiky, periodic or drifting?  ``finish`` writes
:func:`hjepa_bench.analysis.stability.analyze_stability` of the record's step times (warm-up included)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hjepa_bench import Probe, hookimpl
from hjepa_bench.analysis.stability import (
    MIN_STEPS_SPREAD,
    THRESHOLD_CV_PCT,
    analyze_stability,
    drift_text,
    judge_stability,
)
from hjepa_bench.format import finite
from hjepa_bench.format import fmt_or_dash as _fmt
from hjepa_bench.record_model import MISSING, Count, JudgedEntry, NonNeg, RecordModel
from hjepa_bench.report.sections import ProbeTable, judged_threshold
from hjepa_bench.status import NOT_MEASURED
from hjepa_bench.thresholds import DEFAULTS


class Degradation(RecordModel):
    significant: bool | MISSING | None = MISSING
    degrading: bool | MISSING | None = MISSING
    change_pct: float | MISSING | None = MISSING
    p_value: NonNeg | MISSING | None = MISSING


class StabilityEntry(JudgedEntry):
    """The fields of the stability entry that the report and the verdicts read."""

    cv_pct: NonNeg | MISSING | None = MISSING
    n: Count | MISSING | None = MISSING
    verdict: str | MISSING | None = MISSING
    criterion_cv_below_limit: str | MISSING | None = MISSING
    spike_count: Count | MISSING | None = MISSING
    spike_period_steps: Count | MISSING | None = MISSING
    spike_threshold_s: NonNeg | MISSING | None = MISSING
    degradation: Degradation | MISSING | None = MISSING


class StabilityProbe(Probe):
    name = "stability"
    entry_model = StabilityEntry
    headline = ("cv_pct", "variance_pct", "verdict", "spike_count",
                "spike_period_steps", "degradation.change_pct", "degradation.degrading")
    description = ("step-time stability after warm-up: detected warm-up, CV and p10-p90 spread, "
                   "spikes and their period, slow-down over the run")

    def finish(self, ctx, record):
        series = record.get("series") or {}
        entry = analyze_stability(list(series.get("step_time_s") or []), int(series.get("warmup_steps") or 0))
        return self.judge(entry, DEFAULTS)

    def judge(self, entry, thresholds, record=None):
        """The verdict against ``max_step_cv_pct``; with the record's own measured steps, the whole analysis
        again (the one definition of the step statistics: a record written by an older rule gets the CV,
        median and drift every other section reads)."""
        if "verdict" not in entry:
            return entry
        series = (record or {}).get("series")
        if isinstance(series, Mapping) and series.get("step_time_s"):
            return {"status": "ok", **analyze_stability(list(series["step_time_s"]),
                                                        int(series.get("warmup_steps") or 0),
                                                        thresholds.max_step_cv_pct)}
        return judge_stability(entry, thresholds.max_step_cv_pct)

    def facts(self, entry, record):
        """The step-time CV (not measured below ``MIN_STEPS_SPREAD`` steps) and a significant slow-down."""
        out: dict[str, Any] = {}
        if entry.get("n") is not None and entry["n"] < MIN_STEPS_SPREAD:
            out["step_cv_pct"] = None
        elif finite(entry.get("cv_pct")) is not None:
            out["step_cv_pct"] = finite(entry["cv_pct"])
        deg = entry.get("degradation") or {}
        if deg.get("degrading") and drift_text(deg) is not None:
            out["step_drift"] = drift_text(deg) + (
                f" (p {deg['p_value']:.2g})" if finite(deg.get("p_value")) is not None else "")
        return out

    def validation_entry(self, record, result):
        """The full analysis of the validation run's per-step times (spikes, period, drift), as the probe
        does, when it measured a step."""
        series = record.get("series") or {}
        whole, warm = list(series.get("step_time_s") or []), int(series.get("warmup_steps") or 0)
        if not any(t is not None for t in whole[warm:]):
            return None
        return {"status": "ok", **analyze_stability(whole, warm)}

    def summarize(self, entry):
        th, deg = entry.get("thresholds") or {}, entry.get("degradation") or {}
        if entry.get("cv_pct") is None:
            return f"not measured: {entry.get('n', 0)} analysed step(s), the CV needs >= " \
                   f"{th.get('min_steps_spread', MIN_STEPS_SPREAD)}"
        drift = "slowing down" if deg.get("degrading") else "speeding up" if deg.get("significant") else "no drift"
        period = f", every {entry['spike_period_steps']} steps" if entry.get("spike_period_steps") else ""
        return (f"{entry['verdict']}: CV {entry['cv_pct']:.1f}% (threshold {th.get('cv_pct', THRESHOLD_CV_PCT):g}%), "
                f"{entry.get('spike_count') or 0} spikes{period}, {drift}")


class StabilitySection(ProbeTable):
    name, title, order, failed = "stability", "Step-time stability", 40, "verdict"
    note = ("Measured per-step times of each run. Verdict: unstable when CV >= {limit} (the validation guide's "
            "speed-variance limit, or --thresholds max_step_cv_pct) or the step time drifts significantly (p < 0.01 "
            "and > 5% over the run). Spikes: median + 5 x scaled MAD. Steps, median and CV are the record's "
            "measured steps (after the reported warm-up), the same steps and numbers as the measured step speed "
            "table and the criteria. Drift: the least-squares change over those steps, never extrapolated past "
            "them. Detected warm-up: first step whose time and the next 5 five-step rolling medians are at most "
            "20% above the post-warm-up median; when it is later than the reported one the run says so (measure with a longer "
            "--warmup-steps); those steps are not dropped.")

    def note_for(self, records):
        return self.note.format(limit=f"{judged_threshold(records, self.name, 'cv_pct', THRESHOLD_CV_PCT):g}%")

    def row(self, e):
        deg, med, warm = e.get("degradation") or {}, e.get("median_s"), _fmt(e.get("detected_warmup_steps"), "d")
        return {"verdict": e.get("verdict") or NOT_MEASURED, "steps": e.get("n"),
                "warm-up (reported/detected)": f"{e.get('warmup_steps_reported')}/{warm}",
                "median (ms)": _fmt(None if med is None else med * 1000, ".2f"), "CV %": _fmt(e.get("cv_pct")),
                "p90-p10 %": _fmt(e.get("variance_pct")), "spikes": _fmt(e.get("spike_count"), "d"),
                "spike period (steps)": _fmt(e.get("spike_period_steps"), "d"),
                "drift (fitted change over the measured steps)": drift_text(deg) or "-",
                "drift p": _fmt(deg.get("p_value"), ".2g")}


@hookimpl
def hjepa_bench_register_probes(register):
    register(StabilityProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(StabilitySection())
