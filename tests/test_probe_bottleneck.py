"""The bottleneck probe: pure verdict rules on hand-made shares, and one real run."""
from __future__ import annotations

import json
import time

import pytest
import torch

from hjepa_bench.analysis.bottleneck import (CPU_SATURATED_PCT, DATA_BOUND_SHARE, analyze_bottleneck,
                                             bottleneck_verdict, cpu_summary, cpu_times_util, step_shares)
from hjepa_bench.plugin.api import PreparedWorkload, StepOutput, Workload
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.plugins import probe_bottleneck
from hjepa_bench.plugins.backend_cpu import CPUBackend
from hjepa_bench.report.sections import render_report
from hjepa_bench.measure.runner import run_benchmark

PHASES = {"inputs_masks": 0.002, "forward_backward": 0.010, "optimizer": 0.004, "ema": 0.004}


def _metrics(data, host, phases=PHASES):
    return {"data_wait_frac": data, "host_frac": host, "host_phases_s": dict(phases)}


# --------------------------------------------------------------------------- shares
def test_shares_on_cpu_count_forward_backward_as_device():
    s = step_shares(0.05, 0.9, PHASES, "cpu")
    # host 0.9 split 2:10:4:4 -> masks .09, fb .45, opt .18, ema .18
    assert s["host_phases"] == pytest.approx({"inputs_masks": 0.09, "optimizer": 0.18, "ema": 0.18})
    assert s["host"] == pytest.approx(0.45)
    assert s["device"] == pytest.approx(0.05 + 0.45)  # loop remainder + forward_backward
    assert s["data_wait"] + s["host"] + s["device"] == pytest.approx(1.0)


def test_shares_on_accelerators_count_all_host_time_as_host():
    s = step_shares(0.05, 0.6, PHASES, "cuda")
    assert s["host"] == pytest.approx(0.6)
    assert s["host_phases"]["forward_backward"] == pytest.approx(0.3)
    assert s["device"] == pytest.approx(0.35)


def test_unnamed_step_time_is_compute_on_cpu_and_other_host_on_mps():
    assert step_shares(0.0, 0.8, {}, "cpu")["device"] == pytest.approx(1.0)
    mps = step_shares(0.0, 0.8, {}, "mps")
    assert mps["host_phases"] == {"other": pytest.approx(0.8)} and mps["device"] == pytest.approx(0.2)
    assert step_shares(None, None, PHASES, "cpu") is None


# --------------------------------------------------------------------------- verdicts
def test_data_bound_with_idle_cpu_advises_more_workers():
    e = analyze_bottleneck(_metrics(0.4, 0.5), "mps", workers=4, cores=10, cpu_samples=[[30.0] * 10] * 3)
    assert e["verdict"] == "data-bound"
    assert e["evidence"]["data_wait_share"] == pytest.approx(0.4)
    assert str(DATA_BOUND_SHARE * 100)[:2] in e["evidence"]["rule"]
    assert e["cpu_saturated"] is False and e["cpu_util_mean_pct"] == pytest.approx(30.0)
    assert e["worker_advice"].startswith("increase num_workers to 6-8")
    json.dumps(e, allow_nan=False)


def test_host_bound():
    e = analyze_bottleneck(_metrics(0.02, 0.8), "cuda", workers=4, cores=10, cpu_samples=[[50.0] * 10])
    assert e["verdict"] == "host-bound"
    assert e["evidence"]["host_share"] > e["evidence"]["device_share"]
    assert e["evidence"]["largest_host_phase"]["name"] == "forward_backward"
    assert e["worker_advice"].startswith("keep num_workers at 4")


def test_device_bound():
    e = analyze_bottleneck(_metrics(0.03, 0.2), "cuda", workers=4, cores=10, cpu_samples=[[20.0] * 10])
    assert e["verdict"] == "device-bound"
    assert e["shares"]["device"] == pytest.approx(0.77)
    assert e["evidence"]["data_wait_notable"] is False


def test_saturated_cpu_advises_fewer_workers_even_when_data_bound():
    hot = [[99.0, 97.0, 95.0, 96.0]] * 4
    e = analyze_bottleneck(_metrics(0.3, 0.6), "cpu", workers=8, cores=4, cpu_samples=hot)
    assert e["cpu_saturated"] is True and e["cpu_util_mean_pct"] > CPU_SATURATED_PCT
    assert e["cpu_util_per_core_pct"] == [99.0, 97.0, 95.0, 96.0]
    assert e["verdict"] == "data-bound"
    assert e["worker_advice"].startswith("decrease num_workers to 2")


def test_between_tb_profiler_rule_and_ours_is_notable_not_data_bound():
    verdict, ev = bottleneck_verdict(step_shares(0.07, 0.2, PHASES, "cuda"))
    assert verdict == "device-bound" and ev["data_wait_notable"] is True
    assert bottleneck_verdict(None) == (None, {"rule": "no measured steps: no verdict"})


def test_cpu_summary_and_fallback():
    assert cpu_summary([])["cpu_util_mean_pct"] is None
    fb = cpu_summary([], fallback_per_core=[50.0, 70.0])
    assert fb["cpu_util_mean_pct"] == 60.0 and fb["cpu_saturated"] is False and fb["cpu_samples"] == 0
    before = [{"user": 1.0, "system": 0.0, "idle": 9.0}, {"user": 0.0, "system": 0.0, "idle": 10.0}]
    after = [{"user": 2.0, "system": 0.0, "idle": 9.0}, {"user": 0.5, "system": 0.0, "idle": 10.5}]
    assert cpu_times_util(before, after) == pytest.approx([100.0, 50.0])


# --------------------------------------------------------------------------- a real run
class _SlowData(PreparedWorkload):
    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(8, 8)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01)
        self.batch_size = 4

    def batches(self):
        while True:
            time.sleep(0.03)  # a slow loader
            yield torch.randn(4, 8)

    def step(self, batch):
        loss = self.net(batch).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return StepOutput(loss=loss.detach())


class _SlowDataWorkload(Workload):
    name = "slow-data"

    def prepare(self, config, backend):
        return _SlowData()


def test_real_run_with_a_slow_loader_is_data_bound(tiny):
    values = tiny(**{"bench.warmup_steps": 1, "bench.min_steps": 12, "bench.max_steps": 12})
    r = run_benchmark(values, CPUBackend(), _SlowDataWorkload(), [probe_bottleneck.BottleneckProbe()],
                      {"backend": "cpu"})
    assert r["status"] == "ok"
    e = r["probes"]["bottleneck"]
    assert e["status"] == "ok" and e["verdict"] == "data-bound"
    assert e["shares"]["data_wait"] > DATA_BOUND_SHARE
    assert e["cpu_util_mean_pct"] is not None and len(e["cpu_util_per_core_pct"]) == e["cores"]
    assert e["cpu_samples"] >= 1  # 12 x 30 ms > one 0.25 s interval
    assert e["process_cpu"]["process_tree_cpu_pct"] >= 0
    assert e["workers"] == 0 and e["worker_advice"]
    json.dumps(e, allow_nan=False)
    assert not any(t.name == "hjepa-bench-bottleneck-cpu" and t.is_alive()
                   for t in __import__("threading").enumerate())
    text = render_report([r], [probe_bottleneck.BottleneckSection()])
    assert "data-bound" in text and "Bottleneck" in text
    assert probe_bottleneck.BottleneckSection().render([{"probes": {}}]) is None


def test_registers_through_the_hooks():
    plugins = build_plugins(objects=[("probe_bottleneck", probe_bottleneck)])
    assert plugins.probes()["bottleneck"].cost == "cheap"
    assert "bottleneck" in [s.name for s in plugins.report_sections()]
