"""Probe ``loss``: does the loss fall, is it noisy, spiky, diverging or flattening?

``finish`` reads ``record["series"]["loss"]`` (warm-up included),
``record["series"]["warmup_steps"]``, the configured learning rate
(``record["config"]["training"]["lr"]``) and the learning rate the last step
actually applied (``record["series"]["lr"]`` / ``["lr_in_warmup"]``: a benchmark
runs the first steps of the schedule, deep in its warm-up, so the LR advice is
judged on that, and there is none during warm-up) and writes the result of
:func:`hjepa_bench.analysis.loss_curve.analyze_loss` to
``record["probes"]["loss"]``.  Steps whose timing window never closed (the
run stopped inside it) have no loss at all and are dropped before the
analysis, so only a real non-finite loss counts as divergence.
"""
from __future__ import annotations

from hjepa_bench import Probe, hookimpl
from hjepa_bench.analysis.loss_curve import (
    CRITERION_DECREASE_PCT,
    analyze_loss,
    applied_lr_at_end,
    configured_lr,
    judge_loss,
    measured_losses,
)
from hjepa_bench.format import finite
from hjepa_bench.format import fmt_or_dash as _fmt
from hjepa_bench.record_model import MISSING, Count, JudgedEntry, RecordModel
from hjepa_bench.report.sections import ProbeTable
from hjepa_bench.status import NOT_MEASURED, read_status
from hjepa_bench.thresholds import DEFAULTS


class WarmupSpikes(RecordModel):
    count: Count | MISSING | None = MISSING


class LrAdvice(RecordModel):
    action: str | MISSING | None = MISSING
    suggested_lr: float | MISSING | None = MISSING
    trigger: str | MISSING | None = MISSING
    text: str | MISSING | None = MISSING


class LossEntry(JudgedEntry):
    """The fields of the loss entry that the report and the verdicts read."""

    start_loss: float | MISSING | None = MISSING
    end_loss: float | MISSING | None = MISSING
    decrease_pct: float | MISSING | None = MISSING
    noise_pct: float | MISSING | None = MISSING
    trend: str | MISSING | None = MISSING
    noisy: bool | MISSING | None = MISSING
    diverged: bool | MISSING | None = MISSING
    warmup_spikes: WarmupSpikes | MISSING | None = MISSING
    n: Count | MISSING | None = MISSING
    preliminary: bool | MISSING = MISSING
    lr: float | MISSING | None = MISSING
    non_finite_count: Count | MISSING | None = MISSING
    lr_applied: float | MISSING | None = MISSING
    lr_in_warmup: bool | MISSING | None = MISSING
    first_non_finite_step: Count | MISSING | None = MISSING
    window: Count | MISSING | None = MISSING
    criterion_loss_decrease_met: str | MISSING | None = MISSING
    lr_advice: LrAdvice | MISSING | None = MISSING


class LossProbe(Probe):
    name = "loss"
    entry_model = LossEntry
    headline = ("start_loss", "end_loss", "decrease_pct", "noise_pct",
                "trend", "diverged", "non_finite_count", "lr_applied", "lr_advice.action")
    description = ("loss curve of the run: smoothed start/end, decrease, noise, warm-up spikes, divergence, "
                   "plateau and the validation guide's learning-rate advice (preliminary)")

    def finish(self, ctx, record):
        series = record.get("series") or {}
        config = record.get("config") or ctx.config
        losses = measured_losses(series)
        applied, in_warmup = applied_lr_at_end(series, len(losses))
        return self.judge(analyze_loss(losses, int(series.get("warmup_steps") or 0), configured_lr(config),
                                       applied_lr=applied, lr_in_warmup=in_warmup), DEFAULTS)

    def judge(self, entry, thresholds, record=None):
        """The criterion and the learning-rate advice against ``min_loss_decrease_pct``."""
        if "criterion_loss_decrease_met" not in entry:
            return entry
        return judge_loss(entry, thresholds.min_loss_decrease_pct)

    def facts(self, entry, record):
        """The smoothed start and end, the decrease, trend, noise, divergence, warm-up spikes and the LR advice."""
        return {"loss_start": finite(entry.get("start_loss")), "loss_end": finite(entry.get("end_loss")),
                "loss_decrease_pct": finite(entry.get("decrease_pct")),
                "loss_trend": entry.get("trend"), "loss_noisy": entry.get("noisy"),
                "diverged": bool(entry.get("diverged")),
                "warmup_spikes": (entry.get("warmup_spikes") or {}).get("count"),
                "loss_points": entry.get("n"), "loss_preliminary": bool(entry.get("preliminary", True)),
                "lr": finite(entry.get("lr")), "lr_advice": (entry.get("lr_advice") or {}).get("text"),
                "lr_advice_detail": entry.get("lr_advice"), "non_finite": bool(entry.get("non_finite_count")),
                "lr_applied": finite(entry.get("lr_applied")), "lr_in_warmup": entry.get("lr_in_warmup")}

    def validation_entry(self, record, result):
        """The loss of the whole validation run: a real training run, so not preliminary."""
        series = record.get("series") or {}
        losses = list(series.get("loss") or [])
        applied, in_warmup = applied_lr_at_end(series, len(losses))
        loss = analyze_loss(losses, int(series.get("warmup_steps") or 0), float(record["config"]["training"]["lr"]),
                            applied_lr=applied, lr_in_warmup=in_warmup)
        loss["preliminary"] = False
        loss["notes"] = [n for n in loss.get("notes", []) if "preliminary" not in n]
        return {"status": "ok", **loss}

    def summarize(self, entry):
        if entry.get("decrease_pct") is None:
            if entry.get("diverged"):
                return f"diverged (non-finite loss at step {entry.get('first_non_finite_step')})"
            return (f"not measured: {entry.get('n', 0)} finite loss(es) after warm-up, the start and end windows "
                    f"need {2 * int(entry.get('window') or 3)}")
        advice = (entry.get("lr_advice") or {}).get("text", "")
        return f"{entry['trend']}, down {entry['decrease_pct']:.1f}% (smoothed); lr advice: {advice}"


class LossSection(ProbeTable):
    name, title, order, failed = "loss", "Loss curve (first steps of training)", 45, "trend"
    note = ("Measured per-step losses after warm-up, smoothed over windows of max(3, n/10) steps. "
            "A benchmark run covers only the first steps of training, so the trend and the learning-rate "
            "advice (the validation guide's rules) are preliminary: confirm them on a validation run.")

    def row(self, e):
        advice = e.get("lr_advice") or {}
        return {"steps": e.get("n"), "trend": e.get("trend") or NOT_MEASURED,
                "start loss": _fmt(e.get("start_loss"), ".4g"), "end loss": _fmt(e.get("end_loss"), ".4g"),
                "decrease %": _fmt(e.get("decrease_pct")),
                f">= {(e.get('thresholds') or {}).get('criterion_decrease_pct', CRITERION_DECREASE_PCT):g}% down":
                    read_status(e.get("criterion_loss_decrease_met")),
                "noise %": _fmt(e.get("noise_pct")),
                "warm-up spikes": _fmt((e.get("warmup_spikes") or {}).get("count"), "d"),
                "plateau": "-" if e.get("plateau") is None else ("yes" if e["plateau"] else "no"),
                "lr (applied / configured)": f"{_fmt(e.get('lr_applied'), '.2g')} / {_fmt(e.get('lr'), '.2g')}"
                + (" (warm-up)" if e.get("lr_in_warmup") else ""),
                "lr advice (preliminary)": _advice(advice)}


def _advice(advice):
    """The advice, and what triggered it when the text does not already say so."""
    text, trigger = advice.get("text") or "-", advice.get("trigger") or ""
    return text if not trigger or trigger in text else f"{text} [{trigger}]"


@hookimpl
def hjepa_bench_register_probes(register):
    register(LossProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(LossSection())
