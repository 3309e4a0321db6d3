"""A throw-away Ray cluster on loopback for tests: a head and worker nodes, each started by
``ray start`` (this interpreter's, so the nodes' workers import this checkout) in its own session.
Every process of a node (gcs, raylet, agents, workers) then shares the node's process group, so
killing the group kills exactly that node, and teardown never needs ``ray stop`` (which stops every
Ray process of the user on the machine, other test runs included)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from helpers import REPO

TESTS = os.path.dirname(os.path.abspath(__file__))
#: no token auth (Ray 2.60 turns it on by default), no usage stats; fault_plugin importable on the nodes
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": TESTS}
#: the GCS marks a dead node dead in ~3 s instead of ~13 s
FAST_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="hjray", dir="/tmp")  # unix socket paths must stay < 108 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.pgids: dict[str, int] = {}

    def _start(self, name: str, args: list[str], env: dict[str, str] | None) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args,
                                 "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                                 "--object-store-memory", str(80 * 2**20), "--num-gpus", "0"],
                                env={**os.environ, **ENV, **(env or {})}, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.pgids[name] = proc.pid  # the session leader's pid is the group of everything it starts
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{out[-2000:]}")

    def start_head(self, label: str, num_cpus: int = 1, env: dict[str, str] | None = None) -> None:
        self._start(label, ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus), "--include-dashboard",
                            "false", "--temp-dir", self.temp_dir, "--resources",
                            json.dumps({f"hjepa_node:{label}": 1})], env)

    def add_node(self, label: str, num_cpus: int = 1, env: dict[str, str] | None = None) -> None:
        self._start(label, ["--address", self.address, "--num-cpus", str(num_cpus), "--resources",
                            json.dumps({f"hjepa_node:{label}": 1})], env)

    def kill_node(self, name: str) -> None:
        try:
            os.killpg(self.pgids[name], signal.SIGKILL)
        except ProcessLookupError:
            pass

    def shutdown(self) -> None:
        for name in list(self.pgids)[::-1]:
            self.kill_node(name)
        time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
