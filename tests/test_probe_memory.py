"""The memory probe: leak rule and batch-size fit on hand-made data, and one real run."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config
from test_runner import ToyWorkload

from hjepa_bench.analysis.memory import LEAK_GROWTH_FRAC, fit_memory, leak_check, memory_entry
from hjepa_bench.builtin import probe_memory
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.report.sections import render_report

GiB = 2**30
MiB = 2**20


def _rec(batch, peak=None, status="ok", model="vit_tiny_patch16_224", device="M1 Max", total=16 * GiB,
         params=0, precision="fp32"):
    return {
        "status": status,
        "env": {"device_name": device, "backend": "mps"},
        "config": {"data": {"batch_size": batch}, "model": {"encoder_type": model},
                   "bench": {"device": "mps", "variant": "efficient", "precision": precision}},
        "params": {"total": params, "trainable": params},
        "metrics": {"peak_device_bytes": peak, "device_total_bytes": total,
                    "batch_size": {"requested": batch, "achieved": batch if status == "ok" else None}},
        "probes": {},
    }


# --------------------------------------------------------------------------- leak rule
def test_flat_memory_is_no_leak():
    steps = list(range(5, 45))
    flat = [800 * MiB + (i % 3) * 4096 for i in steps]  # allocator jitter, no trend
    leak = leak_check(steps, flat)
    assert leak["suspected"] is False
    assert abs(leak["slope_bytes_per_step"]) < 1024
    assert leak_check(steps, [512 * MiB] * len(steps))["suspected"] is False


def test_growing_memory_is_a_suspected_leak():
    steps = list(range(5, 125))
    growing = [800 * MiB + i * 2 * MiB + (i % 3) * 4096 for i in steps]  # +2 MiB/step all along: sustained
    leak = leak_check(steps, growing)
    assert leak["slope_bytes_per_step"] == pytest.approx(2 * MiB, rel=1e-3)
    assert leak["growth_frac"] > LEAK_GROWTH_FRAC and leak["t_stat"] > 3
    assert leak["suspected"] is True and leak["reason"].startswith("sustained growth")
    exact = leak_check(steps, [100 * MiB + i * MiB for i in steps])  # exactly linear: stderr 0
    assert exact["suspected"] is True and exact["t_stat"] is None and exact["t_stat_infinite"] is True
    json.dumps(exact, allow_nan=False)
    # the same growth over 40 samples: start-up growth can last that long, so it is not judged
    short = leak_check(steps[:40], growing[:40])
    assert short["suspected"] is None and short["reason"].startswith("not enough settled steps to judge")


def test_too_few_samples_never_calls_a_leak():
    leak = leak_check([3, 4, 5], [1 * GiB, 2 * GiB, 3 * GiB])
    assert leak["suspected"] is None and "too few" in leak["note"]
    assert leak_check([3], [1 * GiB])["slope_bytes_per_step"] is None


def test_memory_entry_peak_mean_headroom():
    samples = [(0, 100), (1, 300), (2, 200), (3, 200), (4, 200)]  # step 0-1 warm-up
    e = memory_entry(samples, 2, {"peak_device_bytes": 250, "device_total_bytes": 1000, "peak_rss_bytes": 5000},
                     "test")
    assert e["peak_device_bytes"] == 300  # the sample beat the backend's peak (warm-up spike)
    assert e["mean_device_bytes"] == 200.0
    assert e["headroom_bytes"] == 700 and e["headroom_frac"] == pytest.approx(0.7)
    assert e["memory_pressure"] is False and e["memory_source"] == "test"
    hot = memory_entry([(0, 950)], 0, {"peak_device_bytes": 960, "device_total_bytes": 1000})
    assert hot["memory_pressure"] is True and hot["leak"]["suspected"] is None
    json.dumps(e, allow_nan=False)


# --------------------------------------------------------------------------- the sweep fit
def test_exact_linear_data_gives_the_exact_prediction():
    a, b = 1 * GiB, 100 * MiB  # 1 GiB fixed + 100 MiB per sample
    recs = [_rec(n, a + b * n) for n in (8, 16, 32)]
    f = fit_memory(recs, margin=0.10)[("M1 Max", "vit_tiny")]
    assert f["fit"]["bytes_per_sample"] == pytest.approx(b) and f["fit"]["intercept_bytes"] == pytest.approx(a)
    # (16 GiB * 0.9 - 1 GiB) / 100 MiB = (14.4 - 1) * 1024 / 100 = 137.216 -> 137
    assert f["predicted_max_batch"] == 137
    assert f["largest_ok_batch"] == 32 and f["can_increase_batch"] is True
    assert f["room_for_larger_model"]["answer"] == "not measured"


def test_oom_caps_the_prediction_below_the_failing_batch():
    a, b = 1 * GiB, 100 * MiB
    recs = [_rec(n, a + b * n) for n in (8, 16, 32)] + [_rec(64, None, status="oom")]
    f = fit_memory(recs)[("M1 Max", "vit_tiny")]
    assert f["predicted_max_batch_uncapped"] == 137
    assert f["oom_cap_batch"] == 63 and f["predicted_max_batch"] == 63
    assert "ran out of memory" in f["note"] and f["can_increase_batch"] is True
    tight = fit_memory([_rec(8, a + b * 8), _rec(16, a + b * 16), _rec(17, None, status="oom")])
    assert tight[("M1 Max", "vit_tiny")]["predicted_max_batch"] == 16
    assert tight[("M1 Max", "vit_tiny")]["can_increase_batch"] is False


def test_single_batch_size_gives_no_fit_with_a_note():
    f = fit_memory([_rec(32, 3 * GiB), _rec(32, 3 * GiB + MiB)])[("M1 Max", "vit_tiny")]
    assert f["fit"] is None and f["predicted_max_batch"] is None
    assert "2 batch sizes" in f["note"]


def test_room_for_larger_model_comes_from_measured_records_only():
    tiny = [_rec(n, GiB + n * 50 * MiB, params=5_000_000) for n in (16, 32)]
    small = [_rec(24, 6 * GiB, model="vit_small_patch16_224", params=21_000_000),
             _rec(48, None, status="oom", model="vit_small_patch16_224", params=21_000_000)]
    fits = fit_memory(tiny + small)
    room = fits[("M1 Max", "vit_tiny")]["room_for_larger_model"]
    assert room["answer"] == "yes" and "vit_small: ran ok at batch 24" in room["evidence"][0]
    assert fits[("M1 Max", "vit_small")]["room_for_larger_model"]["answer"] == "not measured"
    only_oom = fit_memory(tiny + small[1:])
    assert only_oom[("M1 Max", "vit_tiny")]["room_for_larger_model"]["answer"] == "no"


def test_mixed_setups_are_fitted_separately():
    recs = [_rec(n, GiB + n * MiB) for n in (8, 16)] + [_rec(n, GiB + n * MiB // 2, precision="bf16")
                                                       for n in (8, 16)]
    fits = fit_memory(recs)
    assert len(fits) == 2 and all(k[1].startswith("vit_tiny [") for k in fits)


# --------------------------------------------------------------------------- a real run
def test_real_run_has_a_memory_entry(tiny):
    values = tiny(**{"bench.warmup_steps": 2, "bench.min_steps": 10, "bench.max_steps": 10})
    r = run_benchmark(values, CPUBackend(), ToyWorkload(step_sleep=0.002), [probe_memory.MemoryProbe()],
                      {"backend": "cpu"})
    assert r["status"] == "ok"
    e = r["probes"]["memory"]
    assert e["status"] == "ok"
    assert e["peak_device_bytes"] >= e["mean_device_bytes"] > 0
    assert e["peak_device_bytes"] >= r["metrics"]["peak_device_bytes"]
    assert e["device_total_bytes"] > e["headroom_bytes"] > 0
    assert e["samples"] >= 2 and e["sampling"]["reading_cost_us"] > 0
    assert e["leak"]["n_samples"] >= 1 and "RSS" in e["memory_source"]
    json.dumps(e, allow_nan=False)
    # the section renders the entry, and a fit table once there are two batch sizes
    r2 = json.loads(json.dumps(r))
    r2["config"]["data"]["batch_size"] = 8
    r2["metrics"]["batch_size"]["achieved"] = 8
    r2["probes"]["memory"]["peak_device_bytes"] += 10 * MiB
    text = render_report([r, r2], [probe_memory.MemorySection()])
    assert "Memory" in text and "predicted max batch" in text
    assert "predicted max batch" not in probe_memory.MemorySection().render([r])
    assert probe_memory.MemorySection().render([{"probes": {}}]) is None


def test_registers_through_the_hooks():
    plugins = build_plugins(objects=[("probe_memory", probe_memory)])
    assert plugins.probes()["memory"].cost == "cheap"
    assert "memory" in [s.name for s in plugins.report_sections()]


# --------------------------------------------------------------------------- reserved memory (CUDA)
def _fake_cuda_memory(monkeypatch, *, allocated, peak, reserved, peak_reserved, free, total):
    """torch.cuda's memory counters as a real GPU reports them: the caching allocator reserves more
    than its live tensors, and mem_get_info's used memory also holds the CUDA context."""
    from hjepa_bench.builtin import backend_cuda
    from hjepa_bench.plugin.api import Availability

    monkeypatch.setattr(backend_cuda, "_check_availability", lambda: Availability(True))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: peak)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: reserved)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: peak_reserved)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, total))
    return backend_cuda.CUDABackend()


def test_headroom_counts_the_allocator_reserve_and_the_context(monkeypatch):
    gib = 2**30
    # 10 GiB allocated at the peak, 14 GiB reserved at the peak; now 12 GiB reserved and 0.5 GiB of
    # context outside the allocator (80 - 67.5 - 12); 80 GiB in total
    backend = _fake_cuda_memory(monkeypatch, allocated=8 * gib, peak=10 * gib, reserved=12 * gib,
                                peak_reserved=14 * gib, free=int(67.5 * gib), total=80 * gib)
    reading = backend.memory()
    assert reading.peak_reserved_bytes == 14 * gib and reading.outside_allocator_bytes == gib // 2
    metrics = {"peak_device_bytes": reading.peak_bytes, "device_total_bytes": reading.total_bytes,
               "peak_reserved_device_bytes": reading.peak_reserved_bytes,
               "device_outside_allocator_bytes": reading.outside_allocator_bytes}
    entry = memory_entry([(0, 8 * gib)], 0, metrics)
    assert entry["peak_footprint_bytes"] == int(14.5 * gib)
    assert entry["headroom_bytes"] == 80 * gib - int(14.5 * gib)  # not 80 - 10
    assert "reserve" in entry["headroom_basis"]


def test_max_batch_prediction_fits_the_footprint_not_the_allocated_peak():
    from hjepa_bench.record import new_record

    gib = 2**30
    records = []
    for batch, allocated, reserved in ((8, 2 * gib, 3 * gib), (16, 4 * gib, 6 * gib)):
        r = new_record(tiny_config(**{"data.batch_size": batch}), {"backend": "cuda", "device_name": "fake GPU"})
        r["status"] = "ok"
        r["metrics"] = {"peak_device_bytes": allocated, "device_total_bytes": 20 * gib,
                        "peak_reserved_device_bytes": reserved, "device_outside_allocator_bytes": gib // 2,
                        "batch_size": {"requested": batch, "achieved": batch}}
        records.append(r)
    (fit,) = fit_memory(records, margin=0.1).values()
    # footprint = 0.5 GiB + 3/8 GiB per sample: (18 - 0.5) / 0.375 = 46 (the allocated peak alone says 72)
    assert fit["predicted_max_batch"] == 46


# --------------------------------------------------------------------------- MPS: the activations
class _LiveBytes:
    """Device memory like MPS's ``current_allocated_memory``: the parameters and optimizer state, plus
    every tensor the autograd graph holds for the backward, until the backward frees it."""

    def __init__(self, base: int):
        self.base, self.held, self.most_held = base, 0, 0

    def pack(self, t):
        return _Held(t, self)

    def __call__(self):
        return self.base + self.held


class _Held:
    def __init__(self, t, live):
        self.t, self.n, self.live = t, t.nbytes, live
        live.held += self.n
        live.most_held = max(live.most_held, live.held)

    def __del__(self):
        self.live.held -= self.n


def test_mps_peak_includes_the_activations_of_the_forward_pass(monkeypatch):
    """torch.mps has no peak API: a peak sampled after the step sees parameters, gradients and Adam
    state, the activations already freed.  The real H-JEPA step on a fake MPS whose live bytes include
    what the autograd graph holds must report a peak with the activations in it, and say where it sampled."""
    from hjepa_bench.builtin import backend_mps
    from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
    from hjepa_bench.plugin.api import Availability
    from hjepa_bench.plugin.precision import probe_precision

    class MPSOnCPU(backend_mps.MPSBackend):
        def device(self):
            return torch.device("cpu")  # the arithmetic runs on the CPU; the memory counters are MPS's

        def has_device_events(self):
            return False

        def precision_reason(self, precision):
            return probe_precision("cpu", precision)

    base = 50 * 2**20
    live = _LiveBytes(base)
    monkeypatch.setattr(backend_mps, "_check_availability", lambda: Availability(True))
    monkeypatch.setattr(torch.mps, "current_allocated_memory", live)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2 * base)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 100 * base, raising=False)
    monkeypatch.setattr(torch.mps, "synchronize", lambda: None)
    config = tiny_config()
    with torch.autograd.graph.saved_tensors_hooks(live.pack, lambda h: h.t):
        record = run_benchmark(config, MPSOnCPU(), HJEPAWorkload(), [], {"backend": "mps"})
    assert record["status"] == "ok", record.get("error")
    assert live.held == 0 and live.most_held > 0  # the graph was freed after every step
    peak = record["metrics"]["peak_device_bytes"]
    assert peak >= base + live.most_held * 0.9, (peak - base, live.most_held)
    assert "forward end" in record["metrics"]["memory_source"]
