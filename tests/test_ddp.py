"""The training step under DDP: real torchrun, 2 gloo ranks on the CPU, tiny configs.

``run --nproc-per-node 2`` writes one valid job record with both ranks' numbers; replicas are
identical after the synced steps; a killed rank and a timeout stop the whole job cleanly; projections
and the decision matrix count world_size x batch per step; a sweep with ``--nproc-per-node 1,2``
gets a scaling table in its report; two "nodes" on loopback run one job.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from helpers import REPO, TINY_FLAGS, run_cli

from hjepa_bench.analysis.criteria import pick_validation_record
from hjepa_bench.analysis.projection import project_record
from hjepa_bench.analysis.report_data import ReportSettings
from hjepa_bench.analysis.scaling import allreduce_share, scaling_efficiency, scaling_rows
from hjepa_bench.measure.ddp import ddp_unsupported, failure_cause
from hjepa_bench.measure.results import read_results
from hjepa_bench.measure.sweep import SweepSpec
from hjepa_bench.options import config_option
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import check_record, label, world_size
from hjepa_bench.report.markdown import write_report
from hjepa_bench.thresholds import DEFAULTS

RANK_MODULE = "hjepa_bench.measure.ddp_rank"


def _rank_processes(root: int) -> list[psutil.Process]:
    """The ranks under ``root`` (the agent runs the same module with --agent)."""
    try:
        kids = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in kids:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if RANK_MODULE in cmd and "--agent" not in cmd:
            out.append(p)
    return out


def _alive(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One real 2-rank job (default probes) and its record."""
    out = tmp_path_factory.mktemp("ddp") / "job.json"
    res = run_cli("run", "--device", "cpu", *TINY_FLAGS, "--max-time", "5", "--nproc-per-node", "2",
                  "--json", str(out), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text()), res


@pytest.mark.slow
def test_two_ranks_write_one_valid_job_record(job):
    record, res = job
    check_record(record)
    assert record["status"] == "ok" and record["config"]["bench"]["nproc_per_node"] == 2
    d = record["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and len(d["ranks"]) == 2
    assert [r["rank"] for r in d["ranks"]] == [0, 1] and len({r["pid"] for r in d["ranks"]}) == 2
    for r in d["ranks"]:
        assert r["status"] == "ok" and r["step_time_s"]["median"] > 0 and r["it_per_s"] > 0
        assert r["step_time_s"]["n"] == record["metrics"]["step_time_s"]["n"]  # every rank ran the same steps
        assert 0.0 <= r["allreduce"]["share"] <= 1.0 and r["allreduce"]["pairs"] >= 2
    assert 0.0 <= d["allreduce_share"] <= 1.0
    # the job: its slowest rank's steps/s, samples summed over the ranks
    assert record["metrics"]["it_per_s"] == pytest.approx(min(r["it_per_s"] for r in d["ranks"]))
    assert record["metrics"]["samples_per_s"] == pytest.approx(d["job_samples_per_s"])
    assert d["job_samples_per_s"] == pytest.approx(record["metrics"]["it_per_s"] * 2 * 4)
    assert d["single_process"]["samples_per_s"] > 0 and d["single_process"]["steps"] >= 4
    assert d["scaling_efficiency"] > 0
    assert d["scaling_efficiency"] == pytest.approx(d["job_samples_per_s"] / (2 * d["single_process"]["samples_per_s"]))
    # DDP really synchronised: identical replicas after the synced steps; the same check sees the
    # replicas drift apart after the no_sync and solo steps of the comparison phase
    assert d["replicas_max_abs_diff"]["after_synced_steps"] == 0.0
    assert d["replicas_max_abs_diff"]["after_comparison_phase"] > 0.0
    assert record["probes"]["stability"]["status"] == "ok"
    assert "data parallel: 2 ranks (gloo)" in res.stdout and "scaling efficiency" in res.stdout


@pytest.mark.slow
def test_projection_and_matrix_count_world_size_times_batch(job, tmp_path):
    """Pure: the real 2-rank record, and the same record as a one-process run."""
    record, _ = job
    one = copy.deepcopy(record)
    del one["distributed"]
    one["config"]["bench"]["nproc_per_node"] = 1
    assert world_size(record) == 2 and world_size(one) == 1
    p2 = project_record(record, epochs=3, dataset_size=8000)
    p1 = project_record(one, epochs=3, dataset_size=8000)
    assert p1["steps_per_epoch"] == 8000 // 4 and p2["steps_per_epoch"] == 8000 // (2 * 4)
    assert p2["total_steps"] * 2 == p1["total_steps"]
    assert p2["train_s"]["mid"] == pytest.approx(p1["train_s"]["mid"] / 2)  # the same step time, half the steps
    assert p2["world_size"] == 2 and "2 processes x batch 4" in p2["assumptions"][0]
    # the decision matrix: an option that is exactly this config gets a row per process count
    option = config_option(record["config"], "tiny", "the tiny config")
    option.candidate = True
    settings = ReportSettings(thresholds=DEFAULTS, options=[option], charts=False)
    analysis = write_report([one, record], tmp_path / "report.md", settings)
    rows = {r["world_size"]: r for r in analysis["matrix"]}
    assert set(rows) == {1, 2}
    assert rows[2]["projection"]["steps_per_epoch"] * 2 == rows[1]["projection"]["steps_per_epoch"]
    assert rows[1]["config_file"] != rows[2]["config_file"]
    cfg = (tmp_path / rows[2]["config_file"]).read_text()
    assert "data-parallel job of 2 processes" in cfg and "world_size: 2" in cfg
    md = (tmp_path / "report.md").read_text()
    assert "| processes " in md.split("## Decision matrix")[1].split("\n\n")[1]
    assert "images // (processes x batch)" in md
    # the success criteria judge a one-process record when there is one, even a slower one
    slow = copy.deepcopy(one)
    slow["metrics"]["samples_per_s"] /= 4
    assert pick_validation_record([record, slow])[0] is slow


@pytest.mark.slow
def test_killed_rank_is_a_clean_crashed_record(tmp_path):
    out = tmp_path / "killed.json"
    cmd = [sys.executable, "-m", "hjepa_bench", "run", "--device", "cpu", *TINY_FLAGS[:-4], "--min-steps", "100000",
           "--max-steps", "100000", "--max-time", "120", "--probes", "none", "--nproc-per-node", "2",
           "--json", str(out), "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks: list[psutil.Process] = []
    deadline = time.time() + 120
    while len(ranks) < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        ranks = _rank_processes(proc.pid)
        time.sleep(0.2)
    assert len(ranks) == 2, "the ranks never started"
    time.sleep(3)  # mid-run (start-up or measuring: either way rank 1 dies with the job in flight)
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    t_kill = time.time()
    victim.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert time.time() - t_kill < 60
    record = json.loads(out.read_text())
    check_record(record)
    assert record["status"] == "crashed", record.get("error")
    assert record["error"] == "rank 1 of 2 died by SIGKILL; torchrun stopped the other ranks"
    assert record["distributed"]["world_size"] == 2
    assert "Traceback" not in err
    time.sleep(1)
    assert _alive(ranks) == []  # rank 0 was stopped too


@pytest.mark.slow
def test_timeout_stops_torchrun_and_every_rank(tmp_path):
    out = tmp_path / "timeout.json"
    cmd = [sys.executable, "-m", "hjepa_bench", "run", "--device", "cpu", *TINY_FLAGS[:-4], "--min-steps", "100000",
           "--max-steps", "100000", "--max-time", "600", "--probes", "none", "--nproc-per-node", "2",
           "--timeout", "60", "--json", str(out), "-q"]  # start-up on a loaded 2-core machine: up to ~30 s
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, psutil.Process] = {}
    while proc.poll() is None:
        for p in _rank_processes(proc.pid):
            seen.setdefault(p.pid, p)
        time.sleep(0.3)
    assert proc.returncode == 1, proc.communicate()
    assert len(seen) == 2, f"ranks seen running: {sorted(seen)}"
    record = json.loads(out.read_text())
    check_record(record)
    assert record["status"] == "timeout" and "no result after 60 s" in record["error"]
    assert _alive(list(seen.values())) == []


@pytest.mark.slow
def test_sweep_with_nproc_1_2_and_the_scaling_table(tmp_path):
    out = tmp_path / "sw"
    res = run_cli("sweep", "--device", "cpu", "--img-size", "64", "--encoder-depth", "2", "--predictor-depths", "1",
                  "--warmup-steps", "1", "--min-steps", "3", "--max-steps", "6", "--max-time", "2",
                  "--batch-sizes", "4", "--workers", "0", "--probes", "none", "--options", "none",
                  "--nproc-per-node", "1,2", "--progress", "jsonl", "--out", str(out), timeout=600)
    assert res.returncode == 0, res.stderr
    recs = read_results(out / "results.jsonl").records
    assert sorted(world_size(r) for r in recs) == [1, 2] and all(r["status"] == "ok" for r in recs)
    job = next(r for r in recs if world_size(r) == 2)
    assert job["sweep"]["label"].endswith(" 2 ranks") and label(job) == job["sweep"]["label"]
    assert job["sweep"]["overrides"]["bench.nproc_per_node"] == 2
    assert len({r["sweep"]["key"] for r in recs}) == 2
    rows = scaling_rows(recs)
    assert [r["world_size"] for r in rows] == [1, 2]
    assert rows[1]["efficiency_vs_separate"] == pytest.approx(
        job["distributed"]["job_samples_per_s"] / (2 * rows[0]["job_samples_per_s"]))
    md = (out / "report.md").read_text()
    section = md.split("### Data-parallel scaling")[1].split("\n\n")[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("| cpu vit_tiny b4 w0")]
    assert len(lines) == 2 and "| gloo " in lines[1]
    assert f"{job['distributed']['scaling_efficiency']:.2f}" in lines[1]
    assert "| processes " in md  # the summary table shows the process count


def test_grid_file_key_and_unsupported_devices(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("devices: cpu\nnproc_per_node: [1, 2]\n")
    assert SweepSpec.from_yaml(grid).nproc_per_node == [1, 2]
    backends = build_plugins([]).backends()
    assert ddp_unsupported(backends["cpu"], 2) == ""
    assert "visible CUDA devices" in ddp_unsupported(backends["cuda"], 2) or \
        ddp_unsupported(backends["cuda"], 2) == ""  # a machine with 2 GPUs runs it
    assert "no backend for mps" in ddp_unsupported(backends["mps"], 2)


@pytest.mark.parametrize("flags, message", [
    (["--nproc-per-node", "0"], "bench.nproc_per_node = 0 is out of range"),
    (["--nnodes", "2"], "needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:29999", "--node-rank", "2"], "--node-rank 2 must be between"),
    (["--node-rank", "1"], "for jobs over several nodes"),
])
def test_bad_launch_flags_are_one_sentence(flags, message, capsys):
    from hjepa_bench.cli import main

    try:
        code = main(["run", "--device", "cpu", *TINY_FLAGS, *flags, "-q"])
    except SystemExit as exc:  # a flag value argparse refuses
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    prefix = "hjepa-bench run: error: argument --nproc-per-node:" if "0" in flags else "hjepa-bench: error:"
    assert err.startswith(prefix), err


def test_failure_cause_reads_torchrun_root_cause():
    out = ("...\nRoot Cause (first observed failure):\n[0]:\n  time      : 2026-01-01\n  host      : h\n"
           "  rank      : 1 (local_rank: 1)\n  exitcode  : 1 (pid: 42)\n")
    rank1 = {"status": "oom", "error": "OutOfMemoryError: CUDA out of memory", "rank": {"rank": 1}}
    assert failure_cause(out, {1: rank1}, 2, 1) == ("oom", "rank 1 of 2: OutOfMemoryError: CUDA out of memory")
    assert failure_cause(out, {}, 2, 1) == ("crashed", "rank 1 of 2 exited with code 1 without a result")
    assert failure_cause("no summary\nlast words", {}, 2, 1) == ("crashed", "torchrun exited with code 1: last words")


def test_a_rank_killed_by_a_signal_is_the_cause_not_the_peer_that_saw_it_go():
    """torchrun may observe the surviving rank's "Connection reset by peer" first; the killed rank
    (listed among the failures with a negative exit code) is still the cause."""
    block = ("[{i}]:\n  time      : 2026-01-01\n  host      : h\n"
             "  rank      : {r} (local_rank: {r})\n  exitcode  : {c} (pid: 4{r})\n")
    out = ("Failures:\n" + block.format(i=1, r=1, c=-9) + "----\nRoot Cause (first observed failure):\n"
           + block.format(i=0, r=0, c=1))
    rank0 = {"status": "error", "error": "RuntimeError: Connection reset by peer", "rank": {"rank": 0}}
    assert failure_cause(out, {0: rank0}, 2, 1) == ("crashed", "rank 1 of 2 died by SIGKILL; torchrun stopped the "
                                                               "other ranks")


def test_share_and_efficiency_arithmetic():
    s = allreduce_share([1.0, 1.2, 1.0], [0.8, 0.7, 0.9])
    assert s["share"] == pytest.approx(0.2) and s["pairs"] == 3
    noisy = allreduce_share([1.0], [1.1])  # no_sync slower by noise: 0, raw kept
    assert noisy["share"] == 0.0 and noisy["share_raw"] == pytest.approx(-0.1)
    assert scaling_efficiency(150.0, 2, 100.0) == pytest.approx(0.75)
    assert scaling_efficiency(150.0, 2, None) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_loopback_run_one_job(tmp_path):
    endpoint = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"node{n}.json" for n in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-m", "hjepa_bench", "run", "--device", "cpu", *TINY_FLAGS,
                               "--max-time", "3", "--probes", "none", "--nnodes", "2", "--node-rank", str(n),
                               "--rdzv-endpoint", endpoint, "--json", str(outs[n])],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for n in (0, 1)]  # 2 ranks, 1 core each
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    record = json.loads(outs[0].read_text())
    check_record(record)
    d = record["distributed"]
    assert d["world_size"] == 2 and d["nnodes"] == 2 and [r["node_rank"] for r in d["ranks"]] == [0, 1]
    assert d["replicas_max_abs_diff"]["after_synced_steps"] == 0.0
    assert not outs[1].exists() and "the job's record is written by node 0" in results[1][0]


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device (NCCL)")
def test_cuda_job_binds_the_gpu_and_uses_nccl(tmp_path):
    """One NCCL rank per visible GPU (at least one): set_device, device_ids, the NCCL collectives of
    the loop, the check and the comparison phase, and the gather."""
    import torch
    from helpers import tiny_config

    from hjepa_bench.measure.ddp import Launch, run_job
    from hjepa_bench.measure.env import environment_fingerprint

    n = torch.cuda.device_count()
    backend = build_plugins([]).backends()["cuda"]
    values = tiny_config(**{"bench.nproc_per_node": n, "bench.max_time_s": 5.0})
    values["bench"]["precision"], values["bench"]["device"] = "fp32", "cuda"
    record = run_job(values, environment_fingerprint(backend), device="cuda", plugin_args=[], probes=["none"],
                     warnings=[], launch=Launch(n), timeout_s=300)
    check_record(record)
    assert record["status"] == "ok", record["error"]
    d = record["distributed"]
    assert d["backend"] == "nccl" and [r["device"] for r in d["ranks"]] == [f"cuda:{i}" for i in range(n)]
    assert d["replicas_max_abs_diff"]["after_synced_steps"] == 0.0
    assert 0.0 <= d["allreduce_share"] <= 1.0 and d["scaling_efficiency"] > 0
    assert record["metrics"]["timing_method"] == "device-events"


def test_machines_compared_keeps_one_and_two_process_runs_apart():
    """The cluster example showed a 2-rank job's it/s under the one-process config: the comparison
    keyed configs without their process count, so the later record overwrote the other."""
    from records_factory import make_record, quick_val_values

    from hjepa_bench.analysis.decision_matrix import machine_comparison
    from hjepa_bench.analysis.scaling import config_text

    recs = [make_record(quick_val_values(**{"bench.nproc_per_node": n}), it_per_s=ips, fingerprint=fp)
            for fp in ("machine-1", "machine-2") for n, ips in ((1, 20.0), (2, 7.0))]
    rows = {row["config"]: row for row in machine_comparison(recs)["rows"]}
    assert len(rows) == 2
    one = next(r for c, r in rows.items() if "ranks" not in c)
    two = next(r for c, r in rows.items() if c.endswith("2 ranks"))
    assert set(one["it_per_s"].values()) == {20.0} and set(two["it_per_s"].values()) == {7.0}
    recs[0]["node"] = {"label": "a"}
    assert config_text(recs[0]).endswith(" on a") and " on " not in config_text(recs[2])
