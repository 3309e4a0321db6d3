"""Where the measured step time goes, and what limits it: data, host or device.

Pure functions: plain numbers in, JSON-safe dicts out (no torch, no files).

Shares are fractions of the measured (post-warm-up) wall time:

* ``data_wait``: blocked in ``next(batches)`` (the runner's ``data_wait_frac``);
* ``host``: host work inside ``step()`` that is not device compute, split into the
  workload's named phases (``host_phases_s`` medians, split in proportion, so the
  phases add up to the host share) plus ``other`` (unattributed);
* ``device``: the rest.

How ``forward_backward`` counts depends on the backend:

* ``cpu``: the device IS the CPU and torch runs synchronously, so the time of
  ``forward_backward`` is the compute itself and counts as ``device``; so does any
  part of ``step()`` the workload does not name (a custom workload without
  phases is all compute).  ``inputs_masks`` (input copy + mask generation),
  ``optimizer`` and ``ema`` stay host phases.
* accelerators (``cuda``, ``mps``): the host only dispatches kernels, so the whole
  host time of ``step()`` (``forward_backward`` = dispatch, masks, optimizer and
  EMA launches) is ``host``; ``device`` is the remainder, the time the host sat
  waiting for the device (window-end syncs, a full launch queue, and
  ``device_wait_frac``).  A step that syncs inside its host work (the reference
  masks read back per sample) would absorb the previous step's queued device
  work into that phase and read host-bound; the runner therefore synchronizes
  right before such a step (``PreparedWorkload.syncs_in_step``) and that wait,
  ``device_wait_frac``, is outside ``host_frac``: device time.  The masks' own
  read-backs then wait only for the mask kernels, which are host work.

Verdict (first rule that holds; :func:`judge_bottleneck`, which a report calls again
with its own ``data_bound_share``):

1. ``data-bound``: data wait share > ``DATA_BOUND_SHARE`` (10%, :func:`is_data_bound`).  torch-tb-profiler
   advises "DataLoader > 5% of step -> raise num_workers" (docs/measuring.md); we keep
   5% as ``data_wait_notable`` but call the run data-bound only above 10%: taking
   a prefetched batch from a worker still costs ~0.1-1 ms (unpickling), a few %
   of a fast accelerator step, and removing a 10% wait is a >= 11% speed-up,
   worth a config change.
2. ``host-bound``: host share >= device share (``HOST_BOUND_RATIO`` = 1): the host
   cannot keep the device busy for at least half of the non-data time.
3. ``device-bound``: otherwise.

A run that measured only its data wait (a validation run: the step time there
includes the device sync, so host and device cannot be told apart) is
``data-bound`` by rule 1 or else ``not data-bound``.

Worker advice (the H-JEPA validation guide's "Number of Workers" and "If Training
Slows Down"; docs/verdicts.md), first rule that holds:

1. data-bound with no more workers than cores -> "increase num_workers to 6-8"
   (the data wait is the measured fact; when the benchmark's own processes
   already fill the cores the advice says so, since more workers then compete
   with the step; below 10 cores the cap is cores - 1, and a run already at it
   is told to keep its count and compare counts side by side);
2. the CPU saturated *by the benchmark's own process tree* (the main process and
   its children, the DataLoader workers: their CPU time over the wall time, as a
   share of all cores, > ``CPU_SATURATED_PCT`` = 90%) with more than 2 workers
   -> "decrease num_workers to 2";
3. more workers than cores -> "use at most <cores>" (the run warns about the same
   fact), whatever the verdict: a run that already has too many is never told
   to keep them or to add more;
4. saturated with 2 or fewer -> "keep num_workers at most 2"; else keep.

System-wide load (``psutil.cpu_percent``, every process on the machine) is kept
as context only ("other processes used X% of the CPU"): another job's load says
nothing about this run's worker count.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from ..format import finite
from ..thresholds import DEFAULTS as _TH  # the one place thresholds live

DATA_BOUND_SHARE = _TH.data_bound_share
TB_PROFILER_DATALOADER_SHARE = 0.05  # torch-tb-profiler's "raise num_workers" trigger
HOST_BOUND_RATIO = 1.0  # host-bound when host share >= ratio * device share
CPU_SATURATED_PCT = 90.0
WORKERS_UP = "6-8"  # validation guide: "Increase to 6-8 (M1 Max has 10 cores)"
WORKERS_DOWN = 2  # validation guide: "Decrease to 2 if CPU bound"
COMPUTE_PHASES_ON_CPU = frozenset({"forward_backward"})
ACCELERATORS = frozenset({"cuda", "mps", "xpu", "hip"})

THRESHOLDS: dict[str, Any] = {
    "data_bound_share": DATA_BOUND_SHARE,
    "tb_profiler_dataloader_share": TB_PROFILER_DATALOADER_SHARE,
    "host_bound_ratio": HOST_BOUND_RATIO,
    "cpu_saturated_pct": CPU_SATURATED_PCT,
}


_num = finite


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def step_shares(data_wait_frac: float | None, host_frac: float | None,
                host_phases_s: Mapping[str, float] | None, backend: str, *,
                host_wait_frac: float | None = None, data_wait_overlap_frac: float | None = None,
                host_phase_waits_s: Mapping[str, float] | None = None) -> dict[str, Any] | None:
    """Split the measured time into data wait, named host phases and device.

    ``host_frac`` is the share of time from batch-in-hand to ``step()`` returning;
    it is split over ``host_phases_s`` (per-phase medians, seconds) in proportion.
    Returns None when the run measured no time; ``host`` and ``device`` are None when
    only the data wait was measured (``host_frac`` None).

    With a device timeline (an asynchronous device with events at the phase boundaries:
    :func:`device_lag_split`), ``host_wait_frac`` of the host time and ``data_wait_overlap_frac``
    of the data wait passed while the device was still busy with queued work: they count as
    device time, and each phase keeps only its own host time (``host_phase_waits_s`` subtracted).
    A device-bound run whose host blocks on a full launch queue then reads device-bound.
    """
    data = _num(data_wait_frac)
    step_host = _num(host_frac)
    if data is None:
        return None
    data = _clip01(data)
    waited, overlap = _num(host_wait_frac), _num(data_wait_overlap_frac)
    timeline = waited is not None and step_host is not None and backend in ACCELERATORS
    if timeline and waited is not None and step_host is not None:  # (repeated: mypy narrows on these)
        data = max(0.0, data - _clip01(overlap or 0.0))
        step_host = max(0.0, step_host - waited)
        waits = host_phase_waits_s or {}
        host_phases_s = {k: max(0.0, (_num(v) or 0.0) - (_num(waits.get(k)) or 0.0))
                         for k, v in (host_phases_s or {}).items()}
    if step_host is None:  # only the data wait was measured (a validation run)
        return {"data_wait": float(data), "host": None, "host_phases": {}, "device": None,
                "treatment": "data wait only: the host/device split of the step was not measured"}
    step_host = _clip01(min(step_host, 1.0 - data))
    phases = {k: max(0.0, v) for k, v in ((k, _num(v)) for k, v in (host_phases_s or {}).items()) if v is not None}
    total_phase = sum(phases.values())
    split = {k: step_host * v / total_phase for k, v in phases.items()} if total_phase > 0 else {}
    other = step_host - sum(split.values()) if split else step_host
    on_cpu = backend not in ACCELERATORS
    if on_cpu:
        # the CPU computes forward/backward (and unnamed step work) synchronously
        host_phases = {k: v for k, v in split.items() if k not in COMPUTE_PHASES_ON_CPU}
        compute = sum(v for k, v in split.items() if k in COMPUTE_PHASES_ON_CPU) + max(0.0, other)
        host = sum(host_phases.values())
        device = max(0.0, 1.0 - data - step_host) + compute
        treatment = ("cpu: the device is the CPU; forward_backward and unnamed step work are device compute, "
                     "inputs_masks/optimizer/ema are host phases")
    else:
        host_phases = dict(split)
        if other > 1e-12 or not split:
            host_phases["other"] = max(0.0, other)
        host = step_host
        device = max(0.0, 1.0 - data - step_host)
        treatment = (f"{backend}: asynchronous device; all host time in step() (forward_backward = kernel "
                     "dispatch) is host, device is the time the host waited for the device (including the "
                     "sync before a step that reads back from the device: device_wait_frac)")
        if timeline:
            treatment = (f"{backend}: asynchronous device, timed by device events at the phase boundaries; host is "
                         "the host's own time in step() (the device had caught up and waited for it), device is "
                         "the rest: host time while the device was still busy with queued work (a full launch "
                         "queue, .item(), a pageable copy: host_wait_share), the data wait it overlapped "
                         "(data_wait_overlap_share) and the syncs")
    return {
        "data_wait": float(data),
        "host": float(host),
        "host_phases": {k: float(v) for k, v in sorted(host_phases.items())},
        "device": float(device),
        "treatment": treatment,
    }


def device_lag_split(marks: Sequence[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Host and device time per phase of one step, from its phase boundaries on one clock.

    ``marks``: (the phase that ends at the boundary, "" for the opening one; host time the host passed
    it; device time the device passed it, i.e. its event on the stream).  The device passes a boundary
    no earlier than the host queued it; the difference is the device's lag, its backlog of queued work.
    Per phase: ``host_s`` (host time), ``device_s`` (device time between its boundaries) and ``wait_s``,
    the part of the host time during which the device was provably still busy with work queued before
    the phase began: ``min(host_s, lag at the phase start)``.  In that time the host either waited for
    the device (a full launch queue, ``.item()``, a copy from pageable memory) or worked alongside it;
    either way the device, not the host, set the pace, so it is device time.  The rest of the host
    time is the host's own (the device had caught up and waited for it).  A lower bound on the device's
    share: when the device falls behind inside a phase, only the next phase counts its backlog."""
    out: dict[str, dict[str, float]] = {}
    for (_, h0, d0), (name, h1, d1) in itertools.pairwise(marks):
        host = max(0.0, h1 - h0)
        lag = max(0.0, d0 - h0)
        row = out.setdefault(name, {"host_s": 0.0, "device_s": 0.0, "wait_s": 0.0})
        row["host_s"] += host
        row["device_s"] += max(0.0, d1 - d0)
        row["wait_s"] += min(host, lag)
    return out


def serialized_verdict(host_own_s: float | None, serialized_step_s: float | None) -> tuple[str | None, dict[str, Any]]:
    """The host/device verdict from a run with the host and the device serialized (``CUDA_LAUNCH_BLOCKING=1``:
    every launch returns when its kernel has finished, so a step takes the host's own time plus the device's
    busy time), given the host's own time per step measured in the normal run (its host share x its median
    step).  Device busy = serialized step - host own; host-bound when host own >= device busy.

    A cross-check of the normal run's verdict: the device timeline counts only provable device time (a lower
    bound), so a host-bound verdict that missed host waits shows here as a device busy time above the host's."""
    host, serial = _num(host_own_s), _num(serialized_step_s)
    if host is None or serial is None or serial <= 0:
        return None, {"rule": "no serialized step time or host time: no verdict"}
    device = max(0.0, serial - host)
    evidence: dict[str, Any] = {"serialized_step_s": serial, "host_own_s": host, "device_busy_s": device}
    if host >= HOST_BOUND_RATIO * device:
        evidence["rule"] = (f"host own {host * 1e3:.2f} ms >= device busy {device * 1e3:.2f} ms "
                            "(serialized step - host own)")
        return "host-bound", evidence
    evidence["rule"] = f"device busy {device * 1e3:.2f} ms (serialized step - host own) > host own {host * 1e3:.2f} ms"
    return "device-bound", evidence


def cpu_summary(per_core_samples: Sequence[Sequence[float]], fallback_per_core: Sequence[float] | None = None
                ) -> dict[str, Any]:
    """System-wide load (every process on the machine): mean utilisation per core over samples
    (each a list of per-core %) and the mean over all cores."""
    rows = [list(map(float, s)) for s in per_core_samples if s]
    if rows:
        width = min(len(r) for r in rows)
        per_core = [sum(r[i] for r in rows) / len(rows) for i in range(width)]
        source = f"psutil.cpu_percent(percpu=True) sampled {len(rows)} times in a background thread"
    elif fallback_per_core:
        per_core = [float(x) for x in fallback_per_core]
        source = "psutil.cpu_times(percpu=True) delta over the run (run shorter than one sample interval)"
    else:
        return {"cpu_util_per_core_pct": None, "cpu_util_mean_pct": None,
                "cpu_samples": 0, "cpu_source": "no CPU samples"}
    mean = sum(per_core) / len(per_core) if per_core else None
    return {
        "cpu_util_per_core_pct": [round(x, 1) for x in per_core],
        "cpu_util_mean_pct": None if mean is None else round(mean, 1),
        "cpu_samples": len(rows),
        "cpu_source": source,
    }


def own_cpu(process_cpu: Mapping[str, Any] | None, cores: int, system_mean_pct: float | None) -> dict[str, Any]:
    """The benchmark's own CPU load: its process tree's CPU time over the wall time
    (``process_tree_cpu_pct``, 100 = one core busy) as a share of all ``cores``; whether that
    saturates the CPU (> ``CPU_SATURATED_PCT``); and what the rest of the machine used on top
    (system-wide mean minus our share; context only)."""
    tree = _num((process_cpu or {}).get("process_tree_cpu_pct"))
    if tree is None:
        return {"own_cpu_pct_of_cores": None, "other_cpu_pct_of_cores": None, "cpu_saturated": None}
    own = _clip01(tree / (100.0 * max(1, int(cores)))) * 100.0
    system = _num(system_mean_pct)
    other = None if system is None else max(0.0, system - own)
    return {"own_cpu_pct_of_cores": round(own, 1), "other_cpu_pct_of_cores": None if other is None else round(other, 1),
            "cpu_saturated": bool(own > CPU_SATURATED_PCT)}


def worker_advice(verdict: str | None, cpu_saturated: bool | None, workers: int, cores: int,
                  own_pct: float | None = None, other_pct: float | None = None) -> str:
    """The validation guide's num_workers advice for this verdict and the benchmark's own CPU load
    (``cpu_saturated``, ``own_pct``: its process tree; ``other_pct``: the rest of the machine, context)."""
    own = "" if own_pct is None else f"{own_pct:.0f}% of the {cores} cores"
    other = (f"; other processes used {other_pct:.0f}% of the CPU on top"
             if other_pct is not None and other_pct >= 1 else "")
    if verdict == "data-bound" and workers <= cores:
        if cpu_saturated:
            room = (f"data wait dominates, but the benchmark's own processes already use {own}, so extra workers "
                    f"compete with the step: compare worker counts side by side (sweep --workers)")
        else:
            room = "data wait dominates" + (" (the benchmark's own CPU load was not measured)" if cpu_saturated is None
                                            else f" and the benchmark's own processes use {own}")
        if cores >= 10:
            return f"increase num_workers to {WORKERS_UP}: {room}{other}"
        if workers >= max(1, cores - 1):  # already at the room this machine has
            return (f"keep num_workers at {workers}: data wait dominates, but {workers} workers already fill the "
                    f"{cores} cores' room (one core is the step's); more would compete with the step: compare "
                    f"worker counts side by side (sweep --workers){other}")
        return (f"increase num_workers to {WORKERS_UP} (the guide's figure for a 10-core M1 Max; with {cores} "
                f"cores use at most {max(1, cores - 1)}): {room}{other}")
    if cpu_saturated and cores >= WORKERS_DOWN < workers:
        return (f"decrease num_workers to {WORKERS_DOWN}: the benchmark's own processes saturate the CPU ({own}, "
                f"> {CPU_SATURATED_PCT:.0f}%) and {workers} workers compete with the step{other}")
    if workers > cores:  # the same fact the run warns about: more workers than cores
        why = ("data wait dominates, but workers beyond the cores only compete with the step"
               if verdict == "data-bound" else "data loading is not the bottleneck")
        return (f"use at most {cores} num_workers: {workers} workers on {cores} CPU cores compete with the step "
                f"({why}){other}")
    if cpu_saturated:
        return (f"the benchmark's own processes saturate the CPU ({own}, > {CPU_SATURATED_PCT:.0f}%) with {workers} "
                f"workers; keep num_workers at most {WORKERS_DOWN}{other}")
    return f"keep num_workers at {workers}: data loading is not the bottleneck{other}"


def is_data_bound(data_wait_frac: float | None, data_bound_share: float = DATA_BOUND_SHARE) -> bool | None:
    """Data-bound: the step waits for the DataLoader more than ``data_bound_share`` of the time
    (None: the data wait was not measured).  Every data-bound judgement uses this rule."""
    data = _num(data_wait_frac)
    return None if data is None else bool(data > data_bound_share)


def bottleneck_verdict(shares: Mapping[str, Any] | None,
                       data_bound_share: float = DATA_BOUND_SHARE) -> tuple[str | None, dict[str, Any]]:
    """(verdict, evidence) from :func:`step_shares` output; "not data-bound" when only the data
    wait was measured and it is below the limit."""
    shares = shares or {}
    data = _num(shares.get("data_wait"))
    if data is None:
        return None, {"rule": "no measured steps: no verdict"}
    host, device = _num(shares.get("host")), _num(shares.get("device"))
    phases = {k: v for k, v in ((k, _num(v)) for k, v in (shares.get("host_phases") or {}).items()) if v is not None}
    top = max(phases.items(), key=lambda kv: kv[1]) if phases else None
    evidence: dict[str, Any] = {"data_wait_share": data, "host_share": host, "device_share": device,
                                "data_wait_notable": bool(data > TB_PROFILER_DATALOADER_SHARE)}
    if top is not None:
        evidence["largest_host_phase"] = {"name": top[0], "share": top[1]}
    if is_data_bound(data, data_bound_share):
        evidence["rule"] = f"data wait share {data:.1%} > {data_bound_share:.0%}"
        return "data-bound", evidence
    if host is None or device is None:
        evidence["rule"] = (f"data wait share {data:.1%} <= {data_bound_share:.0%}; the host/device split was not "
                            "measured")
        return "not data-bound", evidence
    if host >= HOST_BOUND_RATIO * device:
        evidence["rule"] = (f"data wait share {data:.1%} <= {data_bound_share:.0%} and host share {host:.1%} "
                            f">= device share {device:.1%}")
        return "host-bound", evidence
    evidence["rule"] = (f"data wait share {data:.1%} <= {data_bound_share:.0%} and device share {device:.1%} "
                        f"> host share {host:.1%}")
    return "device-bound", evidence


def judge_bottleneck(entry: dict[str, Any], data_bound_share: float = DATA_BOUND_SHARE) -> dict[str, Any]:
    """The verdict, its evidence and the worker advice of a bottleneck entry (its ``shares``,
    CPU load, workers and cores) against ``data_bound_share`` (in place, and returned).  The
    probe calls it with the default; a report calls it again with its own threshold."""
    verdict, evidence = bottleneck_verdict(entry.get("shares"), data_bound_share)
    if _num(entry.get("device_wait_frac")) is not None:
        evidence["device_wait_share"] = float(entry["device_wait_frac"])  # inside the device share
    for key, name in (("host_wait_frac", "host_wait_share"), ("data_wait_overlap_frac", "data_wait_overlap_share")):
        if _num(entry.get(key)) is not None:
            evidence[name] = float(entry[key])  # inside the device share
    for key in ("cpu_util_mean_pct", "own_cpu_pct_of_cores"):
        if entry.get(key) is not None:
            evidence[key] = entry[key]
    entry["verdict"] = verdict
    entry["evidence"] = evidence
    entry["worker_advice"] = worker_advice(verdict, entry.get("cpu_saturated"), int(entry.get("workers") or 0),
                                           int(entry.get("cores") or 1), entry.get("own_cpu_pct_of_cores"),
                                           entry.get("other_cpu_pct_of_cores"))
    entry["thresholds"] = {**(entry.get("thresholds") or THRESHOLDS), "data_bound_share": data_bound_share}
    return entry


def metrics_shares(metrics: Mapping[str, Any], backend: str) -> dict[str, Any] | None:
    """:func:`step_shares` of a record's metrics: the one split the bottleneck probe and a run's summary
    both show."""
    return step_shares(metrics.get("data_wait_frac"), metrics.get("host_frac"),
                       metrics.get("host_phases_s"), backend, host_wait_frac=metrics.get("host_wait_frac"),
                       data_wait_overlap_frac=metrics.get("data_wait_overlap_frac"),
                       host_phase_waits_s=metrics.get("host_phase_waits_s"))


def analyze_bottleneck(metrics: Mapping[str, Any], backend: str, workers: int, cores: int,
                       cpu_samples: Sequence[Sequence[float]] = (),
                       cpu_fallback_per_core: Sequence[float] | None = None,
                       process_cpu: Mapping[str, Any] | None = None,
                       data_bound_share: float = DATA_BOUND_SHARE) -> dict[str, Any]:
    """The bottleneck entry from a record's metrics and CPU samples (verdict: :func:`judge_bottleneck`)."""
    shares = metrics_shares(metrics, backend)
    cpu = cpu_summary(cpu_samples, cpu_fallback_per_core)
    own = own_cpu(process_cpu, int(cores), cpu["cpu_util_mean_pct"])
    entry: dict[str, Any] = {
        "backend": backend,
        "shares": None if shares is None else {k: v for k, v in shares.items() if k != "treatment"},
        "share_treatment": None if shares is None else shares["treatment"],
        **cpu,
        **own,
        "cpu_saturated_basis": ("the benchmark's process tree (main process + DataLoader workers): CPU time / wall "
                                "time as a share of all cores; system-wide load (cpu_util_*) is context only"),
        "cores": int(cores),
        "workers": int(workers),
        "thresholds": dict(THRESHOLDS),
    }
    if _num(metrics.get("device_wait_frac")) is not None:
        entry["device_wait_frac"] = float(metrics["device_wait_frac"])
    if _num(metrics.get("host_wait_frac")) is not None:  # the device timeline (asynchronous device)
        entry["host_wait_frac"] = float(metrics["host_wait_frac"])
        entry["data_wait_overlap_frac"] = _num(metrics.get("data_wait_overlap_frac"))
        entry["device_phases_s"] = dict(metrics.get("device_phases_s") or {})
    if process_cpu:
        entry["process_cpu"] = dict(process_cpu)
    return judge_bottleneck(entry, data_bound_share)


def cpu_times_util(before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]]) -> list[float]:
    """Per-core utilisation % between two ``psutil.cpu_times(percpu=True)`` snapshots
    (each core as a field -> seconds mapping): busy = total - idle - iowait."""
    out = []
    for b, a in zip(before, after):
        total = sum(a.values()) - sum(b.values())
        idle = sum(a.get(k, 0.0) - b.get(k, 0.0) for k in ("idle", "iowait"))
        out.append(0.0 if total <= 0 else _clip01((total - idle) / total) * 100.0)
    return out
