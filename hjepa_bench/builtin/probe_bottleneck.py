"""Built-in probe ``bottleneck``: is the step data-, host- or device-bound?

Writes ``record["probes"]["bottleneck"]`` (see :mod:`hjepa_bench.analysis.bottleneck`
for the shares, the verdict rules and their thresholds).  CPU load comes from a
daemon thread started in ``start``: ``psutil.cpu_percent(percpu=True,
interval=0.25)`` in a loop (the thread sleeps inside psutil, so the timed loop
pays nothing), plus the CPU time of the process tree (this process and its
children, i.e. the DataLoader workers, and in a data-parallel job the other local
ranks with theirs; the list is refreshed every ~2 s because listing them costs
milliseconds).  ``after_step`` does nothing.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from hjepa_bench.analysis.bottleneck import (
    CPU_SATURATED_PCT,
    DATA_BOUND_SHARE,
    analyze_bottleneck,
    cpu_times_util,
    judge_bottleneck,
)
from hjepa_bench.format import finite, fmt_or_dash, fmt_pct
from hjepa_bench.plugin.api import Probe, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import device_name, lookup, model_short
from hjepa_bench.record_model import MISSING, Count, JudgedEntry, NonNeg, PositiveInt, RecordModel
from hjepa_bench.report.sections import ProbeTable, judged_threshold
from hjepa_bench.thresholds import DEFAULTS

SAMPLE_INTERVAL_S = 0.25
CHILDREN_REFRESH_S = 2.0
JOIN_TIMEOUT_S = 2.0


def _busy_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except (psutil.Error, OSError):
        return None


def job_siblings(me: psutil.Process) -> list[psutil.Process]:
    """The other local ranks of this data-parallel job (and their DataLoader workers): on one machine
    torchrun starts the ranks as siblings (``LOCAL_WORLD_SIZE`` > 1), so they are the job's own
    processes, not "other processes"; none for a one-process run."""
    try:
        if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= 1:
            return []
        parent = me.parent()
        if parent is None:
            return []
        out = []
        for sib in parent.children():
            if sib.pid != me.pid:
                out += [sib, *sib.children(recursive=True)]
        return out
    except (psutil.Error, OSError, ValueError):
        return []


class _CPUSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="hjepa-bench-bottleneck-cpu", daemon=True)
        self.stop_event = threading.Event()
        self.samples: list[list[float]] = []
        self.me = psutil.Process()
        self.t0 = time.perf_counter()
        self.main0 = _busy_s(self.me) or 0.0
        # children alive at start (not ours to count from zero): their baseline
        self.child_base: dict[int, float] = {}
        self.child_last: dict[int, float] = {}
        self.children: dict[int, psutil.Process] = {}
        self._refresh_children(initial=True)
        self.last_children_refresh = time.perf_counter()
        self.error: str | None = None

    def _refresh_children(self, initial: bool = False) -> None:
        try:
            kids = self.me.children(recursive=True) + job_siblings(self.me)
        except (psutil.Error, OSError):
            return
        for k in kids:
            if k.pid not in self.children:
                self.children[k.pid] = k
                busy = _busy_s(k)
                self.child_base[k.pid] = (busy or 0.0) if initial else 0.0
                if busy is not None:
                    self.child_last[k.pid] = busy

    def _sample_children(self) -> None:
        for pid, proc in list(self.children.items()):
            busy = _busy_s(proc)
            if busy is None:  # exited: keep its last reading
                self.children.pop(pid, None)
            else:
                self.child_last[pid] = busy

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                per_core = psutil.cpu_percent(percpu=True, interval=SAMPLE_INTERVAL_S)
                if self.stop_event.is_set() and not self.samples:
                    self.samples.append(per_core)
                    break
                if self.stop_event.is_set():
                    break  # a partial interval overlapping finish: drop it
                self.samples.append(per_core)
                if time.perf_counter() - self.last_children_refresh > CHILDREN_REFRESH_S:
                    self._refresh_children()
                    self.last_children_refresh = time.perf_counter()
                self._sample_children()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def process_cpu(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        main = (_busy_s(self.me) or self.main0) - self.main0
        kids = sum(max(0.0, self.child_last.get(pid, base) - base) for pid, base in self.child_base.items())
        if wall <= 0:
            return {}
        return {
            "main_process_cpu_pct": round(100.0 * main / wall, 1),
            "children_cpu_pct": round(100.0 * kids / wall, 1),
            "process_tree_cpu_pct": round(100.0 * (main + kids) / wall, 1),
            "children_seen": len(self.child_base),
            "wall_s": round(wall, 3),
            "note": ("CPU time / wall time from probe start (warm-up included), 100 = one core busy; children "
                     "(DataLoader workers) read every sample, listed every ~2 s, so the last <0.25 s of an "
                     "exiting worker may be missed"),
        }


class Shares(RecordModel):
    data_wait: NonNeg | MISSING | None = MISSING
    host: NonNeg | MISSING | None = MISSING
    device: NonNeg | MISSING | None = MISSING
    host_phases: dict[str, float | None] | MISSING = MISSING


class BottleneckEntry(JudgedEntry):
    """The fields of the bottleneck entry that the report, the verdicts and the worker advice read."""

    verdict: str | MISSING | None = MISSING
    worker_advice: str | MISSING | None = MISSING
    shares: Shares | MISSING | None = MISSING
    cpu_saturated: bool | MISSING | None = MISSING
    workers: Count | MISSING = MISSING
    cores: PositiveInt | MISSING = MISSING
    cpu_util_mean_pct: NonNeg | MISSING | None = MISSING
    own_cpu_pct_of_cores: NonNeg | MISSING | None = MISSING
    other_cpu_pct_of_cores: NonNeg | MISSING | None = MISSING
    device_wait_frac: NonNeg | MISSING | None = MISSING


class BottleneckProbe(Probe):
    name = "bottleneck"
    entry_model = BottleneckEntry
    headline = ("verdict", "shares.data_wait", "shares.host", "shares.device", "cpu_saturated", "cpu_util_mean_pct")
    cost = "cheap"
    description = ("Splits measured step time into data wait, host phases and device; samples CPU load in a "
                   "background thread; verdict data-/host-/device-bound with num_workers advice.")

    def __init__(self) -> None:
        self._sampler: _CPUSampler | None = None
        self._times0: list[dict[str, float]] | None = None

    def start(self, ctx: RunContext) -> None:
        self._times0 = [t._asdict() for t in psutil.cpu_times(percpu=True)]
        self._sampler = _CPUSampler()
        self._sampler.start()

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        sampler, self._sampler = self._sampler, None
        samples: list[list[float]] = []
        process_cpu: dict[str, Any] = {}
        notes: list[str] = []
        if sampler is not None:
            sampler.stop_event.set()
            sampler.join(JOIN_TIMEOUT_S)
            samples = list(sampler.samples)
            process_cpu = sampler.process_cpu()
            if sampler.error:
                notes.append(f"CPU sampler failed: {sampler.error}")
        fallback = None
        if self._times0 is not None:
            after = [t._asdict() for t in psutil.cpu_times(percpu=True)]
            fallback = cpu_times_util(self._times0, after)
        config = record.get("config") or ctx.config
        workers = int((config.get("data") or {}).get("num_workers", 0) or 0)
        backend = getattr(ctx.backend, "name", "") or str((config.get("bench") or {}).get("device", ""))
        entry = analyze_bottleneck(record.get("metrics") or {}, backend, workers, os.cpu_count() or 1,
                                   samples, fallback, process_cpu)
        if notes:
            entry["notes"] = notes
        return self.judge(entry, DEFAULTS)

    def judge(self, entry, thresholds, record=None):
        """The verdict and the worker advice against ``data_bound_share``."""
        if "shares" not in entry:
            return entry
        return judge_bottleneck(entry, thresholds.data_bound_share)

    def facts(self, entry, record):
        """The verdict, the data wait, the worker advice and the CPU load of the run's own processes."""
        return {"bottleneck": entry.get("verdict"),
                "data_wait_frac": finite((entry.get("shares") or {}).get("data_wait")),
                "bottleneck_advice": entry.get("worker_advice"), "cpu_saturated": entry.get("cpu_saturated"),
                "cpu_cores": entry.get("cores"), "own_cpu_pct": finite(entry.get("own_cpu_pct_of_cores"))}

    def advise(self, entry, advice):
        """The report's one worker advice in place of the probe's rule of thumb (kept as ``probe_worker_advice``),
        so this section says what the recommendations, the checklist and the configs say."""
        text = advice.get("workers")
        if not entry.get("worker_advice") or not text:
            return entry
        return {**entry, "worker_advice": text, "probe_worker_advice": entry["worker_advice"]}

    def validation_entry(self, record, result):
        """The validation run's data wait is measured per step; its step time includes the device sync, so
        the host/device split is not: the same analysis, data-bound or not."""
        metrics, config, env = record.get("metrics") or {}, record.get("config") or {}, record.get("env") or {}
        if metrics.get("data_wait_frac") is None:
            return None
        return {"status": "ok", **analyze_bottleneck(
            metrics, str(config["bench"].get("device") or env.get("backend") or ""),
            int(config["data"]["num_workers"]), int(env.get("cpu_count_logical") or os.cpu_count() or 1))}

    def summarize(self, entry):
        sh = entry.get("shares") or {}
        parts = ", ".join(f"{k} {v * 100:.0f}%" for k, v in sh.items() if isinstance(v, (int, float)))
        return (f"{entry.get('verdict') or 'no verdict'} ({parts}); CPU: this run "
                f"{fmt_or_dash(entry.get('own_cpu_pct_of_cores'), '.0f', suffix='%')} of the cores, whole machine "
                f"{fmt_or_dash(entry.get('cpu_util_mean_pct'), '.0f', suffix='%')}; {entry.get('worker_advice')}")


class BottleneckSection(ProbeTable):
    name = "bottleneck"
    title = "Bottleneck: data, host or device"
    order = 40
    failed = None
    note = ("Shares of measured wall time after warm-up. Data-bound: data wait > {data_bound:.0%} "
            f"(torch-tb-profiler flags > 5%); host-bound: host share >= device share. CPU saturated: the "
            f"benchmark's own processes (main + DataLoader workers) use > {CPU_SATURATED_PCT:.0f}% of all cores; "
            "the whole machine's load (other jobs included) is shown as context only. On CPU forward/backward is "
            "device compute; on CUDA/MPS host time is dispatch and device is the time the host waited (the "
            "reference step's wait for the device before its masks included); device events at the step's "
            "phase boundaries tell how far the device lagged, and host time (or data wait) while it was still "
            "busy with queued work counts as device time, so a host blocked on a full launch queue is not "
            "read as host-bound. Worker advice follows the "
            "validation guide, data-bound first (6-8 if data-bound, else 2 if our own processes saturate the CPU).")

    def label(self, r: Mapping[str, Any]) -> dict[str, Any]:
        return {"device": device_name(r), "model": model_short(r), "batch": lookup(r, "config", "data", "batch_size")}

    def note_for(self, records: Sequence[Mapping[str, Any]]) -> str:
        return self.note.format(data_bound=judged_threshold(records, self.name, "data_bound_share", DATA_BOUND_SHARE))

    def row(self, e: Mapping[str, Any]) -> dict[str, Any]:
        shares = e.get("shares") or {}
        phases = shares.get("host_phases") or {}
        top = max(phases.items(), key=lambda kv: kv[1]) if phases else None
        return {
            "workers": e.get("workers"),
            "data wait %": fmt_pct(shares.get("data_wait"), suffix=""),
            "host %": fmt_pct(shares.get("host"), suffix=""),
            "top host phase": "-" if top is None else f"{top[0]} {fmt_pct(top[1], suffix='')}%",
            "device %": fmt_pct(shares.get("device"), suffix=""),
            "own CPU % of cores": fmt_or_dash(e.get("own_cpu_pct_of_cores"), ".0f", dash="n/a"),
            "machine CPU %": fmt_or_dash(e.get("cpu_util_mean_pct"), ".0f", dash="n/a"),
            "saturated (own)": e.get("cpu_saturated"),
            "verdict": e.get("verdict") or "n/a",
            "worker advice": e.get("worker_advice"),
        }


@hookimpl
def hjepa_bench_register_probes(register):
    register(BottleneckProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(BottleneckSection())
