"""Sweeps end to end: real child processes, fault statuses, SIGKILL + resume, truncated and
corrupt results files, merging across machines."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from hjepa_bench.errors import UserError
from hjepa_bench.measure.results import ResultsFile, read_results, results_frame
from hjepa_bench.measure.sweep import SweepSpec
from hjepa_bench.record import check_record

TESTS = Path(__file__).resolve().parent
TINY_SWEEP = ["--device", "cpu", "--img-size", "64", "--encoder-depth", "2", "--predictor-depths", "1",
              "--variants", "reference", "--warmup-steps", "1", "--min-steps", "3", "--max-steps", "6",
              "--max-time", "2", "--progress", "jsonl", "--options", "none"]


def sweep(*args, env=None, timeout=600):
    full = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hjepa_bench", *args], capture_output=True, text=True,
                          env=full, cwd=REPO, timeout=timeout)


def records(out: Path) -> list[dict]:
    return read_results(out / "results.jsonl").records


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real 2x2 sweep (batch 4,8 x workers 0,1) of tiny configs on CPU."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    res = sweep("sweep", *TINY_SWEEP, "--batch-sizes", "4,8", "--workers", "0,1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out, res


@pytest.mark.slow
def test_real_2x2_sweep(swept):
    out, res = swept
    recs = records(out)
    assert len(recs) == 4
    assert {(r["config"]["data"]["batch_size"], r["config"]["data"]["num_workers"]) for r in recs} == \
        {(4, 0), (4, 1), (8, 0), (8, 1)}
    for r in recs:
        check_record(r)
        assert r["status"] == "ok" and r["metrics"]["it_per_s"] > 0
    assert len({r["sweep"]["key"] for r in recs}) == 4
    assert "## Measured step speed" in (out / "report.md").read_text()
    ev = events(res.stdout)
    assert ev[0] == {**ev[0], "event": "plan", "total": 4, "to_run": 4}
    assert [e["k"] for e in ev if e["event"] == "done"] == [1, 2, 3, 4]
    assert ev[-1]["event"] == "end"


@pytest.mark.slow
def test_same_out_again_runs_nothing(swept, tmp_path):
    out, _ = swept
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    res = sweep("sweep", *TINY_SWEEP, "--batch-sizes", "4,8", "--workers", "0,1", "--out", str(copy), "--resume")
    assert res.returncode == 0, res.stderr
    assert events(res.stdout)[0]["to_run"] == 0
    assert len(records(copy)) == 4


@pytest.mark.slow
def test_truncated_last_line_is_reported_and_rerun(swept, tmp_path):
    out, _ = swept
    copy = tmp_path / "trunc"
    shutil.copytree(out, copy)
    path = copy / "results.jsonl"
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # cut the last record in half
    res = sweep("sweep", *TINY_SWEEP, "--batch-sizes", "4,8", "--workers", "0,1", "--out", str(copy),
                "--progress", "bar")
    assert res.returncode == 0, res.stderr
    assert "was incomplete" in res.stderr and "1 to run" in res.stderr
    recs = records(copy)
    assert len(recs) == 4 and len({r["sweep"]["key"] for r in recs}) == 4
    assert (copy / "results.jsonl.partial").exists()


@pytest.mark.slow
def test_corrupt_line_in_the_middle_is_one_sentence_and_nothing_is_lost(swept, tmp_path, capsys):
    from hjepa_bench.cli import main

    out, _ = swept
    copy = tmp_path / "corrupt"
    shutil.copytree(out, copy)
    path = copy / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = "{not json\n"
    path.write_text("".join(lines))
    before = path.read_bytes()
    code = main(["sweep", *TINY_SWEEP, "--batch-sizes", "4,8", "--workers", "0,1", "--out", str(copy)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "corrupt at line 2" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before


@pytest.mark.slow
def test_merging_two_machines_keeps_two_rows(swept, tmp_path):
    out, _ = swept
    other = tmp_path / "m1max"
    other.mkdir()
    store = ResultsFile(other)
    for r in records(out):
        r = json.loads(json.dumps(r))
        r["env"].update({"fingerprint_id": "m1max-fingerprint", "device_name": "Apple M1 Max", "backend": "mps"})
        store.append(r)
    df = results_frame([out, other])
    assert len(df) == 8
    assert df["fingerprint_id"].nunique() == 2
    assert (df.groupby("key").size() == 2).all()  # the same config measured on two machines: two rows
    assert set(df["device"]) >= {"Apple M1 Max"}


@pytest.mark.slow
def test_fault_injection_statuses(tmp_path):
    out = tmp_path / "faults"
    faults = json.dumps({"3": "oom", "4": "crash", "5": "hang", "6": "nan"})
    res = sweep("-p", "fault_plugin", "sweep", *TINY_SWEEP, "--workload", "hjepa_faults",
                "--batch-sizes", "2,3,4,5,6", "--workers", "0",
                "--no-skip-after-oom", "--out", str(out), env={"HJEPA_BENCH_TEST_FAULTS": faults})
    assert res.returncode == 0, res.stderr
    recs = records(out)
    by = {r["sweep"]["batch_size"]: r for r in recs}
    assert len(recs) == len(by) == 5
    ok, oom, crash, hang, nan = (by[b] for b in (2, 3, 4, 5, 6))
    assert ok["status"] == "ok"
    assert oom["status"] == "oom" and "allocat" in oom["error"]
    assert crash["status"] == "crashed" and "SIGSEGV" in crash["error"]
    # no --timeout: the hang is stopped at the deadline its warm-up set (analysis/policy.py), and a
    # slow start-up under load is not cut short by a fixed limit
    assert hang["status"] == "timeout" and hang["error"].startswith("timed out (benchmark): no result after")
    assert "the deadline its warm-up set" in hang["error"]
    assert nan["status"] == "diverged" and "non-finite loss" in nan["error"]
    # (an invalid grid value such as 7 hierarchy levels is a usage error before anything runs:
    # tests/test_bad_input.py)


@pytest.mark.slow
def test_larger_batches_are_skipped_after_oom(tmp_path):
    out = tmp_path / "skip"
    res = sweep("-p", "fault_plugin", "sweep", *TINY_SWEEP, "--workload", "hjepa_faults",
                "--batch-sizes", "3,4", "--workers", "0", "--out", str(out),
                env={"HJEPA_BENCH_TEST_FAULTS": json.dumps({"3": "oom"})})
    assert res.returncode == 0, res.stderr
    statuses = {r["sweep"]["batch_size"]: r["status"] for r in records(out)}
    assert statuses == {3: "oom", 4: "skipped"}


def _wait_for_records(out: Path, n: int, proc, limit=180):
    deadline = time.time() + limit
    while time.time() < deadline:
        if (out / "results.jsonl").exists() and len(records(out)) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    raise AssertionError("no records appeared")


@pytest.mark.slow
def test_sigkill_then_resume_records_every_config_once(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "hjepa_bench", "sweep", *TINY_SWEEP, "--batch-sizes", "2,4,6", "--workers", "0",
            "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_records(out, 1, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the parent dies mid-sweep, a config in flight
    proc.wait(30)
    first = records(out)
    assert 1 <= len(first) < 3
    res = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    recs = records(out)
    assert len(recs) == 3 and len({r["sweep"]["key"] for r in recs}) == 3
    assert all(r["status"] == "ok" for r in recs)


@pytest.mark.slow
def test_ctrl_c_stops_the_child_and_prints_the_resume_command(tmp_path):
    out = tmp_path / "interrupted"
    args = [sys.executable, "-m", "hjepa_bench", "sweep", *TINY_SWEEP, "--batch-sizes", "2,4,6", "--workers", "0",
            "--out", str(out)]
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(TESTS)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_records(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "interrupted" in err
    recs = records(out)
    assert 1 <= len(recs) < 3 and all(r["status"] == "ok" for r in recs)


def test_grid_file(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("devices: cpu\nbatch_sizes: [24, 32]\nmodels: [vit_tiny, vit_small]\nmax_time_s: 5\n")
    spec = SweepSpec.from_yaml(grid)
    assert spec.devices == ["cpu"] and spec.batch_sizes == [24, 32] and spec.max_time_s == 5
    grid.write_text("batch_size: [24]\n")
    with pytest.raises(UserError, match="unknown keys: batch_size"):
        SweepSpec.from_yaml(grid)


def test_an_out_of_memory_the_device_prints_but_does_not_raise_is_oom(tmp_path):
    """MPS prints a command buffer that Metal aborted for lack of memory and raises nothing: the child
    then dies or measures on.  The sweep reads the child's stderr: both are "oom" (not "crashed", not
    "ok"), and the error says so."""
    out = tmp_path / "printed"
    faults = json.dumps({"3": "printed_oom_crash", "4": "printed_oom_continue"})
    res = sweep("-p", "fault_plugin", "sweep", *TINY_SWEEP, "--device", "fakemps", "--workload", "hjepa_faults",
                "--batch-sizes", "2,3,4", "--workers", "0", "--no-skip-after-oom", "--out", str(out),
                env={"HJEPA_BENCH_TEST_FAULTS": faults})
    assert res.returncode == 0, res.stderr
    by = {r["sweep"]["batch_size"]: r for r in records(out)}
    assert by[2]["status"] == "ok"
    crashed, went_on = by[3], by[4]
    assert crashed["status"] == "oom" and "printed on the child's stderr" in crashed["error"]
    assert "kIOGPUCommandBufferCallbackErrorOutOfMemory" in crashed["error"] and "SIGABRT" in crashed["error"]
    assert went_on["status"] == "oom" and "went on as 'ok'" in went_on["error"]
    assert went_on["metrics"]["measured_steps"] > 0  # what it measured is kept
    assert "kIOGPUCommandBufferCallbackErrorOutOfMemory" in res.stderr  # the child's stderr is passed on


def test_the_sweep_parent_probes_a_gpu_in_a_child(monkeypatch):
    """The precision probe on CUDA leaves a context and cached blocks in the process that runs it; in the
    sweep parent they would sit on the GPU every child measures.  The parent asks a child instead."""
    monkeypatch.syspath_prepend(str(TESTS))
    import fault_plugin

    from hjepa_bench.builtin.executor_local import LocalExecutor
    from hjepa_bench.plugin.manager import build_plugins

    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the spawned child finds the plugin module too
    plugins = build_plugins(["fault_plugin"])
    places = LocalExecutor().places(["fakecuda"], plugins.backends(), ["fault_plugin"], {})
    facts = places[0].devices["fakecuda"]
    assert facts.precisions == {"fp32": "", "fp16": "fp16 is not offered by this fake", "bf16": ""}
    assert facts.env["backend"] == "fakecuda"
    assert fault_plugin.DEVICE_MEMORY_HELD == []  # nothing was probed (and kept) in this process
