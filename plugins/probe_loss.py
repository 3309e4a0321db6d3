"""Probe ``loss``: does the loss fall, is it noisy, spiky, diverging or flattening?

``finish`` reads ``record["series"]["loss"]`` (warm-up included),
``record["series"]["warmup_steps"]`` and the configured learning rate
(``record["config"]["training"]["lr"]``) and writes the result of
:func:`hjepa_bench.analysis.loss_curve.analyze_loss` to
``record["probes"]["loss"]``.  Steps whose timing window never closed (the
run stopped inside it) have no loss at all and are dropped before the
analysis, so only a real non-finite loss counts as divergence.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from hjepa_bench.analysis.loss_curve import analyze_loss
from hjepa_bench.plugin.api import Probe, ReportSection, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.format import fmt_or_dash
from hjepa_bench.record import record_label

NAME = "loss"


def _lr(config: Mapping[str, Any]) -> float | None:
    value = (config.get("training") or {}).get("lr")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def measured_losses(series: Mapping[str, Any]) -> list[float | None]:
    """Losses of the steps that completed, trailing never-closed steps dropped."""
    losses = list(series.get("loss") or [])
    times = list(series.get("step_time_s") or [])
    end = len(losses)
    while end > 0 and end <= len(times) and times[end - 1] is None and losses[end - 1] is None:
        end -= 1
    return losses[:end]


class LossProbe(Probe):
    name = NAME
    cost = "cheap"
    description = ("loss curve of the run: smoothed start/end, decrease, noise, warm-up spikes, divergence, "
                   "plateau and the validation guide's learning-rate advice (preliminary)")

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        series = record.get("series") or {}
        config = record.get("config") or ctx.config
        return analyze_loss(measured_losses(series), int(series.get("warmup_steps") or 0), _lr(config))

    def summarize(self, entry):
        if entry.get("decrease_pct") is None:
            return f"{entry.get('trend')}"
        advice = (entry.get("lr_advice") or {}).get("text", "")
        return f"{entry['trend']}, down {entry['decrease_pct']:.1f}% (smoothed); lr advice: {advice}"


_label = record_label
_fmt = fmt_or_dash


class LossSection(ReportSection):
    name = NAME
    title = "Loss curve (first steps of training)"
    order = 45

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        import pandas as pd

        rows = []
        for r in records:
            e = (r.get("probes") or {}).get(NAME)
            if not e:
                continue
            row = _label(r)
            if e.get("status") not in (None, "ok"):
                row.update({"trend": f"probe {e.get('status')}: {e.get('error', '')}"})
                rows.append(row)
                continue
            advice = e.get("lr_advice") or {}
            spikes = (e.get("warmup_spikes") or {}).get("count")
            row.update({
                "steps": e.get("n"),
                "trend": e.get("trend") or "not measured",
                "start loss": _fmt(e.get("start_loss"), ".4g"),
                "end loss": _fmt(e.get("end_loss"), ".4g"),
                "decrease %": _fmt(e.get("decrease_pct")),
                ">= 20% down": e.get("criterion_loss_down_20pct"),
                "noise %": _fmt(e.get("noise_pct")),
                "warm-up spikes": _fmt(spikes, "d"),
                "plateau": "-" if e.get("plateau") is None else ("yes" if e["plateau"] else "no"),
                "lr": _fmt(e.get("lr"), ".2g"),
                "lr advice (preliminary)": f"{advice.get('text', '-')} [{advice.get('trigger', '')}]",
            })
            rows.append(row)
        if not rows:
            return None
        table = pd.DataFrame(rows).to_markdown(index=False)
        note = ("Measured per-step losses after warm-up, smoothed over windows of max(3, n/10) steps. "
                "A benchmark run covers only the first steps of training, so the trend and the learning-rate "
                "advice (the validation guide's rules) are preliminary: confirm them on a validation run.")
        return table + "\n\n" + note


@hookimpl
def hjepa_bench_register_probes(register):
    register(LossProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(LossSection())
