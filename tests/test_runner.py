"""The run loop on real (tiny) torch steps: statuses, timing split, adaptive stopping, probes."""
from __future__ import annotations

import json
import time

import pytest
import torch

from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.api import PreparedWorkload, Probe, StepOutput, Workload
from hjepa_bench.record import check_record, dumps


class ToyPrepared(PreparedWorkload):
    """A real tiny training step with knobs for data wait, step time and failures."""

    def __init__(self, data_sleep=0.0, step_sleep=0.0, fail=None, fail_at=3):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(8, 8)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01)
        self.data_sleep, self.step_sleep, self.fail, self.fail_at = data_sleep, step_sleep, fail, fail_at
        self.n = 0
        self.batch_size = 4
        self.closed = False

    def batches(self):
        while True:
            time.sleep(self.data_sleep)
            yield torch.randn(4, 8)

    def step(self, batch):
        self.n += 1
        loss = self.net(batch).pow(2).mean()
        if self.fail == "nan" and self.n >= self.fail_at:
            loss = loss * float("nan")
        if self.fail == "oom" and self.n >= self.fail_at:
            torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses at once
        if self.fail == "error" and self.n >= self.fail_at:
            raise ValueError("shapes do not line up")
        self.opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        self.opt.step()
        time.sleep(self.step_sleep)
        return StepOutput(loss=loss.detach(), grad_norm=norm)

    def params(self):
        return {"total": 72, "trainable": 72}

    def close(self):
        self.closed = True


class ToyWorkload(Workload):
    name = "toy"

    def __init__(self, **kw):
        self.kw = kw
        self.prepared = None

    def prepare(self, config, backend):
        self.prepared = ToyPrepared(**self.kw)
        return self.prepared


class CountingProbe(Probe):
    name = "counting"

    def __init__(self):
        self.started = 0
        self.steps = 0

    def start(self, ctx):
        self.started += 1

    def after_step(self, ctx, sample):
        self.steps += 1

    def finish(self, ctx, record):
        return {"started": self.started, "steps": self.steps, "status_seen": record["status"]}


def _run(tiny, workload, probes=(), **bench):
    values = tiny(**{f"bench.{k}": v for k, v in bench.items()})
    return run_benchmark(values, CPUBackend(), workload, list(probes), {"backend": "cpu"})


def test_ok_record_with_probe_entry(tiny):
    probe, wl = CountingProbe(), ToyWorkload(step_sleep=0.002)
    r = _run(tiny, wl, [probe], warmup_steps=2, min_steps=5, max_steps=12)
    check_record(r)
    m = r["metrics"]
    assert r["status"] == "ok" and wl.prepared.closed
    assert 5 <= m["measured_steps"] <= 12 and m["warmup"]["steps"] == 2
    assert m["it_per_s"] > 0 and m["samples_per_s"] == pytest.approx(m["it_per_s"] * 4)
    assert m["step_time_s"]["median"] >= 0.002
    counting = {"status": "ok", "started": 1, "steps": m["measured_steps"] + 2, "status_seen": "ok"}
    assert r["probes"]["counting"] == counting
    assert len(r["series"]["step_time_s"]) == m["measured_steps"] + 2
    assert m["batch_size"] == {"requested": 4, "achieved": 4}


def test_data_wait_is_separated_from_host_work(tiny):
    r = _run(tiny, ToyWorkload(data_sleep=0.02, step_sleep=0.004), min_steps=8, max_steps=8)
    m = r["metrics"]
    assert m["data_wait_frac"] > 0.6
    assert m["host_frac"] < 0.35
    assert m["data_wait_frac"] + m["host_frac"] <= 1.01


@pytest.mark.parametrize("fail,status,fragment", [
    ("nan", "diverged", "non-finite loss at step"),
    ("oom", "oom", "allocat"),
    ("error", "error", "ValueError: shapes do not line up"),
])
def test_failures_become_statuses_and_keep_what_was_measured(tiny, fail, status, fragment):
    probe = CountingProbe()
    wl = ToyWorkload(fail=fail, fail_at=6)
    r = _run(tiny, wl, [probe], warmup_steps=1, min_steps=20, max_steps=20, window_steps=2)
    assert r["status"] == status and fragment in r["error"]
    assert wl.prepared.closed
    assert r["probes"]["counting"]["status_seen"] == status
    check_record(json.loads(dumps(r)))  # the record as written: NaN (the diverged step's) becomes null
    assert r["metrics"]["measured_steps"] >= 2  # the windows before the failure are kept


def test_adaptive_stop_at_target_precision(tiny):
    r = _run(tiny, ToyWorkload(step_sleep=0.01), min_steps=10, max_steps=400, target_rel_precision=0.05,
             max_time_s=60.0)
    m = r["metrics"]
    assert m["stop_reason"] == "precision"
    assert m["measured_steps"] < 400
    assert m["step_time_s"]["rel_ci95"] <= 0.05


def test_time_cap_is_respected(tiny):
    """Once the minimum steps are measured, the time target stops the loop (below the minimum it
    goes on up to the hard cap: tests/test_measurement_policy.py)."""
    r = _run(tiny, ToyWorkload(step_sleep=0.05), min_steps=5, max_steps=1000, max_time_s=0.6,
             target_rel_precision=0.0001)
    m = r["metrics"]
    assert m["stop_reason"] == "max_time" and m["measured_steps"] >= 5
    assert m["measured_time_s"] <= 0.6 + 0.05  # the loop does not start a step that would end past the cap


class BrokenProbe(Probe):
    name = "broken"

    def __init__(self, where):
        self.where = where

    def start(self, ctx):
        if self.where == "start":
            raise RuntimeError("cannot start")

    def after_step(self, ctx, sample):
        if self.where == "after_step" and sample.index == 2:
            raise ZeroDivisionError("bad step hook")

    def finish(self, ctx, record):
        if self.where == "finish":
            raise KeyError("missing")
        return {"fine": True}


@pytest.mark.parametrize("where", ["start", "after_step", "finish"])
def test_a_failing_probe_is_recorded_and_never_breaks_the_run(tiny, where):
    good = CountingProbe()
    r = _run(tiny, ToyWorkload(), [BrokenProbe(where), good], warmup_steps=1, min_steps=4, max_steps=4)
    assert r["status"] == "ok"
    assert r["probes"]["broken"]["status"] == "failed" and r["probes"]["broken"]["error"]
    assert r["probes"]["counting"]["status"] == "ok" and r["probes"]["counting"]["steps"] == 5
