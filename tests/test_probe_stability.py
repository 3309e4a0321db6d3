"""Stability probe: the pure analysis on constructed step-time series, and the probe in a real run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_runner import ToyWorkload

from hjepa_bench.analysis.stability import (
    SPIKE_K,
    THRESHOLD_CV_PCT,
    analyze_stability,
    drift_text,
    spike_events,
    spike_period,
)
from hjepa_bench.builtin import probe_stability
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.probe_stability import StabilityProbe, StabilitySection
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.record import check_record
from hjepa_bench.stats import summarize


def _noise(n, level=0.1, rel=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return list(level * (1 + rng.normal(0, rel, n)))


def _json_ok(entry):
    json.dumps(entry, allow_nan=False)  # plain JSON types, no NaN


def test_constant_with_small_noise_is_stable_without_spikes():
    e = analyze_stability(_noise(200), warmup_steps=2)
    _json_ok(e)
    assert e["verdict"] == "stable" and e["criterion_cv_below_limit"] == "pass"
    assert e["cv_pct"] < 3 and e["variance_pct"] < 8
    assert e["spike_count"] == 0 and e["spike_indices"] == [] and e["spike_period_steps"] is None
    assert e["degradation"]["significant"] is False
    assert e["median_s"] == pytest.approx(0.1, rel=0.01)
    assert e["warmup_steps_reported"] == 2 and e["n"] == 198
    assert e["thresholds"]["cv_pct"] == THRESHOLD_CV_PCT and "variance_pct" in e["definitions"]
    assert any("CV" in r for r in e["reasons"])


def test_periodic_spikes_every_50_steps():
    x = _noise(300, seed=1)
    for i in range(20, 300, 50):
        x[i] *= 2.5
    e = analyze_stability(x, warmup_steps=5)
    _json_ok(e)
    assert e["spike_indices"] == list(range(20, 300, 50))
    assert e["spike_count"] == 6 and e["spike_period_steps"] == 50
    assert e["spike_threshold_s"] > e["median_s"]
    assert any("every 50 steps" in r for r in e["reasons"])


def test_irregular_spikes_have_no_period():
    x = _noise(300, seed=2)
    for i in (20, 33, 150, 160, 290):
        x[i] *= 3
    e = analyze_stability(x, warmup_steps=0)
    assert e["spike_count"] == 5 and e["spike_period_steps"] is None


def test_spike_helpers():
    assert spike_events([3, 4, 5, 53, 54, 103]) == [3, 53, 103]
    assert spike_period([3, 53, 103, 152]) == 50  # within the 10% tolerance
    assert spike_period([3, 53]) is None  # too few events
    assert spike_period([0, 10, 70, 75]) is None  # gaps disagree


def test_linear_upward_drift_is_significant_degradation():
    n = 200
    x = [0.1 * (1 + 0.3 * i / n) for i in range(n)]
    x = [v + d for v, d in zip(x, np.random.default_rng(3).normal(0, 0.001, n))]
    e = analyze_stability(x, warmup_steps=0)
    d = e["degradation"]
    assert d["significant"] is True and d["degrading"] is True and d["p_value"] < 1e-6
    assert d["slope_s_per_step"] == pytest.approx(0.1 * 0.3 / n, rel=0.1)
    assert d["change_pct"] > 20 and d["span_steps"] == len(x) - 1
    assert drift_text(d) == f"{d['change_pct']:+.0f}% over {len(x)} measured steps"
    assert e["verdict"] == "unstable" and e["criterion_cv_below_limit"] == "pass"
    assert e["detected_warmup_steps"] == 0  # a drift is not a warm-up
    assert any("slows down" in r for r in e["reasons"])


def test_a_speed_up_is_reported_but_is_not_degradation():
    n = 200
    x = [0.1 * (1 - 0.3 * i / n) for i in range(n)]
    x = [v + d for v, d in zip(x, np.random.default_rng(4).normal(0, 0.001, n))]
    e = analyze_stability(x, warmup_steps=0)
    d = e["degradation"]
    assert d["significant"] is True and d["degrading"] is False and d["change_pct"] < -20
    assert e["verdict"] == "stable"
    assert any("speeds up" in r for r in e["reasons"])


def test_small_drift_is_not_significant():
    x = [0.1 * (1 + 0.02 * i / 200) for i in range(200)]  # 2% over the run: under the 5% limit
    e = analyze_stability(x, warmup_steps=0)
    assert e["degradation"]["significant"] is False and e["verdict"] == "stable"


def test_slow_first_steps_are_detected_as_warmup_and_said_not_dropped():
    x = [1.0, 0.6, 0.4, 0.3, 0.25, 0.2] + _noise(100, seed=4)
    e = analyze_stability(x, warmup_steps=1)
    assert e["warmup_steps_reported"] == 1
    assert e["detected_warmup_steps"] == 6 and e["settled_late"] is True
    # the statistics are those of the record's measured steps (after the reported warm-up): one CV per record
    assert e["first_analysed_step"] == 1 and e["n"] == 105
    assert e["cv_pct"] == pytest.approx(summarize(x[1:])["cv"] * 100)
    assert e["median_s"] == pytest.approx(summarize(x[1:])["median"])
    assert any("settled only after 6" in note and "--warmup-steps 6" in note for note in e["notes"])
    assert any("settled only after 6 steps" in r for r in e["reasons"])


def test_reported_warmup_longer_than_detected_wins():
    e = analyze_stability(_noise(100, seed=5), warmup_steps=10)
    assert e["detected_warmup_steps"] == 0 and e["first_analysed_step"] == 10 and e["n"] == 90


def test_high_variance_is_unstable():
    rng = np.random.default_rng(6)
    e = analyze_stability(list(0.1 * rng.uniform(0.5, 1.5, 200)), warmup_steps=0)
    assert e["cv_pct"] > THRESHOLD_CV_PCT
    assert e["verdict"] == "unstable" and e["criterion_cv_below_limit"] == "fail"


def test_short_series_gives_nones_with_notes():
    e = analyze_stability([0.1, 0.11, 0.1, 0.12], warmup_steps=1)
    _json_ok(e)
    assert e["n"] == 3 and e["median_s"] == pytest.approx(0.11)
    for key in ("detected_warmup_steps", "cv_pct", "variance_pct", "spike_count", "spike_period_steps",
                "verdict"):
        assert e[key] is None, key
    assert all(v is None for v in e["degradation"].values())
    assert e["criterion_cv_below_limit"] == "not measured"
    joined = " ".join(e["notes"])
    assert "warm-up detection needs" in joined and "CV, variance and verdict need" in joined
    assert "spike detection needs" in joined and "degradation fit needs" in joined


def test_empty_and_missing_times():
    e = analyze_stability([], warmup_steps=0)
    assert e["n"] == 0 and e["median_s"] is None and e["verdict"] is None
    e = analyze_stability([None, 0.1, float("nan")] + _noise(30, seed=7) + [None], warmup_steps=1)
    _json_ok(e)
    assert e["n"] == 31 and any("without a finite time" in note for note in e["notes"])


def test_identical_times_do_not_make_spikes_or_nans():
    e = analyze_stability([0.05] * 50, warmup_steps=0)
    _json_ok(e)
    assert e["cv_pct"] == pytest.approx(0.0, abs=1e-9) and e["spike_count"] == 0 and e["verdict"] == "stable"
    assert e["degradation"]["slope_s_per_step"] == 0.0 and e["degradation"]["p_value"] is None
    assert e["thresholds"]["spike_k"] == SPIKE_K


# --------------------------------------------------------------------------- plugin + section
def test_hooks_register_the_probe_and_section():
    probes, sections = [], []
    probe_stability.hjepa_bench_register_probes(probes.append)
    probe_stability.hjepa_bench_register_report_sections(sections.append)
    assert [p.name for p in probes] == ["stability"] and probes[0].cost == "cheap"
    assert [s.name for s in sections] == ["stability"]


def test_section_renders_entries_and_skips_records_without_them():
    section = StabilitySection()
    assert section.render([{"probes": {}}, {"config": {}}]) is None
    entry = {"status": "ok", **analyze_stability(_noise(100), 2)}
    rec = {"config": {"model": {"encoder_type": "vit_tiny_patch16_224"}, "data": {"batch_size": 32}},
           "env": {"backend": "cpu"}, "probes": {"stability": entry}}
    failed = {"config": {}, "env": {}, "probes": {"stability": {"status": "failed", "error": "KeyError: x"}}}
    md = section.render([rec, {"probes": {}}, failed])
    assert md is not None and "| vit_tiny" in md and "stable" in md and "CV %" in md
    assert "probe failed" in md and md.count("\n| ") >= 2


# --------------------------------------------------------------------------- a real run
def test_probe_in_a_real_run(tiny):
    values = tiny(**{"bench.warmup_steps": 2, "bench.min_steps": 30, "bench.max_steps": 30,
                     "bench.target_rel_precision": 0.0001, "bench.max_time_s": 30.0})
    r = run_benchmark(values, CPUBackend(), ToyWorkload(step_sleep=0.004), [StabilityProbe()], {"backend": "cpu"})
    check_record(r)
    assert r["status"] == "ok"
    e = r["probes"]["stability"]
    _json_ok(e)
    assert e["status"] == "ok" and e["warmup_steps_reported"] == 2
    assert e["n"] == 30 == r["metrics"]["step_time_s"]["n"]
    assert e["median_s"] >= 0.004
    # one definition: the stability entry and the record's measured-step summary are the same numbers
    assert e["median_s"] == pytest.approx(r["metrics"]["step_time_s"]["median"])
    assert e["cv_pct"] == pytest.approx(r["metrics"]["step_time_s"]["cv"] * 100)
    assert e["cv_pct"] is not None and e["cv_pct"] >= 0
    assert e["verdict"] in ("stable", "unstable") and e["spike_count"] is not None
    assert StabilitySection().render([r]) is not None
