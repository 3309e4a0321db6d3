"""The ``profiler`` probe: real tiny H-JEPA runs on CPU write torch.profiler traces that
TensorBoard's profiler plugin (torch-tb-profiler) loads, checked through its HTTP API."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS

from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.probe_profiler import ProfilerProbe, ProfilerSection, profiled_steps
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.manager import build_plugins

PLUGIN = "hjepa_bench.builtin.probe_profiler"


def _profiler_running() -> bool:
    return bool(torch._C._autograd._profiler_enabled())


def _run(config, artifacts_dir):
    return run_benchmark(config, CPUBackend(), HJEPAWorkload(), [ProfilerProbe()], {"backend": "cpu"},
                         artifacts_dir=None if artifacts_dir is None else str(artifacts_dir))


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One real tiny run: 1 warm-up + 6 measured steps, traces into a fresh folder."""
    from helpers import tiny_config

    out = tmp_path_factory.mktemp("traces")
    record = _run(tiny_config(**{"bench.warmup_steps": 1, "bench.min_steps": 6, "bench.max_steps": 6}), out)
    return out, record


# --------------------------------------------------------------------------- pure parts
def test_profiled_steps_follows_the_schedule():
    assert [profiled_steps(n) for n in range(8)] == [0, 0, 1, 2, 3, 3, 3, 3]


def test_probe_is_costly_and_chosen_by_name():
    plugins = build_plugins([PLUGIN])
    assert plugins.probes()["profiler"].cost == "costly"
    assert "profiler" not in [p.name for p in plugins.select_probes(None)]
    assert [p.name for p in plugins.select_probes(["profiler"])] == ["profiler"]
    assert ProfilerSection().render([{"probes": {}}]) is None


# --------------------------------------------------------------------------- real runs
@pytest.mark.slow
def test_trace_written_and_top_ops(profiled):
    out, record = profiled
    assert record["status"] == "ok", record["error"]
    e = record["probes"]["profiler"]
    json.dumps(e, allow_nan=False)
    assert e["status"] == "ok" and e["trace_dir"] == str(out.resolve())
    assert e["profiled_steps"] == 3 and e["steps_seen"] == 4 and e["trace_empty"] is False
    assert e["activities"] == ["CPU"]
    files = sorted(out.glob("*.pt.trace.json"))
    assert len(files) == 1 and e["trace_files"] == [str(files[0])]
    trace = json.loads(files[0].read_text())
    assert trace["traceEvents"]
    names = {ev.get("name", "") for ev in trace["traceEvents"]}
    assert {"ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"} <= names
    ops = e["top_ops_by_self_time"]
    assert 0 < len(ops) <= 15
    assert all(op["calls"] > 0 and op["self_cpu_ms"] > 0 for op in ops)
    assert [op["self_cpu_ms"] for op in ops] == sorted((op["self_cpu_ms"] for op in ops), reverse=True)
    assert any(op["name"].startswith("aten::") for op in ops)
    assert not any(op["name"].startswith("ProfilerStep") for op in ops)
    assert "top_ops_by_self_device_time" not in e  # CPU run: no device activity
    assert e["tensorboard_command"].startswith("tensorboard --logdir ")
    assert str(out.resolve()) in e["tensorboard_command"]
    assert not _profiler_running()
    md = ProfilerSection().render([record])
    assert "aten::" in md and "3 profiled steps" in md


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@pytest.mark.slow
def test_trace_loads_in_tensorboard_profiler_plugin(profiled, tmp_path):
    """Start a real ``tensorboard --logdir`` on 127.0.0.1 and ask torch-tb-profiler's HTTP API
    for the run, its views, workers, spans and the Overview (which parses the whole trace)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("torch_tb_profiler")
    out, record = profiled
    port = _free_port()
    log = open(tmp_path / "tensorboard.log", "wb")
    # own session: the server and the loader processes it forks are killed together
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(out),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler"
    q = urllib.parse.quote
    try:
        deadline = time.monotonic() + 40
        runs = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text(errors="replace")[-2000:]
            try:
                runs = _get_json(base + "/runs")
                if runs["runs"] and not runs["loading"]:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            time.sleep(0.3)
        assert runs and runs["runs"] == [out.name], f"no run loaded in time: {runs}"
        run = runs["runs"][0]
        views = _get_json(f"{base}/views?run={q(run)}")
        assert "Overview" in views and "Operator" in views and "Trace" in views
        workers = _get_json(f"{base}/workers?run={q(run)}&view={q('Overview')}")
        trace_file = Path(record["probes"]["profiler"]["trace_files"][0])
        assert len(workers) == 1 and workers[0] == trace_file.name.split(".")[0]
        spans = _get_json(f"{base}/spans?run={q(run)}&worker={q(workers[0])}")
        span = str(spans[0]) if spans else ""
        overview = _get_json(f"{base}/overview?run={q(run)}&worker={q(workers[0])}&span={q(span)}")
        steps = [row[0] for row in overview["steps"]["rows"]]
        assert steps == ["1", "2", "3"]  # the three active steps of schedule(wait=0, warmup=1, active=3)
        table = _get_json(f"{base}/operation/table?run={q(run)}&worker={q(workers[0])}&span={q(span)}"
                          f"&group_by=Operation")
        assert "aten::mm" in json.dumps(table)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_profiled_steps_are_outside_the_measured_window(profiled):
    """The traced steps run after the measured window: their indices follow the measured ones, they
    are in no series, and it/s is the measured steps over the measured windows' time only."""
    _, record = profiled
    e, m, series = record["probes"]["profiler"], record["metrics"], record["series"]
    warm, n = series["warmup_steps"], m["measured_steps"]
    measured = set(range(warm, warm + n))
    assert (warm, n) == (1, 6) and e["measured_step_indices"] == [1, 6]
    assert e["profiled_step_indices"] == [8, 9, 10]  # extra steps 7..10: profiler warm-up, then 3 traced
    assert not set(e["profiled_step_indices"]) & measured
    assert len(series["step_time_s"]) == warm + n and len(series["loss"]) == warm + n
    assert m["extra_steps"]["steps"] == 4 and m["extra_steps"]["first_index"] == warm + n
    assert m["extra_steps"]["for"] == ["profiler"] and m["extra_steps"]["error"] is None
    assert m["it_per_s"] == pytest.approx(n / m["measured_time_s"])
    assert sum(series["step_time_s"][warm:]) == pytest.approx(m["measured_time_s"], rel=0.05)


@pytest.mark.slow
def test_short_run_is_traced_after_it_in_a_temp_dir(tiny):
    # 1 warm-up + 1 measured step: the trace comes from the extra steps after them
    record = _run(tiny(**{"bench.warmup_steps": 1, "bench.min_steps": 1, "bench.max_steps": 1}), None)
    assert record["status"] == "ok", record["error"]
    e = record["probes"]["profiler"]
    json.dumps(e, allow_nan=False)
    assert e["profiled_steps"] == 3 and len(e["trace_files"]) == 1 and e["profiled_step_indices"] == [3, 4, 5]
    assert record["metrics"]["measured_steps"] == 1 and len(record["series"]["step_time_s"]) == 2
    assert any("temporary folder" in n for n in e["notes"])
    assert os.path.isdir(e["trace_dir"])
    assert not _profiler_running()


def test_failed_extra_steps_keep_the_measurement_and_a_partial_trace(tmp_path, tiny):
    """The 3rd extra step raises: the record is still ok with its measurement, the trace keeps the
    steps recorded before, and the entry says why it stopped."""
    from test_runner import ToyWorkload

    record = run_benchmark(tiny(**{"bench.warmup_steps": 1, "bench.min_steps": 3, "bench.max_steps": 3}),
                           CPUBackend(), ToyWorkload(fail="error", fail_at=7), [ProfilerProbe()], {"backend": "cpu"},
                           artifacts_dir=str(tmp_path))
    assert record["status"] == "ok" and record["metrics"]["measured_steps"] == 3
    extra = record["metrics"]["extra_steps"]
    assert extra["steps"] == 2 and extra["requested"] == 4 and "shapes do not line up" in extra["error"]
    e = record["probes"]["profiler"]
    assert e["profiled_steps"] == 1 and any("the extra steps failed after 2 of 4" in n for n in e["notes"])
    assert not _profiler_running()


def test_diverged_run_is_not_traced(tiny):
    from test_runner import ToyWorkload

    record = run_benchmark(tiny(**{"bench.warmup_steps": 1, "bench.min_steps": 4, "bench.max_steps": 4,
                                   "bench.window_steps": 1}),
                           CPUBackend(), ToyWorkload(fail="nan", fail_at=3), [ProfilerProbe()], {"backend": "cpu"})
    assert record["status"] == "diverged" and "extra_steps" not in record["metrics"]
    e = record["probes"]["profiler"]
    assert e["profiled_steps"] == 0 and any(n.startswith("not traced") for n in e["notes"])
    assert "not traced" in ProfilerSection().render([record])
    assert not _profiler_running()


def test_finish_twice_does_not_stop_twice(tiny, tmp_path):
    from hjepa_bench.plugin.api import RunContext, StepSample

    probe, backend = ProfilerProbe(), CPUBackend()
    work = HJEPAWorkload().prepare(tiny(), backend)
    try:
        ctx = RunContext(config=tiny(), backend=backend, workload=work, env={}, artifacts_dir=str(tmp_path))
        probe.start(ctx)
        probe.before_extra_steps(ctx)
        sample = StepSample(index=0, warmup=False, data_wait_s=0.0, host_s=0.0, extra=True)
        probe.after_extra_step(ctx, sample)  # warmup -> record: the profiler collects from here on
        assert _profiler_running()
        probe._stop()
        probe._stop()  # guarded: a second stop does nothing
        assert not _profiler_running()
        probe.after_extra_step(ctx, sample)  # after the stop: ignored
        e = probe.finish(ctx, {"status": "ok"})
        assert e["profiled_steps"] == 0 and e["trace_empty"] is True and e["steps_seen"] == 1
        assert probe.finish(ctx, {"status": "ok"}) is None  # nothing left to report
    finally:
        work.close()
    assert not _profiler_running()


@pytest.mark.slow
def test_cli_profile_writes_trace(cli, tmp_path):
    trace_dir, out = tmp_path / "traces", tmp_path / "out.json"
    r = cli("run", "--device", "cpu", *TINY_FLAGS, "--profile", "--trace-dir", str(trace_dir),
            "--json", str(out), "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(out.read_text())
    e = record["probes"]["profiler"]
    assert e["status"] == "ok" and e["profiled_steps"] == 3
    assert e["trace_dir"] == str(trace_dir.resolve())
    files = list(trace_dir.glob("*.pt.trace.json"))
    assert len(files) == 1 and e["trace_files"] == [str(files[0])]
    assert json.loads(files[0].read_text())["traceEvents"]
    assert e["top_ops_by_self_time"]
