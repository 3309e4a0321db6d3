"""``hjepa-bench sweep --executor ray`` on real Ray clusters on this machine: a local one-node cluster
(``ray.init``), and a 2-node loopback cluster (``ray start --head`` + ``ray start --address``, each
node in its own process group, killed by group at the end: never ``ray stop``).  Real configs,
real worker processes, real failures."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray",
                    reason="ray is not installed (pip install 'hjepa-bench[ray]'); the Ray executor is not tested")
psutil = pytest.importorskip("psutil")

from helpers import REPO  # noqa: E402
from raycluster import ENV, FAST_DEATH, Cluster, free_port  # noqa: E402

from hjepa_bench.measure.results import read_results  # noqa: E402
from hjepa_bench.record import check_record  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["--device", "cpu", "--img-size", "64", "--encoder-depth", "2", "--predictor-depths", "1",
        "--variants", "reference", "--workers", "0", "--warmup-steps", "1", "--min-steps", "2", "--max-steps", "3",
        "--max-time", "1", "--probes", "none", "--progress", "jsonl", "--options", "none"]
TINY_OPTION = """options:
  - name: T
    title: Tiny smoke option
    hours: [0, 1000]
    model: {encoder_depth: 2, predictor: {depth: 1}}
    data: {image_size: 64, batch_size: 2, num_workers: 0}
    training: {epochs: 2, warmup_epochs: 1}
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **ENV, **(extra or {})}


def sweep_cmd(*args: str, plugin: str | None = None) -> list[str]:
    return [sys.executable, "-m", "hjepa_bench", *(["-p", plugin] if plugin else []), "sweep", *TINY, *args]


def run(*args: str, env: dict[str, str] | None = None, plugin: str | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(*args, plugin=plugin), capture_output=True, text=True, cwd=REPO, env=_env(env),
                          timeout=timeout)


def records(out: Path) -> list[dict]:
    return read_results(out / "results.jsonl").records


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def cluster():
    """Head ``a`` and worker node ``b`` (1 CPU each), labelled by their hjepa_node resources."""
    c = Cluster()
    try:
        c.start_head("a")
        c.add_node("b")
        yield c
    finally:
        c.shutdown()


def test_local_cluster_sweep_streams_records_into_results(tmp_path):
    out = tmp_path / "local"
    res = run("--executor", "ray", "--batch-sizes", "2,4", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(out)
    host = socket.gethostname()
    assert [r["sweep"]["batch_size"] for r in recs] == [2, 4]
    for r in recs:
        check_record(r)
        assert r["status"] == "ok" and r["metrics"]["it_per_s"] > 0
        # the node's own fingerprint, taken on the node, and the node's label (its hostname here)
        assert r["node"]["label"] == host and r["node"]["executor"] == "ray" and r["node"]["ray_node_id"]
        assert r["env"]["fingerprint_id"] and r["sweep"]["label"].endswith(f" on {host}")
    ev = events(res.stdout)
    assert ev[0]["event"] == "plan" and ev[0]["nodes"] == [host] and ev[0]["to_run"] == 2
    done = [e for e in ev if e["event"] == "done"]
    assert [e["k"] for e in done] == [1, 2] and all(e["node"] == host for e in done)
    assert ev[-1]["event"] == "end" and ev[-1]["counts"] == {"ok": 2} and ev[-1]["not_run"] == 0


def test_two_nodes_measure_every_config_and_the_report_compares_them(cluster, tmp_path):
    (tmp_path / "opts.yaml").write_text(TINY_OPTION)
    out = tmp_path / "two"
    res = run("--executor", "ray", "--address", cluster.address, "--batch-sizes", "2", "--options", "T",
              "--options-file", str(tmp_path / "opts.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(out)
    assert sorted(r["node"]["label"] for r in recs) == ["a", "b"]
    assert all(r["status"] == "ok" for r in recs)
    # the same machine and software: one fingerprint, yet two nodes, two keys, two machines
    assert len({r["env"]["fingerprint_id"] for r in recs}) == 1
    assert len({r["sweep"]["key"] for r in recs}) == 2
    assert len({r["node"]["ray_node_id"] for r in recs}) == 2
    text = (out / "report.md").read_text()
    compared = text.split("## Machines compared", 1)[1].split("\n## ", 1)[0]
    from hjepa_bench.analysis.decision_matrix import one_host_overlaps

    if one_host_overlaps(recs):  # both nodes are this one host: runs that overlapped are no machine comparison
        assert "Not compared: nodes a, b are one host" in compared and "| config" not in compared
    else:
        header = next(line for line in compared.splitlines() if line.startswith("| config"))
        assert " on a " in header and " on b " in header
        row = next(line for line in compared.splitlines() if line.startswith("| vit_tiny"))
        assert row.count(".") >= 2  # an it/s on each node
    # the decision matrix and the recommendation judge each node as its own machine
    assert text.count("on a.") + text.count("on b.") >= 2
    analysis = json.loads((out / "report.json").read_text())
    assert sorted(d["machine"].rsplit(" on ", 1)[1] for d in analysis["decision"]["per_machine"]) == ["a", "b"]
    assert sorted(p.name for p in (out / "configs").glob("option_T*.yaml")) == ["option_T_cpu_a.yaml",
                                                                                "option_T_cpu_b.yaml"]


def test_what_no_node_offers_is_refused_up_front(cluster, tmp_path, monkeypatch, capsys):
    """One sentence and exit 2 before anything runs (Ray would keep such a task pending forever)."""
    from hjepa_bench.cli import main

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    cases = [(["--device", "cuda"], "no node of the Ray cluster offers GPU, which --device cuda needs; nodes: a, b."),
             (["--ray-nodes", "a,c"], "no alive Ray node is labelled c; nodes: a, b."),
             (["--device", "cpu,mps"], "no node of the Ray cluster offers mps (`ray start --resources "
                                       "'{\"mps\": 1}'`), which --device mps needs; nodes: a, b.")]
    for extra, message in cases:
        code = main(["sweep", *TINY, "--executor", "ray", "--address", cluster.address, *extra,
                     "--out", str(tmp_path / "x")])
        assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"hjepa-bench: error: {message}"
    port = free_port()  # nothing listens there
    code = main(["sweep", *TINY, "--executor", "ray", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"hjepa-bench: error: nothing answers at 127.0.0.1:{port} (")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "results.jsonl").exists()


def test_a_killed_worker_process_is_crashed_and_the_sweep_goes_on(cluster, tmp_path):
    out = tmp_path / "killed-worker"
    res = run("--workload", "hjepa_faults", "--executor", "ray", "--address", cluster.address,
              "--ray-nodes", "a", "--batch-sizes", "3,4", "--timeout", "90", "--out", str(out),
              env={"HJEPA_BENCH_TEST_FAULTS": json.dumps({"3": "kill_parent", "4": "crash"})}, plugin="fault_plugin")
    assert res.returncode == 0, res.stderr[-3000:]
    by = {r["sweep"]["batch_size"]: r for r in records(out)}
    assert set(by) == {3, 4} and all(r["node"]["label"] == "a" for r in by.values())  # --ray-nodes a: only a
    # the task's worker process died: the Ray exception, in one line
    assert by[3]["status"] == "crashed" and by[3]["error"].startswith("WorkerCrashedError: ")
    assert "\n" not in by[3]["error"]
    # the sweep went on; the config's own child dying is reported as with the local executor
    assert by[4]["status"] == "crashed" and by[4]["error"] == "the child died by SIGSEGV"


def _wait_for(out: Path, n: int, proc: subprocess.Popen, limit: float = 150) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if (out / "results.jsonl").exists() and len(records(out)) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    raise AssertionError("no record appeared")


def _config_tasks(cluster: Cluster, node: str) -> list[psutil.Process]:
    """Processes of one node that run a sweep's config: the task's worker (titled ``ray::hjepa-bench
    LABEL``) and the config's child under it."""
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "raylet" and os.getpgid(p.pid) == cluster.pgids[node]:
                for worker in p.children():
                    if (worker.cmdline() or [""])[0].startswith("ray::hjepa-bench"):
                        out += [worker, *worker.children(recursive=True)]
        except (psutil.Error, ProcessLookupError):
            pass
    return out


def test_driver_sigkill_then_resume_records_every_config_once(cluster, tmp_path):
    out = tmp_path / "resumed"
    args = sweep_cmd("--executor", "ray", "--address", cluster.address, "--ray-nodes", "a", "--batch-sizes", "2,4",
                     "--out", str(out))
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out, 1, proc)
    deadline = time.time() + 60
    while not (in_flight := _config_tasks(cluster, "a")) and time.time() < deadline:
        time.sleep(0.2)
    assert in_flight, "the second config's task never started"
    proc.kill()  # SIGKILL: the driver dies with the second config running
    proc.wait(30)
    assert len(records(out)) == 1
    deadline = time.time() + 20  # the dead driver's task (and its config's child) goes with it
    while any(p.is_running() for p in in_flight) and time.time() < deadline:
        time.sleep(0.5)
    assert not [p for p in in_flight if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    res = subprocess.run([*args, "--resume"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert events(res.stdout)[0]["recorded"] == 1 and events(res.stdout)[0]["to_run"] == 1
    recs = records(out)
    assert [r["sweep"]["batch_size"] for r in recs] == [2, 4] and len({r["sweep"]["key"] for r in recs}) == 2
    assert all(r["status"] == "ok" and r["node"]["label"] == "a" for r in recs)


def test_driver_sigkill_leaves_nothing_of_its_local_cluster(tmp_path):
    """Ray's agents of a ray.init cluster outlive a SIGKILLed driver; the executor's watchdog kills them."""
    out = tmp_path / "orphans"
    proc = subprocess.Popen(sweep_cmd("--executor", "ray", "--batch-sizes", "2", "--out", str(out)), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # the config started: the cluster is up, with its workers
            if '"event": "start"' in line:
                break
        started = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        raylet = next(" ".join(p.cmdline()) for p in started if p.name() == "raylet")
        temp_dir = Path(re.search(r"(/tmp/hjray[^/]+)/", raylet).group(1))  # the cluster's own folder
        assert temp_dir.is_dir()
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.time() + 20
    alive = started
    while time.time() < deadline:
        alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, [" ".join(p.cmdline())[:100] for p in alive]
    while temp_dir.exists() and time.time() < deadline + 5:
        time.sleep(0.5)
    assert not temp_dir.exists()


def test_a_dead_node_is_crashed_for_its_config_and_the_other_node_goes_on(tmp_path):
    c = Cluster()
    try:
        c.start_head("a", env=FAST_DEATH)
        c.add_node("b")
        out = tmp_path / "node-death"
        proc = subprocess.Popen(sweep_cmd("--workload", "hjepa_faults", "--executor", "ray", "--address", c.address,
                                          "--batch-sizes", "2,3", "--out", str(out), plugin="fault_plugin"),
                                cwd=REPO, env=_env({"HJEPA_BENCH_TEST_FAULTS": json.dumps({"2": "slow"})}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if '"event": "start"' in line and '"node": "b"' in line:
                time.sleep(2)  # node b is inside its slow config: kill the whole node
                c.kill_node("b")
                break
        rest, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    finally:
        c.shutdown()
    ev = events("".join(lines) + rest)
    by = {(r["node"]["label"], r["sweep"]["batch_size"]): r for r in records(out)}
    assert by[("b", 2)]["status"] == "crashed" and by[("b", 2)]["error"].startswith("NodeDiedError: ")
    assert by[("a", 2)]["status"] == by[("a", 3)]["status"] == "ok"  # the sweep went on on node a
    assert ("b", 3) not in by  # never started: not recorded, so a resume runs it
    lost = [e for e in ev if e["event"] == "lost"]
    assert lost and lost[0]["node"] == "b" and lost[0]["not_run"] == 1
    assert ev[-1]["event"] == "end" and ev[-1]["not_run"] == 1
