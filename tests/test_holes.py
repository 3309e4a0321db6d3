"""Edge cases that each get one sentence and a non-zero exit (or an isolated failure), on real runs: a
Ray address where something else listens, an output path that only looks writable, a missing
CIFAR-10 folder on a sweep, null in a grid list, a bad config value a flag overrides, an
out-of-range rendezvous port, a plugin calling sys.exit, more DDP ranks than cores, and a pickle
checkpoint."""
from __future__ import annotations

import importlib.util
import os
import pickle
import socket
import sys
import threading
import time

import pytest
from helpers import TINY_FLAGS, run_cli, tiny_config

from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
from hjepa_bench.config import available_cores
from hjepa_bench.measure.env import environment_fingerprint
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.measure.sweep import SweepSpec, device_facts, plan
from hjepa_bench.plugin.api import Place, Probe
from hjepa_bench.plugin.manager import build_plugins


def _one_sentence(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hjepa-bench: error: "), res.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


class _NotRay:
    """A TCP listener on 127.0.0.1 that accepts and reads, and never answers (not a Ray head)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_a_ray_address_where_something_else_listens_fails_in_seconds_with_one_sentence(tmp_path):
    server = _NotRay()
    try:
        t0 = time.monotonic()
        res = run_cli("sweep", "--executor", "ray", "--address", f"127.0.0.1:{server.port}", "--options", "none",
                      "--out", str(tmp_path / "s"), timeout=120)
        took = time.monotonic() - t0
    finally:
        server.close()
    _one_sentence(res, f"127.0.0.1:{server.port}", "not a Ray head")
    assert took < 90  # (ray.init has no deadline of its own once TCP connects)
    _one_sentence(run_cli("sweep", "--executor", "ray", "--address", "", "--options", "none",
                          "--out", str(tmp_path / "e"), timeout=120), "--address is empty")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/proc"), reason="needs root and /proc")
def test_an_output_path_that_only_looks_writable_is_checked_by_trying(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "results.jsonl").write_text("")
    assert os.access("/proc", os.W_OK)  # what asking says as root
    _one_sentence(run_cli("report", str(tmp_path / "s"), "--out", "/proc/x.md"), "/proc/x.md", "cannot be created")


def test_a_sweep_checks_its_data_path_before_the_first_child(tmp_path):
    out = tmp_path / "s"
    _one_sentence(run_cli("sweep", "--device", "cpu", "--data", "cifar10", "--data-path", str(tmp_path / "nope"),
                          "--options", "none", "--out", str(out)), "CIFAR-10 data not found")
    assert not (out / "results.jsonl").exists()  # refused before the first child: no config recorded as "error"


def test_null_in_a_grid_list_measures_the_config_once():
    spec = SweepSpec(devices=["cpu"], models=[None, "vit_tiny", "vit_tiny_patch16_224"], batch_sizes=[4],
                     workers=[0], options=["none"])
    points = plan(spec, Place(label=None, devices={"cpu": device_facts(CPUBackend())}))
    assert len(points) == 1 and len({p.key for p in points}) == 1


def test_a_bad_config_value_is_reported_even_when_a_flag_overrides_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size: abc\n")
    _one_sentence(run_cli("run", "--device", "cpu", "--config", str(bad), *TINY_FLAGS, "--batch-size", "4"),
                  str(bad), "data.batch_size", "a flag overrides it")


def test_a_rendezvous_port_out_of_range_is_refused_before_torchrun():
    _one_sentence(run_cli("run", "--device", "cpu", *TINY_FLAGS, "--nnodes", "2", "--rdzv-endpoint",
                          "127.0.0.1:99999"), "127.0.0.1:99999", "1 to 65535")


def test_more_data_parallel_ranks_than_cores_are_refused_with_the_reason():
    n = available_cores() + 1
    _one_sentence(run_cli("run", "--device", "cpu", *TINY_FLAGS, "--nproc-per-node", str(n)),
                  f"--nproc-per-node {n}", f"{available_cores()} are available")


def test_a_plugin_calling_sys_exit_at_import_is_one_sentence_not_a_silent_exit(tmp_path):
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    res = run_cli("-p", "exits_at_import", "devices", env={"PYTHONPATH": str(tmp_path)})
    _one_sentence(res, "exits_at_import", "SystemExit")


class ExitingProbe(Probe):
    name = "exits"

    def finish(self, ctx, record):
        sys.exit(4)


def test_a_probe_calling_sys_exit_in_finish_fails_alone_and_the_record_is_kept():
    values = tiny_config(**{"bench.min_steps": 2, "bench.max_steps": 2})
    values["bench"]["precision"], values["bench"]["device"] = "fp32", "cpu"
    backend = CPUBackend()
    record = run_benchmark(values, backend, HJEPAWorkload(), [ExitingProbe()], environment_fingerprint(backend))
    assert record["status"] == "ok" and record["metrics"]["measured_steps"] == 2
    assert record["probes"]["exits"] == {"status": "failed", "error": "SystemExit: 4"}


def test_a_plugin_hook_calling_sys_exit_disables_that_plugin_only(tmp_path, monkeypatch):
    (tmp_path / "exits_in_hook.py").write_text(
        "import sys\nfrom hjepa_bench import hookimpl\n\n@hookimpl\ndef hjepa_bench_register_probes(register):\n"
        "    sys.exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = build_plugins(["exits_in_hook"])
    assert "cpu" in plugins.backends()
    info = {i.name: i for i in plugins.describe()}["exits_in_hook"]
    assert "SystemExit" in info.error


def test_a_pickle_checkpoint_is_one_sentence_of_ours(tmp_path):
    path = tmp_path / "legacy.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model_state_dict": {"w": [1.0]}}, fh, protocol=4)
    line = _one_sentence(run_cli("eval", "--checkpoint", str(path)), str(path), "re-save it with torch.save")
    assert "weights_only" not in line and "UserWarning" not in line
