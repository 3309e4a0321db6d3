"""Built-in probe ``memory``: peak, mean, headroom and leak check of device memory.

Writes ``record["probes"]["memory"]`` (fields and thresholds in
:mod:`hjepa_bench.analysis.memory`).  ``after_step`` reads
``ctx.backend.memory().current_bytes``: live tensors on CUDA/MPS, the process tree's RSS (DataLoader workers included)
on CPU.  A reading is not free (on CPU about 0.1 ms: psutil RSS, total RAM and
``/proc/self/status``), so the probe keeps to a budget: every step earns
``max(SAMPLE_BUDGET_S, SAMPLE_BUDGET_FRAC * (data wait + host time))`` of credit
and a reading is taken when the credit covers the reading's cost (measured in
``start``).  Steps of 10 ms or more (CPU H-JEPA steps, most GPU steps, whose
readings cost microseconds) are sampled every step; a sub-millisecond toy step on
CPU every few steps.  ``entry["sampling"]`` says what happened.

The report section also fits peak memory against batch size over a sweep
(:func:`hjepa_bench.analysis.memory.fit_memory`) when a model was measured at two
or more batch sizes.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hjepa_bench.analysis.memory import (
    DEFAULT_MARGIN,
    LEAK_RULE,
    PRESSURE_PEAK_FRAC,
    fit_memory,
    judge_memory,
    memory_entry,
)
from hjepa_bench.format import finite, fmt_bytes, fmt_pct
from hjepa_bench.plugin.api import Probe, RunContext, StepSample
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import device_name, lookup, model_short
from hjepa_bench.record_model import MISSING, Count, JudgedEntry, NonNeg, RecordModel
from hjepa_bench.report.sections import ProbeTable, judged_threshold
from hjepa_bench.thresholds import DEFAULTS

SAMPLE_BUDGET_S = 50e-6  # a reading per step is always fine up to this cost ...
SAMPLE_BUDGET_FRAC = 0.01  # ... or up to 1% of the step's host + data time
COST_PROBES = 5


def leak_word(leak: Mapping[str, Any] | None) -> str:
    """``leak suspected`` / ``no leak`` / ``leak not judged`` (too few settled steps)."""
    suspected = (leak or {}).get("suspected")
    return "leak not judged" if suspected is None else "leak suspected" if suspected else "no leak"


class Leak(RecordModel):
    suspected: bool | MISSING | None = MISSING


class MemoryTrace(RecordModel):
    steps: list[Count] | MISSING = MISSING
    bytes: list[Count] | MISSING = MISSING
    warmup_steps: Count | MISSING = MISSING


class MemoryEntry(JudgedEntry):
    """The fields of the memory entry that the report, the verdicts and the decision read."""

    leak: Leak | MISSING | None = MISSING
    memory_pressure: bool | MISSING | None = MISSING
    headroom_frac: float | MISSING | None = MISSING
    peak_device_bytes: NonNeg | MISSING | None = MISSING
    trace: MemoryTrace | MISSING | None = MISSING


class MemoryProbe(Probe):
    name = "memory"
    entry_model = MemoryEntry
    headline = ("peak_device_bytes", "headroom_frac", "memory_pressure", "leak.suspected")
    cost = "cheap"
    description = ("Device memory per step (RSS on CPU): peak, mean after warm-up, headroom, leak slope; "
                   "report fits memory vs batch size over a sweep.")

    def __init__(self) -> None:
        self._samples: list[tuple[int, int]] = []
        self._cost_s = 0.0
        self._credit = 0.0
        self._steps = 0

    def start(self, ctx: RunContext) -> None:
        self._samples, self._steps = [], 0
        costs = []
        for _ in range(COST_PROBES):
            t0 = time.perf_counter()
            ctx.backend.memory()
            costs.append(time.perf_counter() - t0)
        self._cost_s = sorted(costs)[len(costs) // 2]
        self._credit = self._cost_s  # the first step is sampled

    def after_step(self, ctx: RunContext, sample: StepSample) -> None:
        self._steps += 1
        credit = self._credit + max(SAMPLE_BUDGET_S, SAMPLE_BUDGET_FRAC * (sample.data_wait_s + sample.host_s))
        if credit >= self._cost_s:
            current = ctx.backend.memory().current_bytes
            if current is not None:
                self._samples.append((sample.index, int(current)))
            credit -= self._cost_s
        self._credit = min(credit, 2 * self._cost_s)  # no bursts after a slow step

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        metrics = record.get("metrics") or {}
        series = record.get("series") or {}
        sampled = len(self._samples)
        sampling = {
            "reading_cost_us": round(self._cost_s * 1e6, 1),
            "sampled_steps": sampled,
            "steps": self._steps,
            "rule": (f"a reading whenever the accumulated budget (max({SAMPLE_BUDGET_S * 1e6:.0f} us, "
                     f"{SAMPLE_BUDGET_FRAC:.0%} of the step's data wait + host time) per step) covers its cost"),
        }
        source = metrics.get("memory_source") or ""
        if not source:
            try:
                source = ctx.backend.memory().source
            except Exception:
                source = ""
        return self.judge(memory_entry(self._samples, int(series.get("warmup_steps") or 0), metrics, source, sampling),
                          DEFAULTS)

    def judge(self, entry, thresholds, record=None):
        """Memory pressure and the leak check against ``memory_pressure_frac`` (and the fit's margin)."""
        if "headroom_frac" not in entry:
            return entry
        return judge_memory(entry, thresholds.memory_pressure_frac, thresholds.memory_margin_frac)

    def facts(self, entry, record):
        """The leak verdict (None: not judged) and why, memory pressure and the headroom."""
        leak = entry.get("leak") or {}
        return {"leak": None if leak.get("suspected") is None else bool(leak["suspected"]),
                "leak_detail": leak.get("reason") or leak.get("note"),
                "memory_pressure": bool(entry.get("memory_pressure")),
                "headroom_frac": finite(entry.get("headroom_frac"))}

    def summarize(self, entry):
        head = entry.get("headroom_frac")
        leak = leak_word(entry.get("leak"))
        return (f"peak {fmt_bytes(entry.get('peak_device_bytes'))}, mean {fmt_bytes(entry.get('mean_device_bytes'))}, "
                f"headroom {'n/a' if head is None else f'{head:.0%}'}, {leak}")


class MemorySection(ProbeTable):
    name = "memory"
    title = "Memory: peak, headroom, leaks and batch-size fit"
    order = 50
    failed = None
    note = ("Device memory on CUDA/MPS, on CPU the RSS of the process tree, the DataLoader workers' private "
            "memory included (total = system RAM). Headroom: total minus the peak footprint (on CUDA the "
            "allocator's peak reserve, cache included, plus the context and other memory outside the allocator; "
            "else the peak). Pressure: peak > "
            "{pressure:.0%} of total (torch-tb-profiler's rule). Leak slope/step: least squares over the samples "
            f"after warm-up; leak? {LEAK_RULE}.")

    def label(self, r: Mapping[str, Any]) -> dict[str, Any]:
        return {"device": device_name(r), "model": model_short(r), "batch": lookup(r, "config", "data", "batch_size"),
                "status": r.get("status")}

    def row(self, e: Mapping[str, Any]) -> dict[str, Any]:
        leak = e.get("leak") or {}
        slope = leak.get("slope_bytes_per_step")
        return {
            "peak": fmt_bytes(e.get("peak_device_bytes")),
            "mean": fmt_bytes(e.get("mean_device_bytes")),
            "total": fmt_bytes(e.get("device_total_bytes")),
            "headroom %": fmt_pct(e.get("headroom_frac"), suffix=""),
            "pressure": e.get("memory_pressure"),
            "leak slope/step": fmt_bytes(slope),
            "leak?": {True: "yes", False: "no"}.get(leak.get("suspected"), "not judged"),
            "peak RSS": fmt_bytes(e.get("peak_rss_bytes")),
        }

    def note_for(self, records: Sequence[Mapping[str, Any]]) -> str:
        return self.note.format(pressure=judged_threshold(records, self.name, "pressure_peak_frac", PRESSURE_PEAK_FRAC))

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        import pandas as pd  # imported when a report is rendered, not when the plugin loads

        records = list(records)
        margin = judged_threshold(records, self.name, "fit_margin_frac", DEFAULT_MARGIN)
        table = super().render(records)
        if table is None:
            return None
        parts = [table]
        fits = fit_memory(records, margin)
        fit_rows = []
        for (device, model), f in sorted(fits.items()):
            if len(f["ok_batches"]) < 2:
                continue
            fit = f["fit"] or {}
            room = f.get("room_for_larger_model") or {}
            fit_rows.append({
                "device": device, "model": model,
                "ok batches": ", ".join(map(str, f["ok_batches"])),
                "OOM at": ", ".join(map(str, f["oom_batches"])) or "-",
                "per sample": fmt_bytes(fit.get("bytes_per_sample")),
                "fixed": fmt_bytes(fit.get("intercept_bytes")),
                "limit": fmt_bytes(f["limit_bytes"]),
                "predicted max batch": f["predicted_max_batch"] if f["predicted_max_batch"] is not None else "n/a",
                "can increase batch?": f["can_increase_batch"],
                "room for larger model?": room.get("answer"),
                "note": "; ".join(x for x in [f["note"], *room.get("evidence", [])] if x),
            })
        if fit_rows:
            parts += ["Peak footprint vs batch size (the allocator's peak reserve plus the device memory in use "
                      "outside it where the backend reports them (CUDA), else the peak allocated; least squares "
                      "over ok records; limit = total x "
                      f"(1 - {margin:.0%}); a batch that ran out of memory caps the prediction):",
                      pd.DataFrame(fit_rows).to_markdown(index=False)]
        return "\n\n".join(parts)


@hookimpl
def hjepa_bench_register_probes(register):
    register(MemoryProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(MemorySection())
