"""Probe ``stability``: is the step time steady, spiky, periodic or drifting?

``finish`` reads ``record["series"]["step_time_s"]`` (warm-up included) and
``record["series"]["warmup_steps"]`` and writes the result of
:func:`hjepa_bench.analysis.stability.analyze_stability` to
``record["probes"]["stability"]``.  The report section renders one row per run.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from hjepa_bench.analysis.stability import THRESHOLD_CV_PCT, analyze_stability
from hjepa_bench.plugin.api import Probe, ReportSection, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.format import fmt_or_dash
from hjepa_bench.record import record_label

NAME = "stability"


class StabilityProbe(Probe):
    name = NAME
    cost = "cheap"
    description = ("step-time stability after warm-up: detected warm-up, CV and p10-p90 spread, "
                   "spikes and their period, slow-down over the run")

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        series = record.get("series") or {}
        times = list(series.get("step_time_s") or [])
        return analyze_stability(times, int(series.get("warmup_steps") or 0))

    def summarize(self, entry):
        if entry.get("cv_pct") is None:
            return None
        deg = entry.get("degradation") or {}
        drift = "slowing down" if deg.get("degrading") else "speeding up" if deg.get("significant") else "no drift"
        period = f", every {entry['spike_period_steps']} steps" if entry.get("spike_period_steps") else ""
        return (f"{entry['verdict']}: CV {entry['cv_pct']:.1f}% (threshold 20%), {entry.get('spike_count') or 0} spikes"
                f"{period}, {drift}")


_label = record_label
_fmt = fmt_or_dash


class StabilitySection(ReportSection):
    name = NAME
    title = "Step-time stability"
    order = 40

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        import pandas as pd

        rows = []
        for r in records:
            e = (r.get("probes") or {}).get(NAME)
            if not e:
                continue
            row = _label(r)
            if e.get("status") not in (None, "ok"):
                row.update({"verdict": f"probe {e.get('status')}: {e.get('error', '')}"})
                rows.append(row)
                continue
            deg = e.get("degradation") or {}
            med = e.get("median_s")
            row.update({
                "verdict": e.get("verdict") or "not measured",
                "steps": e.get("n"),
                "warm-up (reported/detected)": f"{e.get('warmup_steps_reported')}/"
                                               f"{_fmt(e.get('detected_warmup_steps'), 'd')}",
                "median (ms)": _fmt(None if med is None else med * 1000, ".2f"),
                "CV %": _fmt(e.get("cv_pct")),
                "p90-p10 %": _fmt(e.get("variance_pct")),
                "spikes": _fmt(e.get("spike_count"), "d"),
                "spike period (steps)": _fmt(e.get("spike_period_steps"), "d"),
                "drift %/100 steps": _fmt(deg.get("slope_pct_per_100_steps"), "+.2f"),
                "drift p": _fmt(deg.get("p_value"), ".2g"),
            })
            rows.append(row)
        if not rows:
            return None
        table = pd.DataFrame(rows).to_markdown(index=False)
        note = (f"Measured per-step times of each run. Verdict: unstable when CV >= {THRESHOLD_CV_PCT:.0f}% "
                "(the validation guide's speed-variance limit) or the step time drifts significantly "
                "(p < 0.01 and > 5% over the run). Spikes: median + 5 x scaled MAD. Detected warm-up: first "
                "step whose time and the next 5 five-step rolling medians are at most 20% above the "
                "post-warm-up median; the statistics use the later of the reported and detected warm-up.")
        return table + "\n\n" + note


@hookimpl
def hjepa_bench_register_probes(register):
    register(StabilityProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(StabilitySection())
