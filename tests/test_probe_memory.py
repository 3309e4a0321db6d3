"""The memory probe: leak rule and batch-size fit on hand-made data, and one real run."""
from __future__ import annotations

import json

import pytest

from hjepa_bench.analysis.memory import LEAK_GROWTH_FRAC, fit_memory, leak_check, memory_entry
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.plugins import probe_memory
from hjepa_bench.plugins.backend_cpu import CPUBackend
from hjepa_bench.report.sections import render_report
from hjepa_bench.measure.runner import run_benchmark
from test_runner import ToyWorkload

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
