"""Probe ``profiler`` (costly; ``--probes profiler`` or ``--profile``): a torch.profiler trace of a few steps.

The traced steps are not measured steps: the probe asks the runner for
``extra_steps`` (``Probe.extra_steps``) that run after the measured window has
closed, so no profiled step is in it/s, the step-time statistics, the time split
or any other probe's figures.  ``before_extra_steps`` starts a
``torch.profiler.profile`` with

* activities CPU, plus CUDA on the cuda backend (there is no MPS activity: on
  Apple GPUs the trace shows the CPU side of the ops only);
* ``schedule(wait=0, warmup=1, active=3, repeat=1)`` over the 4 extra steps: the
  first warms the profiler up, the next three are recorded, and the window closes
  after the last (the warm-up steps and the measured steps before them already
  paid the one-off costs);
* ``record_shapes=True``, ``profile_memory=True``, ``with_stack=False``;
* ``on_trace_ready``: :func:`torch.profiler.tensorboard_trace_handler` into
  ``ctx.artifacts_dir`` (a temporary folder when the run keeps no files), the
  layout ``tensorboard --logdir DIR`` opens with the torch-tb-profiler plugin
  (``DIR/<host>_<pid>.<ns timestamp>.pt.trace.json``).  The export itself is
  deferred from inside the timed loop to ``finish`` (writing the JSON takes
  longer than a tiny step); the handler and the file layout are the same.

``after_extra_step`` only calls ``prof.step()``.  The steps the profiler records
run slower (event collection, memory tracking) and the step that closes the
window also pays for stopping the collection; none of that reaches a measured
figure.

Entry: ``trace_dir``, ``trace_files``, ``profiled_steps``, ``profiled_step_indices``
(the record's step indices of the traced steps: after the measured ones),
``top_ops_by_self_time``
(top 15 operators by self CPU time: name, calls, self CPU ms, total CPU ms, and
self device ms on CUDA), on CUDA also ``top_ops_by_self_device_time``, and
``tensorboard_command``.  What kineto writes to the process's stderr from C++ while the profiler
runs ("USDT ... profiler_start", "gpuGetDeviceCount failed" on a machine without a GPU, CPUAllocator
warnings) is captured (:mod:`hjepa_bench.measure.quiet`) into ``library_output`` (``lines``, ``count``); the
CLI summarises it in one line, or prints it with ``-v``.
"""
from __future__ import annotations

import glob
import os
import shlex
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from hjepa_bench.measure.quiet import NativeOutput, entry_output
from hjepa_bench.plugin.api import Probe, ReportSection, RunContext, StepSample
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import device_name, probe

SCHEDULE = {"wait": 0, "warmup": 1, "active": 3, "repeat": 1}
#: the steps the probe asks for after the measured window: the whole schedule
EXTRA_STEPS = SCHEDULE["wait"] + SCHEDULE["warmup"] + SCHEDULE["active"]
TOP_K = 15
TRACE_GLOB = "*.pt.trace.json*"


def profiled_steps(steps_seen: int, wait: int = SCHEDULE["wait"], warmup: int = SCHEDULE["warmup"],
                   active: int = SCHEDULE["active"]) -> int:
    """Steps inside the recorded window when the run had ``steps_seen`` steps (repeat=1)."""
    return max(0, min(active, steps_seen - wait - warmup))


def _ms(us: float | None) -> float | None:
    return None if us is None else float(us) / 1000.0


def top_ops(key_averages: Iterable[Any], by: str = "cpu", k: int = TOP_K, device: bool = False,
            steps: int = 0) -> list[dict[str, Any]]:
    """The top ``k`` operators of ``prof.key_averages()`` by self CPU (``by="cpu"``)
    or self device (``by="device"``) time; times in ms over the profiled steps."""
    rows = []
    for e in key_averages:
        self_dev = getattr(e, "self_device_time_total", None)
        if self_dev is None:
            self_dev = getattr(e, "self_cuda_time_total", 0.0)
        row = {"name": str(e.key), "calls": int(e.count),
               "self_cpu_ms": _ms(e.self_cpu_time_total), "cpu_total_ms": _ms(e.cpu_time_total)}
        if device:
            row["self_device_ms"] = _ms(self_dev)
        if steps > 0:
            row["self_cpu_ms_per_step"] = row["self_cpu_ms"] / steps
        rows.append(row)
    key = "self_device_ms" if by == "device" else "self_cpu_ms"
    rows = [r for r in rows if (r.get(key) or 0.0) > 0.0 and not r["name"].startswith("ProfilerStep")]
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:k]


def _trace_files(d: str) -> set[str]:
    return set(glob.glob(os.path.join(glob.escape(d), TRACE_GLOB)))


class ProfilerProbe(Probe):
    name = "profiler"
    headline = ("profiled_steps", "trace_empty", "trace_dir")
    cost = "costly"
    description = ("torch.profiler trace of 3 extra steps after the measured window (schedule warmup=1, "
                   "active=3; never in a timing figure) for TensorBoard (torch-tb-profiler) / Perfetto, plus the "
                   "top operators by self time")
    extra_steps = EXTRA_STEPS

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        capture = getattr(self, "_capture", None)
        if capture is not None:
            capture.stop()
        self._capture: NativeOutput | None = None
        self._prof: Any = None
        self._stopped = True
        self._ready = False
        self._steps = 0
        self._dir: str | None = None
        self._notes: list[str] = []
        self._device = False
        self._error: str | None = None
        self._indices: list[int] = []

    def start(self, ctx: RunContext) -> None:
        self._reset()

    def before_extra_steps(self, ctx: RunContext) -> None:
        # kineto writes to file descriptor 2 from C++ (profiler_start/stop, "gpuGetDeviceCount failed" on a
        # machine without a GPU, CPUAllocator warnings): captured until finish, kept in the entry
        self._capture = NativeOutput().start()
        try:
            notes = self._notes
            if ctx.artifacts_dir:
                self._dir = os.path.abspath(ctx.artifacts_dir)
            else:
                self._dir = tempfile.mkdtemp(prefix="hjepa-bench-trace-")
                notes.append("the run keeps no artifacts folder: the trace went to a temporary folder")
            activities = [ProfilerActivity.CPU]
            backend = ctx.backend.name
            if backend == "cuda":
                activities.append(ProfilerActivity.CUDA)
                self._device = True
            elif backend == "mps":
                notes.append("torch.profiler has no MPS activity: the trace shows the CPU side of the ops only")
            self._activities = [a.name for a in activities]
            self._handler = tensorboard_trace_handler(self._dir)
            self._prof = profile(activities=activities, schedule=schedule(**SCHEDULE),
                                 on_trace_ready=self._on_trace_ready, record_shapes=True,
                                 profile_memory=True, with_stack=False)
            self._prof.start()
            self._stopped = False
        except BaseException:  # the runner calls no finish for a probe that failed here
            self._capture.stop()
            raise

    def _on_trace_ready(self, prof: Any) -> None:
        # called inside the timed loop: only remember it; the JSON is written in finish()
        self._ready = True

    def after_extra_step(self, ctx: RunContext, sample: StepSample) -> None:
        if self._stopped or self._prof is None:
            return
        position = self._steps  # 0-based step of the schedule
        self._steps += 1
        if SCHEDULE["wait"] + SCHEDULE["warmup"] <= position < EXTRA_STEPS:
            self._indices.append(int(sample.index))
        try:
            self._prof.step()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self._stop()

    def _stop(self) -> None:
        if self._stopped or self._prof is None:
            return
        self._stopped = True
        self._prof.__exit__(None, None, None)  # stop() plus the step-tracker cleanup

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        capture, self._capture = self._capture, None
        try:
            entry = self._finish(record)
        finally:
            if capture is not None:
                capture.stop()
        if entry is not None and capture is not None and capture.count:
            entry["library_output"] = entry_output(capture.lines, capture.count)
        return entry

    def _finish(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        if self._prof is None:
            if record.get("status") != "ok":
                return {"steps_seen": 0, "profiled_steps": 0, "trace_files": [], "trace_empty": True,
                        "notes": [f"not traced: the run ended with status {record.get('status')} before the "
                                  "extra steps after its measured window"]}
            return None
        self._stop()
        steps = profiled_steps(self._steps)
        series = record.get("series") or {}
        first = int(series.get("warmup_steps") or 0)  # the measured steps: series indices first..first+n-1
        n = len(series.get("step_time_s") or []) - first
        trace_dir = self._dir or ""
        before = _trace_files(trace_dir)
        notes = list(self._notes)
        ops: list[dict[str, Any]] = []
        ops_dev: list[dict[str, Any]] = []
        recorded = self._ready and steps > 0  # stopped right at the window's start: nothing recorded
        if recorded:
            self._handler(self._prof)
            averages = self._prof.key_averages()
            ops = top_ops(averages, "cpu", device=self._device, steps=steps)
            if self._device:
                ops_dev = top_ops(averages, "device", device=True, steps=steps)
        else:
            need = SCHEDULE["wait"] + SCHEDULE["warmup"] + 1
            notes.append(f"empty trace: {self._steps} extra step(s) ran; the schedule records from step {need} on "
                         f"(wait={SCHEDULE['wait']}, warmup={SCHEDULE['warmup']}, active={SCHEDULE['active']})")
        files = sorted(_trace_files(trace_dir) - before)
        extra = (record.get("metrics") or {}).get("extra_steps") or {}
        if extra.get("error"):
            notes.append(f"the extra steps failed after {extra.get('steps')} of {extra.get('requested')}: "
                         f"{extra['error']}")
        if recorded and steps < SCHEDULE["active"]:
            notes.append(f"the extra steps stopped inside the recorded window: {steps} of {SCHEDULE['active']} "
                         "steps recorded")
        notes.append(f"the traced steps ran after the measured window ({EXTRA_STEPS} extra steps: profiler warm-up "
                     f"+ {SCHEDULE['active']} recorded), so they are in no timing figure; they ran slower "
                     "(event and memory collection)")
        entry: dict[str, Any] = {
            "trace_dir": trace_dir,
            "trace_files": files,
            "trace_empty": not files,
            "steps_seen": self._steps,
            "profiled_steps": steps if recorded else 0,
            "profiled_step_indices": list(self._indices) if recorded else [],
            "measured_step_indices": [int(first), int(first) + int(n) - 1] if n else [],
            "schedule": dict(SCHEDULE),
            "activities": self._activities,
            "top_ops_by_self_time": ops,
            "tensorboard_command": f"tensorboard --logdir {shlex.quote(trace_dir)}",
            "viewer_note": "TensorBoard with the torch-tb-profiler plugin (pip install torch-tb-profiler); "
                           "the same .pt.trace.json opens in Perfetto (ui.perfetto.dev) and HTA",
            "notes": notes,
            "torch": torch.__version__,
        }
        if self._device:
            entry["top_ops_by_self_device_time"] = ops_dev
        if self._error:
            entry.update({"status": "failed", "error": self._error})
        self._prof = None  # free the collected events
        return entry

    def summarize(self, entry):
        top = (entry.get("top_ops_by_self_time") or [{}])[0]
        first = f"; top op {top.get('name')}" if top.get("name") else ""
        return (f"{entry.get('profiled_steps')} steps traced in {entry.get('trace_dir')}{first}; "
                f"open with: {entry.get('tensorboard_command')}")


class ProfilerSection(ReportSection):
    name = "profiler"
    title = "Profiler traces"
    order = 80

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        import pandas as pd  # imported when a report is rendered, not when the plugin loads

        parts = []
        for r in records:
            e = probe(r, "profiler")
            if not e:
                continue
            c = r.get("config") or {}
            b = c.get("bench") or {}
            head = (f"**{device_name(r)}**, {b.get('variant')}, {b.get('precision')}, "
                    f"batch {(c.get('data') or {}).get('batch_size')}")
            if e.get("status") == "failed":
                parts.append(f"{head}: probe failed: {e.get('error')}")
                continue
            lines = [f"{head}: {e.get('profiled_steps', 0)} profiled steps, "
                     f"{len(e.get('trace_files') or [])} trace file(s); open with `{e.get('tensorboard_command')}`"]
            ops = e.get("top_ops_by_self_time") or []
            if ops:
                cols = {"name": "operator", "calls": "calls", "self_cpu_ms": "self CPU (ms)",
                        "cpu_total_ms": "CPU total (ms)", "self_device_ms": "self device (ms)"}
                df = pd.DataFrame(ops[:10])
                df = df[[k for k in cols if k in df.columns]].rename(columns=cols)
                lines += ["", df.to_markdown(index=False, floatfmt=".2f")]
            for note in e.get("notes") or []:
                if note.startswith(("empty trace", "the extra steps stopped", "not traced")):
                    lines += ["", f"Note: {note}."]
            parts.append("\n".join(lines))
        if not parts:
            return None
        foot = ("Times are totals over the profiled steps (torch.profiler key_averages, self time excludes "
                "child operators). The profiled steps ran after each run's measured window, so they are in no "
                "timing figure; they run slower than unprofiled ones.")
        return "\n\n".join(parts) + "\n\n" + foot


@hookimpl
def hjepa_bench_register_probes(register):
    register(ProfilerProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(ProfilerSection())
