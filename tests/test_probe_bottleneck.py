"""The bottleneck probe: pure verdict rules on hand-made shares, and one real run."""
from __future__ import annotations

import json
import os
import re
import time

import pytest
import torch

from hjepa_bench.analysis.bottleneck import (
    CPU_SATURATED_PCT,
    DATA_BOUND_SHARE,
    analyze_bottleneck,
    bottleneck_verdict,
    cpu_summary,
    cpu_times_util,
    step_shares,
)
from hjepa_bench.builtin import probe_bottleneck
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.api import PreparedWorkload, StepOutput, Workload
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.report.sections import render_report

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
def _tree(pct_of_one_core):
    """The probe's process-tree reading: CPU time / wall time, 100 = one core busy."""
    return {"process_tree_cpu_pct": pct_of_one_core}


def test_data_bound_with_idle_cpu_advises_more_workers():
    e = analyze_bottleneck(_metrics(0.4, 0.5), "mps", workers=4, cores=10, cpu_samples=[[30.0] * 10] * 3,
                           process_cpu=_tree(250.0))
    assert e["verdict"] == "data-bound"
    assert e["evidence"]["data_wait_share"] == pytest.approx(0.4)
    assert str(DATA_BOUND_SHARE * 100)[:2] in e["evidence"]["rule"]
    assert e["cpu_saturated"] is False and e["cpu_util_mean_pct"] == pytest.approx(30.0)
    assert e["own_cpu_pct_of_cores"] == pytest.approx(25.0) and e["other_cpu_pct_of_cores"] == pytest.approx(5.0)
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


def test_own_saturated_cpu_advises_fewer_workers():
    hot = [[99.0, 97.0, 95.0, 96.0]] * 4
    e = analyze_bottleneck(_metrics(0.03, 0.9), "cpu", workers=8, cores=4, cpu_samples=hot, process_cpu=_tree(380.0))
    assert e["cpu_saturated"] is True and e["own_cpu_pct_of_cores"] == pytest.approx(95.0)
    assert e["cpu_util_per_core_pct"] == [99.0, 97.0, 95.0, 96.0]
    assert e["verdict"] != "data-bound"
    assert e["worker_advice"].startswith("decrease num_workers to 2: the benchmark's own processes saturate")


def test_data_bound_is_checked_before_cpu_saturation():
    """Data-bound wins: a run that waits for data is told so, even when its own processes fill the CPU;
    the saturation is named as the caveat, never turned into "decrease num_workers"."""
    hot = [[99.0, 97.0, 95.0, 96.0]] * 4
    e = analyze_bottleneck(_metrics(0.3, 0.6), "cpu", workers=2, cores=4, cpu_samples=hot, process_cpu=_tree(380.0))
    assert e["verdict"] == "data-bound" and e["cpu_saturated"] is True
    assert e["worker_advice"].startswith("increase num_workers to 6-8")
    assert "already use 95% of the 4 cores" in e["worker_advice"] and "decrease" not in e["worker_advice"]


def test_foreign_load_is_context_not_saturation():
    """The whole machine at ~97% while this run's processes use 20% of the cores: not saturated by us."""
    hot = [[99.0, 97.0, 95.0, 96.0]] * 4
    e = analyze_bottleneck(_metrics(0.02, 0.3), "cuda", workers=8, cores=4, cpu_samples=hot, process_cpu=_tree(80.0))
    assert e["cpu_util_mean_pct"] > CPU_SATURATED_PCT and e["cpu_saturated"] is False
    # not "decrease to 2" (the load is not ours); 8 workers on 4 cores is its own fact, said as the run warns it
    assert e["worker_advice"].startswith("use at most 4 num_workers: 8 workers on 4 CPU cores")
    assert "decrease" not in e["worker_advice"]
    assert "other processes used 77% of the CPU" in e["worker_advice"]


def test_between_tb_profiler_rule_and_ours_is_notable_not_data_bound():
    verdict, ev = bottleneck_verdict(step_shares(0.07, 0.2, PHASES, "cuda"))
    assert verdict == "device-bound" and ev["data_wait_notable"] is True
    assert bottleneck_verdict(None) == (None, {"rule": "no measured steps: no verdict"})


def test_cpu_summary_and_fallback():
    assert cpu_summary([])["cpu_util_mean_pct"] is None
    fb = cpu_summary([], fallback_per_core=[50.0, 70.0])
    assert fb["cpu_util_mean_pct"] == 60.0 and fb["cpu_samples"] == 0
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


class _Sleepy(PreparedWorkload):
    """A step that waits (a sleep: no CPU) and a loader with no wait: a run that uses little CPU."""

    def __init__(self):
        self.batch_size = 4

    def batches(self):
        while True:
            yield torch.zeros(4, 8)

    def step(self, batch):
        time.sleep(0.05)
        return StepOutput(loss=batch.sum())


class _SleepyWorkload(Workload):
    name = "sleepy"

    def prepare(self, config, backend):
        return _Sleepy()


def test_real_run_under_foreign_load_does_not_blame_the_workers(tiny):
    """Busy-loop processes (not the benchmark's) fill every core while a run that barely uses the CPU
    is measured with 4 workers configured: the advice must not be "CPU saturated, decrease workers"."""
    import subprocess
    import sys

    # each hog forks and its parent exits at once, so the hog is not a descendant of this process
    # (a child of the test process would be counted as the benchmark's own process tree)
    hog = "import os, sys\nif os.fork():\n    sys.exit(0)\nprint(os.getpid(), flush=True)\nwhile True: pass"
    hogs = []
    for _ in range((os.cpu_count() or 1) + 1):
        with subprocess.Popen([sys.executable, "-c", hog], stdout=subprocess.PIPE, text=True) as launcher:
            hogs.append(int(launcher.stdout.readline()))
    try:
        time.sleep(0.5)  # the loops are spinning
        values = tiny(**{"data.num_workers": 4, "bench.warmup_steps": 1, "bench.min_steps": 30,
                         "bench.max_steps": 30})
        r = run_benchmark(values, CPUBackend(), _SleepyWorkload(), [probe_bottleneck.BottleneckProbe()],
                          {"backend": "cpu"})
    finally:
        import signal
        for pid in hogs:
            os.kill(pid, signal.SIGKILL)
    e = r["probes"]["bottleneck"]
    assert e["status"] == "ok" and e["workers"] == 4
    assert e["cpu_util_mean_pct"] > CPU_SATURATED_PCT  # system-wide load above the saturation mark
    assert e["own_cpu_pct_of_cores"] < 50 and e["cpu_saturated"] is False
    assert e["other_cpu_pct_of_cores"] > 40
    assert "decrease" not in e["worker_advice"] and "saturat" not in e["worker_advice"]
    # 4 workers: kept where there are 4 cores, else the advice says what the run warns (more workers than cores)
    cores = os.cpu_count() or 1
    want = "keep num_workers at 4" if cores >= 4 else f"use at most {cores} num_workers: 4 workers on {cores} CPU cores"
    assert e["worker_advice"].startswith(want) and "other processes used" in e["worker_advice"]


class _AsyncDevice:
    """A fake accelerator: work is queued and runs in order on a background thread, like a CUDA stream."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.stream = ThreadPoolExecutor(max_workers=1)
        self.last = None

    def enqueue(self, seconds):
        self.last = self.stream.submit(time.sleep, seconds)

    def wait(self):  # what cudaDeviceSynchronize / a read-back (nonzero, .item()) does
        if self.last is not None:
            self.last.result()


class _AsyncBackend(CPUBackend):
    """A backend whose synchronize() waits for the fake device's queued work (named as an accelerator,
    so the bottleneck shares treat its step time as dispatch)."""

    name = "cuda"

    def __init__(self, device):
        super().__init__()
        self.dev = device

    def synchronize(self):
        self.dev.wait()


class _DeviceBoundStep(PreparedWorkload):
    """The reference step's shape on an asynchronous device: "inputs_masks" reads back from the device
    (waits for the queued work of the previous step), then "forward_backward" queues 40 ms of device
    work and returns at once.  Host work is ~1 ms: the run is device-bound."""

    syncs_in_step = True  # like the reference H-JEPA step (hjepa_bench/builtin/workload_hjepa.py)

    def __init__(self, device):
        self.dev = device
        self.batch_size = 4

    def batches(self):
        while True:
            yield torch.zeros(4, 8)

    def step(self, batch):
        t0 = time.perf_counter()
        self.dev.wait()  # the masks' nonzero(): a host-device sync
        time.sleep(0.001)  # the host part of mask building
        t1 = time.perf_counter()
        self.dev.enqueue(0.04)  # forward, backward, optimizer, EMA: queued device work
        t2 = time.perf_counter()
        return StepOutput(loss=batch.sum(), host_s={"inputs_masks": t1 - t0, "forward_backward": t2 - t1})


class _DeviceBoundWorkload(Workload):
    name = "device-bound"

    def __init__(self, device):
        self.dev = device

    def prepare(self, config, backend):
        return _DeviceBoundStep(self.dev)


def test_asynchronous_device_work_is_device_time_not_the_masks_host_phase(tiny):
    """On an asynchronous device the previous step's compute must not land in the host phase that first
    syncs: the runner waits for it before step() and counts it as device time, so the run reads
    device-bound, not host-bound with nearly all the time in "inputs_masks"."""
    dev = _AsyncDevice()
    values = tiny(**{"bench.warmup_steps": 2, "bench.min_steps": 20, "bench.max_steps": 20})
    r = run_benchmark(values, _AsyncBackend(dev), _DeviceBoundWorkload(dev), [probe_bottleneck.BottleneckProbe()],
                      {"backend": "cuda"})
    assert r["status"] == "ok"
    m, e = r["metrics"], r["probes"]["bottleneck"]
    assert e["verdict"] == "device-bound", e["evidence"]["rule"]
    assert e["shares"]["device"] > 0.8 and e["shares"]["host"] < 0.2
    assert m["device_wait_frac"] > 0.5 and e["evidence"]["device_wait_share"] == m["device_wait_frac"]
    assert m["host_phases_s"]["inputs_masks"] < 0.2 * m["step_time_s"]["median"]
    waits = r["series"]["device_wait_s"][r["series"]["warmup_steps"]:]
    assert len(waits) == 20 and sum(waits) == pytest.approx(m["device_wait_frac"] * m["measured_time_s"])


def test_the_reference_hjepa_step_asks_for_the_sync_and_the_efficient_one_does_not(tiny):
    from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload

    for variant, syncs in (("reference", True), ("efficient", False)):
        prepared = HJEPAWorkload().prepare(tiny(**{"bench.variant": variant}), CPUBackend())
        try:
            assert prepared.syncs_in_step is syncs
        finally:
            prepared.close()


def test_registers_through_the_hooks():
    plugins = build_plugins(objects=[("probe_bottleneck", probe_bottleneck)])
    assert plugins.probes()["bottleneck"].cost == "cheap"
    assert "bottleneck" in [s.name for s in plugins.report_sections()]


def test_more_workers_than_cores_is_never_kept():
    """The run warns "N workers on C cores: the workers compete with the step"; its advice says the same."""
    e = analyze_bottleneck(_metrics(0.02, 0.3), "cpu", workers=4, cores=2, process_cpu=_tree(120.0))
    assert e["cpu_saturated"] is False and e["verdict"] != "data-bound"
    assert e["worker_advice"].startswith("use at most 2 num_workers: 4 workers on 2 CPU cores compete with the step")


@pytest.mark.parametrize("data_share, tree_pct", [(0.6, 120.0), (0.02, 195.0), (0.6, 195.0)])
def test_more_workers_than_cores_is_advised_the_cores_whatever_the_verdict(data_share, tree_pct):
    """A data-bound or CPU-saturated run with more workers than cores is told "use at most <cores>":
    never "increase" (more cannot help), never a count above the cores."""
    e = analyze_bottleneck(_metrics(data_share, 0.3), "cpu", workers=3, cores=2, process_cpu=_tree(tree_pct))
    advised = re.match(r"(?:use at most|decrease num_workers to) (\d+)", e["worker_advice"])
    assert advised and int(advised.group(1)) <= 2, e["worker_advice"]
    assert "increase" not in e["worker_advice"] and "keep" not in e["worker_advice"]


def test_a_data_bound_run_already_at_the_cores_room_is_not_told_to_increase():
    """4 cores, 3 workers, data-bound: the cap below 10 cores is cores - 1 = 3, so "increase to 6-8
    (use at most 3)" would contradict itself; the advice keeps 3 and asks for a side-by-side sweep."""
    e = analyze_bottleneck(_metrics(0.4, 0.3), "cpu", workers=3, cores=4, process_cpu=_tree(150.0))
    assert e["verdict"] == "data-bound"
    assert e["worker_advice"].startswith("keep num_workers at 3: data wait dominates"), e["worker_advice"]


def _rank(q, spin: bool) -> None:
    """One local rank of a fake job: rank 0 samples its own CPU share, rank 1 spins."""
    from hjepa_bench.builtin.probe_bottleneck import _CPUSampler

    if spin:
        end = time.perf_counter() + 3.0
        while time.perf_counter() < end:
            pass
        return
    time.sleep(0.3)  # the sibling is running
    sampler = _CPUSampler()
    sampler.start()
    time.sleep(2.0)
    sampler.stop_event.set()
    sampler.join(5)
    q.put({**sampler.process_cpu(), "pids": sorted(sampler.child_base)})


def test_the_other_ranks_of_a_job_are_its_own_processes(monkeypatch):
    """Rank 0's "own CPU" counts rank 1 (a sibling started by the same launcher), not "other processes"."""
    import multiprocessing as mp

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # what torchrun sets in each rank
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ranks = [ctx.Process(target=_rank, args=(q, spin)) for spin in (True, False)]
    for p in ranks:
        p.start()
    cpu = q.get(timeout=30)
    for p in ranks:
        p.join(30)
    assert ranks[0].pid in cpu["pids"]  # the spinning sibling rank is counted as the job's own ...
    assert cpu["children_cpu_pct"] > 0, cpu  # ... with the CPU time it spent (its share depends on the load)


# --------------------------------------------------------------------------- an asynchronous device
class _QueuedDevice:
    """A device like CUDA in the respects the timeline depends on: work runs in order on its own
    timeline (a thread); launching is asynchronous until ``depth`` launches are pending, then the host
    blocks until one finishes (a full launch queue); events recorded on the stream take the device's time
    when the device reaches them; ``synchronize`` waits for everything queued."""

    def __init__(self, depth: int):
        import queue
        import threading

        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            kind, arg = self.queue.get()
            if kind == "kernel":
                time.sleep(arg)
            else:
                arg.t = time.perf_counter()
                arg.done.set()
            self.queue.task_done()

    def launch(self, seconds: float) -> None:
        self.queue.put(("kernel", seconds))  # blocks while the queue is full

    def synchronize(self) -> None:
        self.queue.join()


class _QueuedEvent:
    def __init__(self, device: _QueuedDevice):
        import threading

        self.device, self.t, self.done = device, None, threading.Event()

    def record(self) -> None:
        self.device.queue.put(("event", self))

    def elapsed_s(self, end: _QueuedEvent) -> float:
        end.done.wait(30)
        self.done.wait(30)
        return end.t - self.t


class _QueuedBackend(CPUBackend):
    """The backend of that device (named cuda: the analysis treats it as the asynchronous GPU it fakes)."""

    name = "cuda"

    def __init__(self, depth: int):
        super().__init__()
        self.gpu = _QueuedDevice(depth)

    def synchronize(self) -> None:
        self.gpu.synchronize()

    def has_device_events(self) -> bool:
        return True

    def event(self):
        return _QueuedEvent(self.gpu)


class _Kernels(PreparedWorkload):
    """Two phases of ``n`` kernels each: per kernel, ``host_s`` of host work, then a launch of ``device_s``."""

    batch_size = 1

    def __init__(self, backend: _QueuedBackend, n: int, host_s: float, device_s: float):
        self.backend, self.n, self.host_cost, self.device_cost = backend, n, host_s, device_s

    def batches(self):
        while True:
            yield torch.zeros(1)

    def step(self, batch):
        from hjepa_bench.plugin.api import PhaseClock

        clock = PhaseClock(self.phase_events)
        clock.mark()
        for phase in ("forward_backward", "optimizer"):
            for _ in range(self.n):
                time.sleep(self.host_cost)
                self.backend.gpu.launch(self.device_cost)
            clock.mark(phase)
        return StepOutput(loss=torch.tensor(1.0), host_s=clock.host_s(), phases=clock)


class _KernelsWorkload(Workload):
    name = "kernels"

    def __init__(self, **kw):
        self.kw = kw

    def prepare(self, config, backend):
        return _Kernels(backend, **self.kw)


def _async_verdict(host_s: float, device_s: float) -> dict:
    from helpers import tiny_config

    config = tiny_config(**{"bench.warmup_steps": 2, "bench.min_steps": 6, "bench.max_steps": 6})
    backend = _QueuedBackend(depth=8)
    record = run_benchmark(config, backend, _KernelsWorkload(n=6, host_s=host_s, device_s=device_s), [], {})
    assert record["status"] == "ok", record.get("error")
    entry = analyze_bottleneck(record["metrics"], "cuda", 0, 2)
    # the verdict without the timeline fields: all of step()'s wall time counted as host dispatch
    untimed = {k: v for k, v in record["metrics"].items() if k not in ("host_wait_frac", "data_wait_overlap_frac")}
    entry["untimed_verdict"] = analyze_bottleneck(untimed, "cuda", 0, 2)["verdict"]
    return entry


def test_a_device_bound_run_whose_host_blocks_on_a_full_launch_queue_reads_device_bound():
    """Each kernel takes the device 4 ms and the host 0.3 ms: the queue fills and the host blocks inside
    step(), so step()'s wall time is nearly all waiting: the run reads device-bound (counted as
    dispatch, the same time would read host-bound)."""
    entry = _async_verdict(host_s=0.0003, device_s=0.004)
    assert entry["verdict"] == "device-bound", entry["evidence"]
    assert entry["untimed_verdict"] == "host-bound"  # the blocked host counted as dispatch
    assert entry["host_wait_frac"] > 0.5  # the host's time in step() was mostly waiting
    assert entry["device_phases_s"]["forward_backward"] >= 6 * 0.004 * 0.9


def test_a_host_bound_run_on_the_same_device_stays_host_bound():
    entry = _async_verdict(host_s=0.004, device_s=0.0003)
    assert entry["verdict"] == "host-bound", entry["evidence"]
    assert entry["host_wait_frac"] < 0.2


def test_device_lag_split_counts_host_time_behind_a_busy_device_as_device_time():
    from hjepa_bench.analysis.bottleneck import device_lag_split

    # the device is 30 ms behind at the step start: the 20 ms of forward_backward on the host pass while it
    # still works through that backlog; it catches up during the optimizer (lag 0 at its start)
    marks = [("", 0.000, 0.030), ("forward_backward", 0.020, 0.050), ("optimizer", 0.030, 0.052)]
    split = device_lag_split(marks)
    assert split["forward_backward"] == pytest.approx({"host_s": 0.020, "device_s": 0.020, "wait_s": 0.020})
    # at the optimizer's start the device lagged 30 ms (0.050 vs 0.020): its 10 ms of host time are covered
    assert split["optimizer"] == pytest.approx({"host_s": 0.010, "device_s": 0.002, "wait_s": 0.010})
    # a device that keeps up: no wait
    caught_up = device_lag_split([("", 0.0, 0.0), ("forward_backward", 0.02, 0.0201)])
    assert caught_up["forward_backward"]["wait_s"] == 0.0
