"""Probe ``svd`` (costly): where ``torch.linalg.svd`` runs, and what it costs.

Rank metrics need the SVD of an embedding matrix.  On MPS ``torch.linalg.svd``
falls back to the CPU (a UserWarning, with ``PYTORCH_ENABLE_MPS_FALLBACK=1``),
raises NotImplementedError, or fails (torch 2.14: ``RuntimeError: Failed to created
pipeline state object`` above 8,192 elements), depending on the torch version, the
size and the dtype, and MPS has no float64 (docs/measuring.md, "Operations that fall back to the
CPU on MPS").  So, after the timed loop (in ``finish``), this probe times
``torch.linalg.svd(A, full_matrices=False)`` on a seeded random matrix of
``bench.svd_rows`` (default 25,600) rows by the model's embedding width D:

* on the run's device and on the CPU, in float32 and float64 where the device
  has the dtype (else ``unsupported`` with the reason);
* one warm-up call, then the median of ``REPEATS`` calls, each with a device sync
  inside the timing;
* on the device path warnings are captured (``torch.set_warn_always`` so a
  once-per-process fallback warning is seen again) and the path classified by
  :func:`classify_svd_path`: "device", "cpu-fallback", "not-implemented" (or
  "cpu" for the CPU path).

``feature_eval_cost_s`` is what one feature-quality evaluation costs:
``cpu_float64`` is :func:`hjepa_bench.analysis.features.feature_quality` timed
once on the (rows x D) float64 matrix on the CPU (two SVDs, std, cosine,
uniformity: what the ``features`` probe runs); ``device_svd_estimate`` (only when
the device is not the CPU) is the upload of the float32 matrix plus two device
float32 SVDs (uncentred, centred) and leaves the other metrics out.

On a CPU run the device is the CPU: the CPU path is timed once.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from hjepa_bench.analysis.features import feature_quality
from hjepa_bench.format import fmt_ms
from hjepa_bench.plugin.api import Probe, ReportSection, RunContext
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import device_name, probe
from hjepa_bench.record_model import MISSING, ProbeEntry
from hjepa_bench.stats import median

#: rows of the timed matrix (25,600: e.g. 800 steps x batch 32 of embeddings)
DEFAULT_ROWS = 25_600
#: timed calls after the warm-up call; the median is reported
REPEATS = 3
#: seed of the random matrix
SEED = 0
DTYPES = {"float32": torch.float32, "float64": torch.float64}
PATHS = ("device", "cpu-fallback", "not-implemented", "cpu", "error")
FEATURE_COST_NOTE = (
    "cpu_float64: feature_quality once on the rows x D float64 matrix on the CPU (two SVDs, std, mean "
    "cosine, uniformity on <= 2000 rows), what the features probe runs; device_svd_estimate: upload of the "
    "float32 matrix + 2 x the device float32 SVD median (uncentred, centred), other metrics not included; "
    "None on a CPU run or when the device has no SVD.")


def _warning_text(w: Any) -> tuple[str, type | None]:
    """(message, category) of a ``warnings.WarningMessage``, a Warning or a string."""
    if isinstance(w, warnings.WarningMessage):
        return str(w.message), w.category
    if isinstance(w, Warning):
        return str(w), type(w)
    return str(w), None


def is_cpu_fallback_warning(text: str) -> bool:
    """True for torch's "... will fall back to run on the CPU" warning (MPS fallback)."""
    t = text.lower()
    return ("fall back" in t or "fallback" in t or "falling back" in t) and "cpu" in t


def classify_svd_path(caught: Sequence[Any], error: BaseException | None,
                      device_type: str = "mps") -> dict[str, str | None]:
    """Which path an SVD call on ``device_type`` took, from the warnings it raised and
    the exception (or None).  Returns ``{"path": ..., "detail": text or None}`` with
    path one of "cpu" (the device is the CPU), "not-implemented" (NotImplementedError),
    "error" (another exception), "cpu-fallback" (a CPU-fallback UserWarning) or "device"."""
    if error is not None:
        kind = "not-implemented" if isinstance(error, NotImplementedError) else "error"
        return {"path": kind, "detail": f"{type(error).__name__}: {error}".strip()}
    if device_type == "cpu":
        return {"path": "cpu", "detail": None}
    for w in caught:
        text, category = _warning_text(w)
        if (category is None or issubclass(category, UserWarning)) and is_cpu_fallback_warning(text):
            return {"path": "cpu-fallback", "detail": text}
    return {"path": "device", "detail": None}


def dtype_unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``dtype`` tensors cannot live on ``device`` (one sentence), or None."""
    if device.type == "mps" and dtype == torch.float64:
        return "MPS has no float64 (the MPS framework does not support it)"
    try:
        torch.zeros(1, dtype=dtype, device=device)
    except (TypeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def time_calls(fn: Callable[[], Any], sync: Callable[[], None], repeats: int = REPEATS) -> dict[str, Any]:
    """One warm-up call, then ``repeats`` timed calls, each synced inside the timing."""
    def once() -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    warmup_s = once()
    times = [once() for _ in range(repeats)]
    return {"median_s": median(times), "times_s": times, "warmup_s": warmup_s}


def time_svd_path(a: torch.Tensor, device_type: str, sync: Callable[[], None]) -> dict[str, Any]:
    """Time the SVD of ``a`` (already on its device), capturing warnings and any error the device
    raises (NotImplementedError, or a RuntimeError such as torch 2.14's MPS "Failed to created
    pipeline state object"), and classify the path it took."""
    def svd() -> Any:
        return torch.linalg.svd(a, full_matrices=False)

    if device_type == "cpu":
        return {"path": "cpu", "detail": None, **time_calls(svd, sync)}
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # a TORCH_WARN_ONCE fallback warning is raised again
    timing: dict[str, Any] = {"median_s": None, "times_s": [], "warmup_s": None}
    error: BaseException | None = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                timing = time_calls(svd, sync)
            except Exception as exc:
                # NotImplementedError (no kernel), or a RuntimeError such as torch 2.14's MPS
                # "Failed to created pipeline state object" above 8,192 elements: the CPU rows still count
                error = exc
    finally:
        torch.set_warn_always(previous)
    return {**classify_svd_path(caught, error, device_type), **timing}


def _upload_s(a: torch.Tensor, device: torch.device, sync: Callable[[], None]) -> float:
    return time_calls(lambda: a.to(device), sync)["median_s"]


class SVDEntry(ProbeEntry):
    """The fields of the svd entry that its report section reads."""

    timings: list[dict[str, Any]] | MISSING = MISSING


class SVDProbe(Probe):
    name = "svd"
    entry_model = SVDEntry
    headline = ("feature_eval_cost_s.cpu_float64", "feature_eval_cost_s.device_svd_estimate")
    cost = "costly"
    description = "torch.linalg.svd on the device vs the CPU (MPS fallback detection) and feature-metric cost"

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        if ctx.workload.model() is None:
            return {"measured": False,
                    "reason": "the workload has no model (PreparedWorkload.model() is None): no embedding width"}
        config = ctx.config
        rows = int((config.get("bench") or {}).get("svd_rows") or DEFAULT_ROWS)
        cols = int(config["model"]["embed_dim"])
        if rows < 2 or cols < 1:
            raise ValueError(f"the SVD matrix must be at least 2 x 1, got {rows} x {cols}")
        device = ctx.backend.device()
        on_cpu = device.type == "cpu"
        gen = torch.Generator().manual_seed(SEED)
        a64 = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
        host = {"float32": a64.float(), "float64": a64}

        timings: list[dict[str, Any]] = []
        upload_s: float | None = None
        if not on_cpu:
            for dname, dtype in DTYPES.items():
                why = dtype_unsupported(device, dtype)
                if why:
                    timings.append({"device": str(device), "dtype": dname, "path": None, "unsupported": why,
                                    "median_s": None})
                    continue
                a = host[dname].to(device)
                ctx.backend.synchronize()
                timings.append({"device": str(device), "dtype": dname,
                                **time_svd_path(a, device.type, ctx.backend.synchronize)})
                del a
            upload_s = _upload_s(host["float32"], device, ctx.backend.synchronize)
        for dname in DTYPES:
            timings.append({"device": "cpu", "dtype": dname, **time_svd_path(host[dname], "cpu", lambda: None)})

        t0 = time.perf_counter()
        feature_quality(a64.numpy())
        cpu_eval_s = time.perf_counter() - t0
        device_estimate = None
        if not on_cpu:
            dev32 = next((t for t in timings if t["device"] != "cpu" and t["dtype"] == "float32"), None)
            if dev32 and dev32.get("median_s") is not None and upload_s is not None:
                device_estimate = upload_s + 2 * dev32["median_s"]
        return {
            "measured": True,
            "torch_version": torch.__version__,
            "shape": [rows, cols],
            "device": str(device),
            "device_is_cpu": on_cpu,
            "cpu_threads": torch.get_num_threads(),
            "warmup_calls": 1,
            "repeats": REPEATS,
            "timings": timings,
            "upload_float32_s": upload_s,
            "feature_eval_cost_s": {"cpu_float64": cpu_eval_s, "device_svd_estimate": device_estimate},
            "feature_eval_cost_note": FEATURE_COST_NOTE,
            "note": ("The device is the CPU: device and CPU paths are the same, timed once." if on_cpu else
                     "Device path: what torch.linalg.svd did on the device (fallback warnings captured); "
                     "CPU path: the same matrix on the CPU."),
        }

    def facts(self, entry, record):
        """The CPU fallbacks (and missing kernels) of torch.linalg.svd seen, when measured."""
        if not entry.get("measured", True):
            return {}
        odd = [t for t in entry.get("timings") or [] if t.get("path") in ("cpu-fallback", "not-implemented")]
        return {"fallbacks": [f"torch.linalg.svd {t.get('dtype')} on {t.get('device')}: {t.get('path')}" for t in odd]}

    def summarize(self, entry):
        rows = [t for t in entry.get("timings") or [] if t.get("median_s") is not None]
        shown = [f"{t['device']} {t['dtype']} ({t['path']}) {t['median_s'] * 1000:.0f} ms" for t in rows]
        return "; ".join(shown) or None


class SVDSection(ReportSection):
    name = "svd"
    title = "SVD: device path, CPU fallback and cost of the feature metrics"
    order = 61

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        import pandas as pd  # imported when a report is rendered, not when the plugin loads

        timing_rows, cost_rows = [], []
        for r in records:
            entry = probe(r, "svd")
            if not entry:
                continue
            machine = device_name(r) or "?"
            if entry.get("status") == "failed" or not entry.get("measured"):
                why = entry.get("error") if entry.get("status") == "failed" else entry.get("reason")
                cost_rows.append({"machine": machine, "torch": None, "shape": None,
                                  "feature metrics, CPU float64 (ms)": None,
                                  "device SVD estimate (ms)": None, "result": f"not measured: {why}"})
                continue
            shape = "x".join(str(x) for x in entry.get("shape") or [])
            for t in entry.get("timings") or []:
                timing_rows.append({
                    "machine": machine, "torch": entry.get("torch_version"), "shape": shape,
                    "on": t.get("device"), "dtype": t.get("dtype"),
                    "path": t.get("path") or "unsupported",
                    "median (ms)": fmt_ms(t.get("median_s"), unit=""),
                    "detail": (t.get("unsupported") or t.get("detail") or "")[:120],
                })
            cost = entry.get("feature_eval_cost_s") or {}
            cost_rows.append({"machine": machine, "torch": entry.get("torch_version"), "shape": shape,
                              "feature metrics, CPU float64 (ms)": fmt_ms(cost.get("cpu_float64"), unit=""),
                              "device SVD estimate (ms)": fmt_ms(cost.get("device_svd_estimate"), unit=""),
                              "result": entry.get("note")})
        if not timing_rows and not cost_rows:
            return None
        parts = []
        if timing_rows:
            parts.append(pd.DataFrame(timing_rows).to_markdown(index=False))
            parts.append(f"torch.linalg.svd(A, full_matrices=False) on a seeded random matrix: one warm-up "
                         f"call, then the median of {REPEATS} synced calls. Paths: device (ran on the device), "
                         "cpu-fallback (torch warned it fell back to the CPU), not-implemented (raised "
                         "NotImplementedError), error (the device raised another error, in detail), cpu (the CPU "
                         "path), unsupported (dtype not on the device).")
        parts.append(pd.DataFrame(cost_rows).astype(object).fillna("").to_markdown(index=False))
        parts.append(FEATURE_COST_NOTE)
        return "\n\n".join(parts)


@hookimpl
def hjepa_bench_register_probes(register):
    register(SVDProbe())


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(SVDSection())
