"""Loss probe: the pure analysis on constructed loss curves, and the probe in a real run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_runner import ToyWorkload

from hjepa_bench.analysis.loss_curve import (
    CRITERION_DECREASE_PCT,
    LR_NOISY,
    LR_SLOW,
    NOISE_THRESHOLD_PCT,
    analyze_loss,
    measured_losses,
    rolling_median,
)
from hjepa_bench.builtin import probe_loss
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.probe_loss import LossProbe, LossSection
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.record import check_record

T = np.arange(100)


def _noise(sd, seed=0):
    return np.random.default_rng(seed).normal(0, sd, len(T))


def _json_ok(entry):
    json.dumps(entry, allow_nan=False)


def test_steady_decrease_passes_and_keeps_the_lr():
    e = analyze_loss(list(2 - T / 100 + _noise(0.01)), warmup_steps=2, lr=1e-4)
    _json_ok(e)
    assert e["n"] == 98 and e["window"] == 9
    assert e["start_loss"] == pytest.approx(2 - 6 / 100, abs=0.02)  # mean of steps 2..10
    assert e["end_loss"] == pytest.approx(2 - 95 / 100, abs=0.02)  # mean of steps 91..99
    assert e["decrease_pct"] > 40 and e["trend"] == "decreasing"
    assert e["criterion_loss_decrease_met"] == "pass"
    assert e["noisy"] is False and e["diverged"] is False and e["plateau"] is False
    assert e["warmup_spikes"]["count"] == 0
    assert e["lr_advice"]["action"] == "keep" and e["lr_advice"]["suggested_lr"] == 1e-4
    assert e["preliminary"] is True and any("first steps of training" in n for n in e["notes"])
    assert e["thresholds"]["criterion_decrease_pct"] == CRITERION_DECREASE_PCT
    assert "noise_pct" in e["definitions"]


def test_flat_loss_is_too_slow_and_asks_for_a_higher_lr():
    e = analyze_loss(list(2 + _noise(0.01, 1)), warmup_steps=0, lr=1e-4)
    assert e["trend"] == "flat" and abs(e["decrease_pct"]) < 5
    assert e["criterion_loss_decrease_met"] == "fail" and e["plateau"] is False
    adv = e["lr_advice"]
    assert adv["action"] == "increase" and adv["suggested_lr"] == LR_SLOW[0]
    assert "increase to 1.5e-04 or 2.0e-04" in adv["text"] and "< 20%" in adv["trigger"]


def test_slow_decrease_below_20pct_asks_for_a_higher_lr():
    e = analyze_loss(list(2 - 0.2 * T / 100 + _noise(0.005, 2)), warmup_steps=0, lr=1e-4)
    assert e["trend"] == "decreasing" and 5 < e["decrease_pct"] < CRITERION_DECREASE_PCT
    assert e["criterion_loss_decrease_met"] == "fail" and e["lr_advice"]["action"] == "increase"


def test_noisy_loss_asks_for_5e_5():
    e = analyze_loss(list(2 - T / 100 + _noise(0.4, 3)), warmup_steps=2, lr=1e-4)
    assert e["noise_pct"] > NOISE_THRESHOLD_PCT and e["noisy"] is True
    assert e["trend"] != "diverged"
    adv = e["lr_advice"]
    assert adv["action"] == "decrease" and adv["suggested_lr"] == LR_NOISY and "noise" in adv["trigger"]
    # already at 5e-5: no pointless "decrease to 5e-5"
    assert analyze_loss(list(2 - T / 100 + _noise(0.4, 3)), 2, 5e-5)["lr_advice"]["suggested_lr"] is None


def test_rising_loss_diverges_and_asks_for_a_much_lower_lr():
    e = analyze_loss(list(1 + 3 * T / 100), warmup_steps=2, lr=1e-4)
    _json_ok(e)
    assert e["diverged"] is True and e["trend"] == "diverged"
    assert e["criterion_loss_decrease_met"] == "fail"
    adv = e["lr_advice"]
    assert adv["action"] == "decrease" and "significantly" in adv["text"] and "warm-up" in adv["text"]
    assert "vs start" in adv["trigger"]


def test_moderately_rising_loss_is_increasing_not_diverged():
    e = analyze_loss(list(1 + 0.2 * T / 100 + _noise(0.002, 4)), warmup_steps=0, lr=1e-4)
    assert e["diverged"] is False and e["trend"] == "increasing"
    assert e["lr_advice"]["action"] == "decrease" and "rose" in e["lr_advice"]["trigger"]


def test_plateau_after_a_fast_early_drop():
    e = analyze_loss(list(1 + 2 * np.exp(-T / 8) + _noise(0.005, 5)), warmup_steps=0, lr=1e-4)
    assert e["plateau"] is True and abs(e["plateau_slope_ratio"]) < 0.2
    assert e["first_third_drop_pct"] > 5
    assert e["trend"] == "decreasing" and e["lr_advice"]["action"] == "keep"
    assert any("flattened" in n for n in e["notes"])


def test_non_finite_and_none_losses_mean_divergence():
    losses = [2.0, 1.9, 1.8, None, 1.7, float("nan"), 1.6, float("inf")] + [1.5] * 20
    e = analyze_loss(losses, warmup_steps=1, lr=1e-4)
    _json_ok(e)
    assert e["non_finite_count"] == 3 and e["first_non_finite_step"] == 3
    assert e["n"] == 24  # finite losses after the warm-up step
    assert e["diverged"] is True and e["trend"] == "diverged"
    assert "non-finite loss at step 3" in e["lr_advice"]["trigger"]
    assert all(v is None or math.isfinite(v) for v in (e["start_loss"], e["end_loss"], e["noise_pct"]))


def test_warmup_spikes_in_the_first_third():
    losses = list(2 - T / 100 + _noise(0.005, 6))
    losses[10] *= 2.0
    losses[80] *= 2.0  # late: not a warm-up spike
    e = analyze_loss(losses, warmup_steps=2, lr=None)
    assert e["warmup_spikes"]["indices"] == [10] and e["warmup_spikes"]["count"] == 1
    assert e["lr"] is None and "current value" in e["lr_advice"]["text"]


def test_short_series_gives_nones_with_notes():
    e = analyze_loss([2.0, 1.9, 1.8, 1.7], warmup_steps=1, lr=1e-4)
    _json_ok(e)
    assert e["n"] == 3
    for key in ("start_loss", "end_loss", "decrease_pct", "noise_pct", "plateau", "trend"):
        assert e[key] is None, key
    assert e["criterion_loss_decrease_met"] == "not measured"
    assert e["lr_advice"]["action"] == "not measured"
    joined = " ".join(e["notes"])
    assert "start/end windows need" in joined and "plateau needs" in joined and "noise needs" in joined


def test_rolling_median_is_centred():
    assert rolling_median([1, 5, 1, 1, 9, 1], 3) == [3.0, 1.0, 1.0, 1.0, 1.0, 5.0]


def test_measured_losses_drops_never_closed_steps():
    series = {"loss": [2.0, float("nan"), None, None], "step_time_s": [0.1, 0.1, None, None]}
    assert measured_losses(series)[:1] == [2.0] and len(measured_losses(series)) == 2
    assert measured_losses({"loss": [1.0, None], "step_time_s": [0.1, 0.1]}) == [1.0, None]
    assert measured_losses({}) == []


# --------------------------------------------------------------------------- plugin + section
def test_hooks_register_the_probe_and_section():
    probes, sections = [], []
    probe_loss.hjepa_bench_register_probes(probes.append)
    probe_loss.hjepa_bench_register_report_sections(sections.append)
    assert [p.name for p in probes] == ["loss"] and probes[0].cost == "cheap"
    assert [s.name for s in sections] == ["loss"]


def test_section_renders_entries_and_skips_records_without_them():
    section = LossSection()
    assert section.render([{"probes": {}}, {}]) is None
    entry = {"status": "ok", **analyze_loss(list(2 - T / 100), 2, 1e-4)}
    rec = {"config": {"model": {"encoder_type": "vit_small_patch16_224"}}, "env": {"backend": "cpu"},
           "probes": {"loss": entry}}
    md = section.render([rec, {"probes": {}}])
    assert md is not None and "vit_small" in md and "decreasing" in md and "preliminary" in md


# --------------------------------------------------------------------------- a real run
def _run(tiny, workload, **bench):
    values = tiny(**{f"bench.{k}": v for k, v in bench.items()})
    return run_benchmark(values, CPUBackend(), workload, [LossProbe()], {"backend": "cpu"})


def test_probe_in_a_real_run(tiny):
    r = _run(tiny, ToyWorkload(), warmup_steps=2, min_steps=40, max_steps=40, target_rel_precision=0.0001)
    check_record(r)
    assert r["status"] == "ok"
    e = r["probes"]["loss"]
    _json_ok(e)
    assert e["status"] == "ok" and e["n"] == 40 and e["window"] == 4
    assert e["lr"] == pytest.approx(float(r["config"]["training"]["lr"]))
    losses = r["series"]["loss"][2:]
    assert e["start_loss"] == pytest.approx(sum(losses[:4]) / 4)
    assert e["end_loss"] == pytest.approx(sum(losses[-4:]) / 4)
    assert e["trend"] in ("decreasing", "flat", "increasing") and e["diverged"] is False
    assert e["criterion_loss_decrease_met"] in ("pass", "fail") and e["lr_advice"]["action"] != "not measured"
    assert LossSection().render([r]) is not None


def test_probe_in_a_diverging_run(tiny):
    r = _run(tiny, ToyWorkload(fail="nan", fail_at=6), warmup_steps=1, min_steps=20, max_steps=20, window_steps=2)
    assert r["status"] == "diverged"
    e = r["probes"]["loss"]
    _json_ok(e)
    assert e["trend"] == "diverged" and e["first_non_finite_step"] == 5 and e["non_finite_count"] == 1
    assert e["lr_advice"]["action"] == "decrease"


# --------------------------------------------------------------------------- the LR the run applied
def test_no_lr_advice_during_warmup_and_the_applied_lr_is_judged():
    flat = list(2 + _noise(0.01, 1))  # a flat start: "increase" when judged on the configured LR
    assert analyze_loss(flat, 0, 1e-4)["lr_advice"]["action"] == "increase"
    warm = analyze_loss(flat, 0, 1e-4, applied_lr=1.3e-6, lr_in_warmup=True)
    assert warm["lr_applied"] == 1.3e-6 and warm["lr_in_warmup"] is True
    assert warm["lr_advice"]["action"] == "none" and warm["lr_advice"]["suggested_lr"] is None
    assert warm["lr_advice"]["text"] == "in LR warm-up (lr 1.3e-06 of 1.0e-04): no LR advice"
    # past warm-up, the rules compare the applied LR: 2.5e-4 applied is already >= 2e-4
    past = analyze_loss(flat, 0, 1e-4, applied_lr=2.5e-4, lr_in_warmup=False)["lr_advice"]
    assert past["action"] == "increase" and past["suggested_lr"] is None and "2.5e-04 applied" in past["text"]


@pytest.mark.parametrize("warmup_epochs", [1, 0])
def test_real_hjepa_run_records_the_applied_lr(tiny, warmup_epochs):
    """The real step's schedule: 16 steps per epoch (64 images, batch 4); with 1 warm-up epoch the 7
    steps of the run are all in warm-up (LR = 1e-4 * (k + 1) / 16), so the probe gives no LR advice;
    without warm-up the cosine LR of the last step is the one judged."""
    from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
    from hjepa_bench.hjepa.step import lr_at

    values = tiny(**{"training.warmup_epochs": warmup_epochs, "bench.warmup_steps": 1, "bench.min_steps": 6,
                     "bench.max_steps": 6})
    r = run_benchmark(values, CPUBackend(), HJEPAWorkload(), [LossProbe()], {"backend": "cpu"})
    assert r["status"] == "ok"
    t, spe = values["training"], 64 // 4
    total, warm = int(t["epochs"]) * spe, warmup_epochs * spe
    expected = [lr_at(k, total, warm, float(t["lr"]), float(t["min_lr"])) for k in range(7)]
    assert r["series"]["lr"] == pytest.approx(expected)
    assert r["series"]["lr_in_warmup"] == [k < warm for k in range(7)]
    e = r["probes"]["loss"]
    assert e["lr"] == pytest.approx(float(t["lr"])) and e["lr_applied"] == pytest.approx(expected[-1])
    adv = e["lr_advice"]
    if warmup_epochs:
        assert e["lr_in_warmup"] is True and adv["action"] == "none"
        assert adv["text"] == f"in LR warm-up (lr {expected[-1]:.1e} of {float(t['lr']):.1e}): no LR advice"
    else:
        assert e["lr_in_warmup"] is False and adv["action"] != "none"
        assert adv["action"] == "keep" or f"{expected[-1]:.1e}" in adv["text"]
