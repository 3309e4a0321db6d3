"""Probe ``flops`` (cheap): FLOPs per step, a matmul peak measured in the same run, and MFU.

Entry ``record["probes"]["flops"]``:

* ``flops_per_step`` / ``flops_per_sample`` / ``flops_by_module``: from
  :func:`hjepa_bench.hjepa.inspection.count_step_flops` for the run's config, variant
  and batch size (torch.utils.flop_counter on the meta device, forward +
  backward, attention included when ``attention_counted``).  Only the built-in
  ``hjepa`` workload can be counted; any other gives ``measured: false`` and a reason.
* ``peak_by_precision``: a matmul micro-benchmark on this device per precision
  (fp32 always, plus the run's precision when it is fp16/bf16, run in that dtype):

  1. a warm-up matmul at n=256 (library init and first-call costs);
  2. calibration: time one square matmul (best of 2, synced) with two kernels,
     ``torch.mm(out=)`` and ``F.linear`` (what nn.Linear runs; on CPU in
     bf16/fp16 only it takes the fast oneDNN path), and grow n x2
     (256 ... 4096) while the next size's predicted time (x8) is <= 50 ms, so a
     fast GPU reaches 4096 and a slow dtype (bf16 on a CPU without native
     support) stays small;
  3. with the faster kernel at the chosen n: reps of ``k`` matmuls between two
     device syncs, ``k`` chosen so a rep lasts ~20 ms, repeated until ~0.5 s per
     precision (calibration included; at least 1, at most 50 reps);
  4. peak = the best rep (``median_flops_per_s`` is reported beside it).
* ``peak_flops_per_s``: the peak of the run's precision; ``achieved_flops_per_s``
  = flops_per_step / median step time; ``mfu`` = achieved / peak.

The peak is measured on this device in this dtype in this run, not a datasheet
number; it runs in ``finish`` (after the timed loop, DataLoader closed).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from hjepa_bench.analysis.flops import (
    MATMUL_SIZES,
    matmul_flops,
    matmuls_per_rep,
    mfu_summary,
    next_matmul_size,
    peak_summary,
    per_sample,
)
from hjepa_bench.config import resolve_precision
from hjepa_bench.format import fmt_flops
from hjepa_bench.plugin.api import Backend, Probe, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import device_name, lookup, model_short
from hjepa_bench.report.sections import ProbeTable
from hjepa_bench.status import NOT_MEASURED

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: seconds of micro-benchmark per precision (calibration included)
BUDGET_S = 0.5
#: the calibration grows n while one matmul of the next size is predicted to take at most this
SINGLE_TARGET_S = 0.05
#: one timed rep (k matmuls between two syncs) lasts about this
REP_TARGET_S = 0.02
MAX_REPS = 50

PEAK_NOTE = ("peak = best FLOP/s of a square matmul micro-benchmark on this device in this dtype, "
             "measured in this run before and after the timed steps, the better of the two for the "
             "run's precision (not a datasheet number)")
FLOPS_NOTE = ("torch.utils.flop_counter on the meta device: matmul, conv and attention, 2 FLOPs per "
              "multiply-add, forward + backward + target forward; efficient-variant padding from one "
              "batch of masks of the real sampler")


def measure_matmul_peak(backend: Backend, dtype: torch.dtype, budget_s: float = BUDGET_S,
                        single_target_s: float = SINGLE_TARGET_S, rep_target_s: float = REP_TARGET_S,
                        max_reps: int = MAX_REPS) -> dict[str, Any]:
    """Best FLOP/s of a square matmul in ``dtype`` on ``backend``'s device (see module doc).

    Two kernels are tried at each calibration size, ``torch.mm(a, b, out=c)`` and
    ``F.linear(a, b)`` (what ``nn.Linear`` runs; on CPU in bf16/fp16 it takes the
    oneDNN path, ~10x faster than ``mm``); a kernel over 2x slower than the other
    is dropped before the next size, and the timed reps use the faster one.
    """
    device, sync = backend.device(), backend.synchronize
    t_start = time.perf_counter()

    def tensors(n: int):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        return a, b, torch.empty(n, n, device=device, dtype=dtype)

    def kernels(a, b, c):
        return {"mm": lambda: torch.mm(a, b, out=c), "linear": lambda: F.linear(a, b)}

    def timed(fn, k: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        sync()
        return time.perf_counter() - t0

    n = MATMUL_SIZES[0]
    ops = kernels(*tensors(n))
    for fn in ops.values():
        timed(fn, 1)  # warm-up: library init, first-call costs
    calibration: dict[str, dict[str, float]] = {}
    while True:
        calibration[str(n)] = {name: min(timed(fn, 1) for _ in range(2)) for name, fn in ops.items()}
        one = min(calibration[str(n)].values())
        nxt = next_matmul_size(n, one, single_target_s)
        if nxt is None or time.perf_counter() - t_start > 0.5 * budget_s:
            break
        n = nxt
        keep = [k for k, t in calibration[str(n // 2)].items() if t <= 2 * one]  # drop a clearly slower kernel
        ops = {k: fn for k, fn in kernels(*tensors(n)).items() if k in keep}
        for fn in ops.values():
            timed(fn, 1)  # warm-up at the new size
    kernel = min(calibration[str(n)], key=calibration[str(n)].__getitem__)
    ops = {kernel: ops[kernel]}
    per_rep = matmuls_per_rep(calibration[str(n)][kernel], rep_target_s)
    fn = ops[kernel]
    times: list[float] = []
    while not times or (time.perf_counter() - t_start < budget_s and len(times) < max_reps):
        times.append(timed(fn, per_rep))
    del ops, fn
    return {
        **peak_summary(n, per_rep, times),
        "dtype": str(dtype).replace("torch.", ""),
        "kernel": kernel,
        "flops_per_matmul": matmul_flops(n),
        "calibration_one_matmul_s": calibration,
        "time_s": time.perf_counter() - t_start,
    }


def _median_step_s(record: Mapping[str, Any]) -> float | None:
    st = (record.get("metrics") or {}).get("step_time_s") or {}
    return st.get("median") if isinstance(st, Mapping) else None


class FlopsProbe(Probe):
    name = "flops"
    headline = ("flops_per_step", "achieved_flops_per_s", "peak_flops_per_s", "mfu")
    cost = "cheap"
    description = ("FLOPs per step (flop_counter, hjepa workload), the device's matmul peak measured in the "
                   "run (fp32 + the run's precision) and MFU = achieved / peak")

    def start(self, ctx: RunContext) -> None:
        # A first peak measurement before warm-up; finish measures again and the
        # better of the two is the peak, so a busy moment of a shared machine
        # during one measurement does not inflate MFU.
        self._early: dict[str, Any] = {}
        if ctx.config["bench"].get("workload") != "hjepa":
            return
        precision = resolve_precision(ctx.config, ctx.backend.name)
        if precision in DTYPES:
            try:
                self._early[precision] = measure_matmul_peak(ctx.backend, DTYPES[precision])
            except Exception:
                pass

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        from hjepa_bench.hjepa.inspection import attention_is_counted, count_step_flops

        t0 = time.perf_counter()
        bench = ctx.config["bench"]
        workload = bench.get("workload")
        if workload != "hjepa":
            return {"measured": False,
                    "reason": f"FLOPs are counted only for the built-in hjepa workload (this run: {workload!r}); "
                              "count a workload's own FLOPs with torch.utils.flop_counter.FlopCounterMode"}
        variant = bench["variant"]
        precision = resolve_precision(ctx.config, ctx.backend.name)
        batch = int(ctx.config["data"]["batch_size"])
        counted = count_step_flops(ctx.config, variant, batch)
        total = int(counted["total"])

        peaks: dict[str, Any] = {}
        for p in dict.fromkeys(["fp32", precision]):
            if p not in DTYPES:
                continue
            try:
                peaks[p] = measure_matmul_peak(ctx.backend, DTYPES[p])
            except Exception as exc:
                peaks[p] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
        early = getattr(self, "_early", {}).get(precision)
        if early and early.get("flops_per_s") and (peaks.get(precision) or {}).get("flops_per_s") is not None:
            late = peaks[precision]
            best = early if early["flops_per_s"] > late["flops_per_s"] else late
            peaks[precision] = {**best, "before_run_flops_per_s": early["flops_per_s"],
                                "after_run_flops_per_s": late["flops_per_s"],
                                "taken_from": "before the run" if best is early else "after the run"}
        peak = (peaks.get(precision) or {}).get("flops_per_s")
        median = _median_step_s(record)
        summary = mfu_summary(total, median, peak)
        return {
            "measured": True,
            "variant": variant,
            "precision": precision,
            "batch_size": batch,
            "flops_per_step": total,
            "flops_per_sample": per_sample(total, batch),
            "flops_by_module": counted["by_module"],
            "attention_counted": bool(attention_is_counted()),
            "flops_method": FLOPS_NOTE,
            "median_step_s": median,
            "achieved_flops_per_s": summary["achieved_flops_per_s"],
            "peak_flops_per_s": peak,
            "peak_precision": precision,
            "mfu": summary["mfu"],
            "peak_by_precision": peaks,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "peak_note": PEAK_NOTE,
            "probe_time_s": time.perf_counter() - t0,
        }

    def summarize(self, entry):
        if not entry.get("measured") or entry.get("flops_per_step") is None:
            return None
        mfu = entry.get("mfu")
        peak = entry.get("peak_flops_per_s")
        achieved = entry.get("achieved_flops_per_s")
        return (f"{entry['flops_per_step'] / 1e9:.1f} GFLOP/step, achieved "
                f"{'n/a' if achieved is None else f'{achieved / 1e9:.1f}'} GFLOP/s, measured peak "
                f"{'n/a' if peak is None else f'{peak / 1e9:.0f}'} GFLOP/s"
                + (f" ({entry['peak_precision']})" if entry.get("peak_precision") else "") + ", "
                f"MFU {'n/a' if mfu is None else f'{mfu:.0%}'}")


class FlopsSection(ProbeTable):
    name = "flops"
    title = "FLOPs and utilisation (MFU)"
    order = 40
    failed, fill = "note", ""
    note = ("FLOPs: " + FLOPS_NOTE + ". Achieved = FLOPs per step / median step time. MFU = achieved / peak, "
            + PEAK_NOTE + ".")

    def label(self, r: Mapping[str, Any]) -> dict[str, Any]:
        b = lookup(r, "config", "bench") or {}
        return {"device": device_name(r), "model": model_short(r), "variant": b.get("variant"),
                "precision": b.get("precision"), "batch": lookup(r, "config", "data", "batch_size")}

    def row(self, e: Mapping[str, Any]) -> dict[str, Any]:
        if not e.get("measured"):
            return {"note": e.get("reason", NOT_MEASURED)}
        mfu = e.get("mfu")
        return {
            "FLOP/step": fmt_flops(e.get("flops_per_step")),
            "FLOP/sample": fmt_flops(e.get("flops_per_sample")),
            "achieved": fmt_flops(e.get("achieved_flops_per_s"), per_s=True),
            "peak (matmul)": fmt_flops(e.get("peak_flops_per_s"), per_s=True),
            "MFU %": "n/a" if mfu is None else f"{mfu * 100:.1f}",
            "attention counted": e.get("attention_counted"),
            "note": "",
        }


@hookimpl
def hjepa_bench_register_probes(register):
    register(FlopsProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(FlopsSection())
