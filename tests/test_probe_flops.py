"""The ``flops`` probe: pure FLOPs/MFU arithmetic, the matmul peak, and real tiny runs on CPU."""
from __future__ import annotations

import json
import math

import pytest
import torch

from hjepa_bench.analysis.flops import (
    matmul_flops,
    matmuls_per_rep,
    mfu_summary,
    next_matmul_size,
    peak_summary,
    per_sample,
)
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.probe_flops import FlopsProbe, FlopsSection, measure_matmul_peak
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
from hjepa_bench.format import fmt_flops
from hjepa_bench.hjepa.inspection import count_step_flops
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.api import PreparedWorkload, StepOutput, Workload
from hjepa_bench.plugin.manager import build_plugins


# --------------------------------------------------------------------------- pure functions
def test_matmul_flops_is_two_n_cubed():
    assert matmul_flops(1) == 2
    assert matmul_flops(1024) == 2 * 1024**3


def test_mfu_summary_values():
    s = mfu_summary(2e9, 0.5, 8e9)
    assert s == {"achieved_flops_per_s": pytest.approx(4e9), "mfu": pytest.approx(0.5)}


@pytest.mark.parametrize("flops,step,peak,achieved_none,mfu_none", [
    (None, 0.5, 8e9, True, True),
    (2e9, None, 8e9, True, True),
    (2e9, 0.0, 8e9, True, True),
    (2e9, float("nan"), 8e9, True, True),
    (2e9, 0.5, None, False, True),
    (2e9, 0.5, 0.0, False, True),
    (2e9, 0.5, float("inf"), False, True),
    (-1.0, 0.5, 8e9, True, True),
])
def test_mfu_summary_missing_inputs_give_none(flops, step, peak, achieved_none, mfu_none):
    s = mfu_summary(flops, step, peak)
    assert (s["achieved_flops_per_s"] is None) == achieved_none
    assert (s["mfu"] is None) == mfu_none
    json.dumps(s, allow_nan=False)


def test_next_matmul_size_grows_while_predicted_time_fits():
    # 1 ms at 256 -> 8 ms predicted at 512: grow
    assert next_matmul_size(256, 0.001, target_s=0.05) == 512
    # 10 ms at 512 -> 80 ms predicted at 1024: stay
    assert next_matmul_size(512, 0.010, target_s=0.05) is None
    # the largest size never grows
    assert next_matmul_size(4096, 1e-6, target_s=0.05) is None


def test_matmuls_per_rep():
    assert matmuls_per_rep(0.001, 0.02) == 20
    assert matmuls_per_rep(0.1, 0.02) == 1
    assert matmuls_per_rep(0.0, 0.02) == 1
    assert matmuls_per_rep(1e-9, 0.02, cap=100) == 100


def test_peak_summary_best_and_median():
    s = peak_summary(1024, 2, [0.4, 0.1, 0.2, float("nan")])
    flops = 2 * matmul_flops(1024)
    assert s["reps"] == 3 and s["n"] == 1024 and s["matmuls_per_rep"] == 2
    assert s["flops_per_s"] == pytest.approx(flops / 0.1)
    assert s["median_flops_per_s"] == pytest.approx(flops / 0.2)
    empty = peak_summary(256, 1, [])
    assert empty["flops_per_s"] is None and empty["reps"] == 0


def test_per_sample_and_format():
    assert per_sample(8e9, 4) == 2e9
    assert per_sample(8e9, 0) is None
    assert fmt_flops(1.5e12) == "1.5 TFLOP"
    assert fmt_flops(2.5e10, per_s=True) == "25 GFLOP/s"
    assert fmt_flops(None) == "n/a"


def test_flops_section_without_entries_and_unmeasured():
    assert FlopsSection().render([{"probes": {}, "config": {}}]) is None
    md = FlopsSection().render([{"config": {"bench": {"variant": "efficient"}}, "env": {"backend": "cpu"},
                                 "probes": {"flops": {"status": "ok", "measured": False, "reason": "toy"}}}])
    head, row = md.splitlines()[0], md.splitlines()[2]
    assert "note" in head and "toy" in row and "efficient" in row


# --------------------------------------------------------------------------- the micro-benchmark
def test_matmul_peak_is_time_boxed_and_plausible():
    r = measure_matmul_peak(CPUBackend(), torch.float32, budget_s=0.2)
    assert r["time_s"] < 1.0
    assert r["reps"] >= 1 and r["n"] in (256, 512, 1024, 2048, 4096)
    assert r["kernel"] in ("mm", "linear") and r["dtype"] == "float32"
    assert 1e8 < r["flops_per_s"] < 1e14  # any CPU: 0.1 GFLOP/s .. 100 TFLOP/s
    assert r["median_flops_per_s"] <= r["flops_per_s"] * 1.0001
    json.dumps(r, allow_nan=False)


# --------------------------------------------------------------------------- real runs
def test_probe_is_cheap_and_registers():
    plugins = build_plugins(["hjepa_bench.builtin.probe_flops"])
    assert plugins.probes()["flops"].cost == "cheap"
    assert "flops" in [p.name for p in plugins.select_probes(None)]
    assert "flops" in [s.name for s in plugins.report_sections()]


def test_real_hjepa_run_on_cpu(tiny):
    config = tiny()
    record = run_benchmark(config, CPUBackend(), HJEPAWorkload(), [FlopsProbe()], {"backend": "cpu"})
    assert record["status"] == "ok", record["error"]
    e = record["probes"]["flops"]
    json.dumps(e, allow_nan=False)  # JSON-serialisable, no NaN
    assert e["status"] == "ok" and e["measured"] is True
    assert e["attention_counted"] is True
    assert e["variant"] == "reference" and e["precision"] == "fp32" and e["batch_size"] == 4
    assert e["flops_per_step"] == count_step_flops(config, "reference", 4)["total"] > 0
    assert e["flops_per_sample"] == pytest.approx(e["flops_per_step"] / 4)
    median = record["metrics"]["step_time_s"]["median"]
    assert e["median_step_s"] == median
    assert e["achieved_flops_per_s"] == pytest.approx(e["flops_per_step"] / median)
    assert e["peak_precision"] == "fp32" and list(e["peak_by_precision"]) == ["fp32"]
    assert e["peak_flops_per_s"] == e["peak_by_precision"]["fp32"]["flops_per_s"] > 0
    assert 0 < e["mfu"] < 1.5
    assert math.isclose(e["mfu"], e["achieved_flops_per_s"] / e["peak_flops_per_s"])
    assert "not a datasheet" in e["peak_note"]
    assert e["probe_time_s"] < 3.0  # ~1 s: 0.3 s counting + 0.5 s of matmuls
    md = FlopsSection().render([record])
    assert "MFU %" in md and "vit_tiny" in md and "not a datasheet" in md


def test_run_precision_gets_its_own_peak(tiny):
    record = run_benchmark(tiny(**{"bench.precision": "bf16", "bench.min_steps": 2, "bench.max_steps": 2}),
                           CPUBackend(), HJEPAWorkload(), [FlopsProbe()], {"backend": "cpu"})
    assert record["status"] == "ok", record["error"]
    e = record["probes"]["flops"]
    assert e["precision"] == "bf16" and set(e["peak_by_precision"]) == {"fp32", "bf16"}
    assert e["peak_by_precision"]["bf16"]["dtype"] == "bfloat16"
    assert e["peak_flops_per_s"] == e["peak_by_precision"]["bf16"]["flops_per_s"]
    assert e["mfu"] > 0
    json.dumps(e, allow_nan=False)


class _ToyPrepared(PreparedWorkload):
    batch_size = 4

    def __init__(self):
        self.net = torch.nn.Linear(8, 8)

    def batches(self):
        while True:
            yield torch.randn(4, 8)

    def step(self, batch):
        loss = self.net(batch).pow(2).mean()
        loss.backward()
        return StepOutput(loss=loss.detach())


class _Toy(Workload):
    name = "toy"

    def prepare(self, config, backend):
        return _ToyPrepared()


def test_other_workload_is_not_measured(tiny):
    config = tiny(**{"bench.min_steps": 2, "bench.max_steps": 2})
    config = {**config, "bench": {**config["bench"], "workload": "toy"}}
    record = run_benchmark(config, CPUBackend(), _Toy(), [FlopsProbe()], {"backend": "cpu"})
    assert record["status"] == "ok"
    e = record["probes"]["flops"]
    assert e["measured"] is False and "hjepa" in e["reason"] and "'toy'" in e["reason"]
    assert "flops_per_step" not in e
    md = FlopsSection().render([record])
    assert md is not None and "hjepa" in md
