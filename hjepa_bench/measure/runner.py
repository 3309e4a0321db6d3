"""The run loop: warm-up, timed windows, adaptive stopping, one result record.

Timing (docs/measuring.md):

* warm-up steps run first and are reported separately;
* steps run in windows with one device sync at each edge (no per-step sync, so
  host/device overlap is kept); throughput = measured steps / window time;
* the per-step distribution comes from device events recorded at step starts
  (CUDA, MPS) or from wall time between step starts (CPU, which is synchronous);
* time blocked in ``next(batches)`` is data wait; the rest of the host time up
  to ``step()`` returning is host work (dispatch, masks, optimizer, EMA); for a
  step that blocks on the device inside its host work (``syncs_in_step``: the
  reference masks' read-backs), the runner synchronizes right before ``step()``
  and counts that wait for the previous step's queued work as device time
  (``device_wait_s``), not as the host phase that would otherwise absorb it;
* measuring stops when the median step time is known to the target relative
  precision (95% CI), or at the step cap, or at the time target once ``min_steps`` are
  measured; below ``min_steps`` it goes on past the time target up to a hard cap that scales
  with the warm-up's step time (:mod:`hjepa_bench.analysis.policy`);
* a non-finite loss (or gradient norm, without a GradScaler) -> ``diverged``;
  the backend's out-of-memory error -> ``oom``; anything else -> ``error``.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psutil
import torch

from .. import stats
from ..analysis import policy
from ..analysis.bottleneck import device_lag_split
from ..errors import PLUGIN_FAILURES, UserError, error_line
from ..plugin.api import Backend, PreparedWorkload, Probe, RunContext, StepSample, Workload
from ..record import check_probe_entry, dumps, new_record

ProgressFn = Callable[[dict[str, Any]], None]


class RunHooks:
    """Optional hooks of :func:`run_benchmark`, for a run that is one rank of a data-parallel job
    (:mod:`hjepa_bench.measure.ddp_rank`).  The defaults do nothing."""

    def prepared(self, prepared: PreparedWorkload) -> None:
        """Right after ``workload.prepare`` (e.g. wrap the step in DDP)."""

    def agree(self, stop_reason: str | None, window: int) -> tuple[str | None, int]:
        """Before each measured window: this run's decision (stop with ``stop_reason``, or run ``window``
        steps) in, the decision every rank follows out (ranks must run the same number of steps)."""
        return stop_reason, window

    def after_loop(self, ctx: RunContext, record: dict[str, Any]) -> None:
        """After the measured loop ended well, with the metrics filled, before the workload is closed."""

    def first_step(self, step_s: float) -> None:
        """Right after the first warm-up step (a sweep's child tells its parent: the rest of the
        warm-up is then budgeted from it, not from a constant)."""

    def warmed_up(self, step_times_s: list[float], cap_s: float) -> None:
        """Right after the warm-up: its step times and the measured loop's hard cap (a sweep's child
        tells its parent, which sets its deadline from them)."""


class Diverged(Exception):
    def __init__(self, step: int, what: str):
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


class _Loop:
    def __init__(self, ctx: RunContext, probes: Sequence[Probe], progress: ProgressFn | None,
                 hooks: RunHooks | None = None):
        self.ctx = ctx
        self.hooks = hooks or RunHooks()
        self.backend: Backend = ctx.backend
        self.work = ctx.workload
        self.probes = probes
        self.progress = progress
        self.samples: list[StepSample] = []
        self.grad_norms: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.batch_sizes: list[int] = []
        self.window_times: list[float] = []  # measured windows only
        self.warmup_time_s = 0.0
        self.cap_s: float | None = None  # the measured loop's hard cap (set after the warm-up)
        self.events = self.backend.has_device_events()
        self.scaled = getattr(self.work, "uses_grad_scaler", False)
        self.sync_before_step = bool(getattr(self.work, "syncs_in_step", False))
        self.timeline: list[dict[str, dict[str, float]]] = []  # per step with device phase events
        if self.events:
            try:
                self.work.phase_events = self.backend.event  # the step records its boundaries on the stream
            except AttributeError:  # a workload that does not take them
                pass
        self.batches: Iterator[Any] = iter(self.work.batches())
        self.failed: dict[str, dict[str, Any]] = {}  # probe name -> failure entry

    def window(self, n: int, warmup: bool) -> float:
        backend = self.backend
        losses, norms, marks, fresh, clocks = [], [], [], [], []
        backend.synchronize()
        w0 = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            if self.events:
                ev = backend.event()
                ev.record()
                marks.append(ev)
            else:
                marks.append(t0)
            batch = next(self.batches)
            t1 = time.perf_counter()
            if self.sync_before_step:  # the step would wait here anyway: count it as device time
                backend.synchronize()
            t1s = time.perf_counter()
            out = self.work.step(batch)
            t2 = time.perf_counter()
            backend.sample_memory()
            sample = StepSample(index=len(self.samples), warmup=warmup, data_wait_s=t1 - t0, host_s=t2 - t1s,
                                device_wait_s=t1s - t1, lr=out.lr, lr_in_warmup=out.lr_in_warmup)
            clocks.append((t0, out.phases))
            self.samples.append(sample)
            fresh.append(sample)
            losses.append(out.loss)
            norms.append(out.grad_norm)
            self.phases.append(dict(out.host_s))
            self.batch_sizes.append(_batch_len(batch))
            for probe in self.probes:
                if probe.name not in self.failed:
                    try:
                        probe.after_step(self.ctx, sample)
                    except PLUGIN_FAILURES as exc:  # a broken probe never breaks the run
                        self.failed[probe.name] = _failure(exc)
        if self.events:
            end = backend.event()
            end.record()
            marks.append(end)
        backend.synchronize()
        w1 = time.perf_counter()
        if self.events:
            times = [marks[i].elapsed_s(marks[i + 1]) for i in range(n)]
            self._attribute(marks, clocks, fresh)
        else:
            marks.append(w1)
            times = [marks[i + 1] - marks[i] for i in range(n)]
        loss_vals = torch.stack([x.float() for x in losses]).cpu().tolist()  # one readback per window
        norm_vals = ([math.nan] * n if norms[0] is None else
                     torch.stack([x.float() for x in norms]).cpu().tolist())
        for sample, t, loss, norm in zip(fresh, times, loss_vals, norm_vals):
            sample.step_time_s, sample.loss = t, loss
            self.grad_norms.append(norm)
            if not math.isfinite(loss):
                raise Diverged(sample.index, "loss")
            if norms[0] is not None and not math.isfinite(norm) and not self.scaled:
                raise Diverged(sample.index, "gradient norm")
        return w1 - w0

    def _attribute(self, marks: list[Any], clocks: list[tuple[float, Any]], fresh: list[StepSample]) -> None:
        """Put the window's device events on the host clock and split each step's host time into the host's
        own and the part the device set the pace (``analysis.bottleneck.device_lag_split``).  The first event
        was recorded right after the window's sync, with the device idle, so it ran when the host recorded it:
        a device time is that host time plus the event's elapsed time from it."""
        origin_h, origin = clocks[0][0], marks[0]

        def on_host(event: Any) -> float:
            return origin_h + origin.elapsed_s(event)

        for i, ((t0, clock), sample) in enumerate(zip(clocks, fresh)):
            lag = max(0.0, on_host(marks[i]) - t0)  # the device's backlog when the host began this step
            sample.data_overlap_s = min(sample.data_wait_s, lag)
            pts = [] if clock is None else [(name, h, e) for name, h, e in clock.marks]
            if len(pts) < 2 or any(e is None for _, _, e in pts):
                continue
            split = device_lag_split([(name, h, on_host(e)) for name, h, e in pts])
            sample.host_wait_s = min(sample.host_s, sum(r["wait_s"] for r in split.values()))
            while len(self.timeline) < sample.index:
                self.timeline.append({})
            self.timeline.append(split)

    def next_window(self, b: Mapping[str, Any], t_start: float) -> tuple[str | None, int]:
        """Stop (the reason) or the size of the next measured window."""
        done = len(self.measured())
        elapsed = time.perf_counter() - t_start
        times = [s.step_time_s for s in self.measured()]
        if done >= b["max_steps"]:
            return "max_steps", 0
        # the step-time estimate: measured steps, else the warm-up steps
        estimate = times or [s.step_time_s for s in self.samples if s.step_time_s is not None]
        median = float(sorted(estimate)[len(estimate) // 2]) if estimate else 0.0
        if self.cap_s is None:  # no warm-up: the cap scales with the first measured step
            self.cap_s = policy.time_cap_s(b["max_time_s"], b["min_steps"], median or None) if median else None
        short = done < b["min_steps"]  # the minimum is met past the time target, up to the hard cap
        deadline = max(b["max_time_s"], self.cap_s or 0.0) if short else b["max_time_s"]
        if done > 0 and elapsed + median > deadline:  # the next step would end past the deadline
            return ("time_cap" if short else "max_time"), 0
        if not short and stats.relative_precision(times) <= b["target_rel_precision"]:
            return "precision", 0
        n = min(int(b["window_steps"]), int(b["max_steps"]) - done)
        if median > 0:  # do not run past the time target
            room = math.floor((b["max_time_s"] - elapsed) / max(1e-9, median))
            # past it, measuring on to the minimum: one step per window, so that the hard cap holds
            # even when the steps turn out slower than the estimate
            n = 1 if short and room < 1 else max(1, min(n, room))
        return None, n

    def extra(self) -> dict[str, Any] | None:
        """The steps probes asked for after the measured window (``Probe.extra_steps``): run for
        them only, timed by nothing.  A step that fails ends them (the error is in the returned entry,
        which the probes' ``finish`` sees as ``metrics.extra_steps``); the record stays as measured."""
        wanted = [p for p in self.probes if int(getattr(p, "extra_steps", 0) or 0) > 0 and p.name not in self.failed]
        if not wanted:
            return None
        for probe in wanted:
            try:
                probe.before_extra_steps(self.ctx)
            except PLUGIN_FAILURES as exc:
                self.failed[probe.name] = _failure(exc)
        wanted = [p for p in wanted if p.name not in self.failed]
        n = max((int(p.extra_steps) for p in wanted), default=0)
        first = len(self.samples)
        t0 = time.perf_counter()
        done, error = 0, None
        try:
            for k in range(n):
                out = self.work.step(next(self.batches))
                sample = StepSample(index=first + k, warmup=False, data_wait_s=0.0, host_s=0.0, extra=True,
                                    lr=out.lr, lr_in_warmup=out.lr_in_warmup)
                done += 1
                for probe in wanted:
                    if probe.name not in self.failed and k < int(probe.extra_steps):
                        try:
                            probe.after_extra_step(self.ctx, sample)
                        except PLUGIN_FAILURES as exc:
                            self.failed[probe.name] = _failure(exc)
            self.backend.synchronize()
        except PLUGIN_FAILURES as exc:  # the measurement is done: it stays as it is
            error = _failure(exc)["error"]
        return {"steps": done, "requested": n, "first_index": first, "time_s": time.perf_counter() - t0,
                "for": [p.name for p in wanted], "error": error,
                "note": "run after the measured window for these probes; in no timing figure or series"}

    def measured(self) -> list[StepSample]:
        return [s for s in self.samples if not s.warmup and s.step_time_s is not None]

    def run(self, b: Mapping[str, Any]) -> str:
        if b["warmup_steps"] > 0:  # the first step alone, so that its time is known at once
            self.warmup_time_s = self.window(1, warmup=True)
            self.hooks.first_step(float(self.samples[-1].step_time_s))
            if b["warmup_steps"] > 1:
                self.warmup_time_s += self.window(int(b["warmup_steps"]) - 1, warmup=True)
            warm = [s.step_time_s for s in self.samples if s.warmup]
            self.cap_s = policy.time_cap_s(b["max_time_s"], b["min_steps"], policy.median(warm))
            self.hooks.warmed_up(warm, self.cap_s)
        self.backend.reset_peak_memory()
        t_start = time.perf_counter()
        while True:
            reason, n = self.hooks.agree(*self.next_window(b, t_start))
            if reason is not None:
                return reason
            self.window_times.append(self.window(n, warmup=False))
            if self.progress:
                self.progress({"steps": len(self.measured()), "elapsed_s": time.perf_counter() - t_start,
                               "median_step_s": stats.median(s.step_time_s for s in self.measured()),
                               "max_steps": b["max_steps"], "max_time_s": b["max_time_s"]})


def _failure(exc: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _entry(probe: Probe, entry: Any) -> dict[str, Any]:
    """What ``finish`` returned as the probe's entry (status ``ok`` unless it says otherwise), or a
    ``failed`` entry saying why when the record could not hold it: not a mapping, data JSON cannot
    hold, or fields of the wrong type (:func:`~hjepa_bench.record.check_probe_entry` with the
    probe's ``entry_model``)."""
    if not isinstance(entry, Mapping):
        return {"status": "failed", "error": f"finish() returned a {type(entry).__name__}, not a mapping"}
    try:
        full = json.loads(dumps({"status": "ok", **entry}, indent=None))
        check_probe_entry(probe.name, full, probe.entry_model)
    except (TypeError, ValueError) as exc:  # json: TypeError; RecordError is a ValueError
        return {"status": "failed", "error": f"finish() returned an entry the record cannot hold: "
                                             f"{type(exc).__name__}: {exc}"}
    return full


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0]) if hasattr(first, "shape") else 0


def _metrics(loop: _Loop, batch_size: int, stop_reason: str | None) -> dict[str, Any]:
    measured = loop.measured()
    times = [s.step_time_s for s in measured]
    total = sum(loop.window_times)
    n = len(measured)
    it_per_s = n / total if total > 0 else None
    summary = stats.summarize(times)
    phase_names = sorted({k for p in loop.phases for k in p})
    measured_phases = [loop.phases[s.index] for s in measured]
    mem = loop.backend.memory()
    warm = [s for s in loop.samples if s.warmup]
    achieved = sorted(set(loop.batch_sizes[s.index] for s in measured)) or sorted(set(loop.batch_sizes))
    losses = [s.loss for s in measured if s.loss is not None]
    warnings = [w for w in [stats.spread_warning(summary)] if w]
    workers, cores = config_workers(loop.ctx.config), os.cpu_count() or 1
    if workers > cores:
        warnings.append(f"{workers} DataLoader workers on {cores} CPU cores: the workers compete with the step")
    if stop_reason == "max_time" and n < 10:
        warnings.append(f"only {n} steps measured before the time cap; the statistics are rough")
    bench = loop.ctx.config.get("bench", {})
    if stop_reason == "time_cap":
        warnings.append(f"only {n} of the {bench.get('min_steps')} minimum steps measured: the steps ran slower "
                        f"than the warm-up's and reached the hard cap of {loop.cap_s:.0f} s; nothing is projected "
                        "or judged from this config")
    return {
        "it_per_s": it_per_s,
        "samples_per_s": it_per_s * batch_size if it_per_s is not None else None,
        "step_time_s": summary,
        "measured_steps": n,
        "measured_time_s": total,
        "data_wait_frac": sum(s.data_wait_s for s in measured) / total if total > 0 else None,
        "host_frac": sum(s.host_s for s in measured) / total if total > 0 else None,
        "device_wait_frac": sum(s.device_wait_s for s in measured) / total if total > 0 else None,
        **_timeline_metrics(loop, measured, total),
        "host_phases_s": {k: stats.median(p.get(k, 0.0) for p in measured_phases) for k in phase_names},
        "warmup": {"steps": len(warm), "time_s": loop.warmup_time_s,
                   "step_time_s": [s.step_time_s for s in warm]},
        "batch_size": {"requested": batch_size, "achieved": achieved[0] if len(achieved) == 1 else achieved},
        "peak_device_bytes": mem.peak_bytes,
        "current_device_bytes": mem.current_bytes,
        "reserved_device_bytes": mem.reserved_bytes,
        "peak_reserved_device_bytes": mem.peak_reserved_bytes,
        "device_outside_allocator_bytes": mem.outside_allocator_bytes,
        "device_total_bytes": mem.total_bytes,
        "memory_source": mem.source,
        "peak_rss_bytes": _peak_rss(),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "stop_reason": stop_reason,
        "min_steps": bench.get("min_steps"),
        "time_cap_s": loop.cap_s,
        "timing_method": "device-events" if loop.events else "synced-wall-clock",
        "warnings": warnings,
    }


def _timeline_metrics(loop: _Loop, measured: list[StepSample], total: float) -> dict[str, Any]:
    """With device phase events (an asynchronous device): how much of the data wait and of the host time
    in ``step()`` the device was still busy with queued work (``analysis.bottleneck.device_lag_split``),
    and the device time per phase.  Empty without them."""
    timed = [s for s in measured if s.host_wait_s is not None and s.index < len(loop.timeline)
             and loop.timeline[s.index]]
    if total <= 0 or not timed or len(timed) < len(measured):
        return {}
    rows = [loop.timeline[s.index] for s in timed]
    names = sorted({k for r in rows for k in r})

    def median(key: str, name: str) -> float:
        return stats.median(r.get(name, {}).get(key, 0.0) for r in rows)

    return {
        "host_wait_frac": sum(s.host_wait_s for s in timed) / total,
        "data_wait_overlap_frac": sum(s.data_overlap_s or 0.0 for s in timed) / total,
        "host_phase_waits_s": {k: median("wait_s", k) for k in names},
        "device_phases_s": {k: median("device_s", k) for k in names},
        "timeline": ("device events recorded on the stream at each phase boundary, put on the host clock at the "
                     "window's opening sync; wait = host time while the device was still busy with work queued "
                     "before the phase (or, for the data wait, before the step)"),
    }


def config_workers(config: Mapping[str, Any]) -> int:
    return int(config.get("data", {}).get("num_workers", 0))


def _peak_rss() -> int | None:
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except Exception:
        return psutil.Process().memory_info().rss


def _series(loop: _Loop) -> dict[str, Any]:
    return {
        "warmup_steps": sum(1 for s in loop.samples if s.warmup),
        "step_time_s": [s.step_time_s for s in loop.samples],
        "data_wait_s": [s.data_wait_s for s in loop.samples],
        "host_s": [s.host_s for s in loop.samples],
        "device_wait_s": [s.device_wait_s for s in loop.samples],
        "loss": [s.loss for s in loop.samples],
        "grad_norm": loop.grad_norms,
        "lr": [s.lr for s in loop.samples],  # the learning rate each step applied (None: not reported)
        "lr_in_warmup": [s.lr_in_warmup for s in loop.samples],
    }


def run_benchmark(config: Mapping[str, Any], backend: Backend, workload: Workload, probes: Sequence[Probe],
                  env: Mapping[str, Any], *, warnings: Sequence[str] = (),
                  progress: ProgressFn | None = None, artifacts_dir: str | None = None,
                  hooks: RunHooks | None = None) -> dict[str, Any]:
    """Measure one config; always returns a record (status says how it went).

    ``UserError`` and ``KeyboardInterrupt`` propagate; resources are released.  ``hooks``: see
    :class:`RunHooks` (a rank of a data-parallel job).
    """
    record = new_record(config, env, warnings)
    t0 = time.perf_counter()
    prepared = None
    loop: _Loop | None = None
    ctx: RunContext | None = None
    stop_reason = None
    try:
        prepared = workload.prepare(config, backend)
        if hooks is not None:
            hooks.prepared(prepared)
        record["params"] = prepared.params()
        ctx = RunContext(config=config, backend=backend, workload=prepared, env=env, artifacts_dir=artifacts_dir)
        failed: dict[str, dict[str, Any]] = {}
        for probe in probes:
            try:
                probe.start(ctx)
            except PLUGIN_FAILURES as exc:
                failed[probe.name] = _failure(exc)
        loop = _Loop(ctx, probes, progress, hooks)
        loop.failed.update(failed)
        stop_reason = loop.run(config["bench"])
        if hooks is not None:
            record["metrics"] = _metrics(loop, int(config["data"]["batch_size"]), stop_reason)
            hooks.after_loop(ctx, record)
        record["status"] = "ok"
    except (UserError, KeyboardInterrupt):
        raise
    except Diverged as exc:
        record["status"], record["error"] = "diverged", str(exc)
    except PLUGIN_FAILURES as exc:  # every failure becomes a status (a plugin's sys.exit too)
        record["status"] = "oom" if backend.is_oom(exc) else "error"
        record["error"] = error_line(exc)
    finally:
        try:
            if loop is not None:
                if not record["metrics"]:  # (a rank's hooks took them before its comparison phase)
                    record["metrics"] = _metrics(loop, int(config["data"]["batch_size"]), stop_reason)
                record["series"] = _series(loop)
                if record["status"] == "ok":  # after the metrics: the extra steps are in no figure
                    extra = loop.extra()
                    if extra is not None:
                        record["metrics"]["extra_steps"] = extra
        finally:
            if prepared is not None:
                prepared.close()
    if ctx is not None:
        failed = loop.failed if loop is not None else {}
        for probe in probes:
            if probe.name in failed:
                record["probes"][probe.name] = failed[probe.name]
                continue
            try:
                entry = probe.finish(ctx, record)
            except PLUGIN_FAILURES as exc:  # a broken probe must not lose the measurement
                entry = _failure(exc)
            if entry is not None:
                record["probes"][probe.name] = _entry(probe, entry)
    record["duration_s"] = time.perf_counter() - t0
    return record
