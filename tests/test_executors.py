"""The executor hook: a plugin executor drives a sweep while the sweep keeps the books (results file,
statuses, skip-after-OOM, resume); a local run's result key hashes its config and fingerprint alone,
a node's adds the node; two nodes of one fingerprint stay two machines in the analysis; the CLI's
executor flags are checked."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
from records_factory import make_record, quick_val_values

from hjepa_bench import hookimpl
from hjepa_bench.analysis.report_data import ReportSettings, build_analysis
from hjepa_bench.cli import main
from hjepa_bench.errors import UserError
from hjepa_bench.measure.results import config_key, read_results
from hjepa_bench.measure.sweep import SweepSpec, device_facts, run_sweep
from hjepa_bench.plugin.api import Executor, Outcome, Place
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import machine, machine_name, records_frame
from hjepa_bench.report.markdown import render_markdown

SPEC = dict(devices=["cpu"], batch_sizes=[2, 4], workers=[0], img_sizes=[64], encoder_depth=2, predictor_depths=[1],
            options=["none"])


class Scripted(Executor):
    """Two places, n1 and n2, on this machine's cpu; outcomes come from a script, nothing runs."""

    name = "scripted"
    description = "test executor"

    def __init__(self, script):
        self.script = script  # (place, batch) -> Outcome
        self.asked: list[tuple[str, int]] = []

    def places(self, devices, backends, plugin_args, options):
        facts = {"cpu": device_facts(backends["cpu"])}
        return [Place(label=n, devices=facts, info={"label": n, "executor": self.name}) for n in ("n1", "n2")]

    def run(self, places, queue):
        for place in places:
            while (job := queue.next_job(place.label)) is not None:
                batch = job.payload["values"]["data"]["batch_size"]
                self.asked.append((place.label, batch))
                outcome = self.script[(place.label, batch)]
                if outcome.status != "dropped":
                    queue.started(job)
                queue.finished(job, outcome)
                if outcome.status == "dropped":
                    queue.lost(place.label, "gone")
                    break


def scripted_plugins(script):
    executor = Scripted(script)

    class Plugin:
        @staticmethod
        @hookimpl
        def hjepa_bench_register_executors(register):
            register(executor)

    return build_plugins([], objects=[("scripted", Plugin)]), executor


def test_a_plugin_executor_drives_the_sweep_and_the_sweep_keeps_the_books(tmp_path):
    script = {("n1", 2): Outcome("crashed", None, "WorkerCrashedError: the worker died"),
              ("n1", 4): Outcome("dropped", None, "the node left before it started"),
              ("n2", 2): Outcome("oom", None, "out of memory on n2")}
    plugins, executor = scripted_plugins(script)
    events = []
    summary = run_sweep(SweepSpec(**SPEC), tmp_path, plugins, executor="scripted", on_event=events.append)
    recs = read_results(tmp_path / "results.jsonl").records
    by = {(r["node"]["label"], r["sweep"]["batch_size"]): r for r in recs}
    assert set(by) == {("n1", 2), ("n2", 2), ("n2", 4)}  # the dropped config is not recorded
    assert by[("n1", 2)]["status"] == "crashed" and by[("n1", 2)]["error"] == "WorkerCrashedError: the worker died"
    assert by[("n2", 2)]["status"] == "oom"
    # skip-after-OOM is per place: n2's larger batch is skipped without asking the executor
    assert by[("n2", 4)]["status"] == "skipped" and ("n2", 4) not in executor.asked
    assert by[("n1", 2)]["sweep"]["key"] != by[("n2", 2)]["sweep"]["key"]  # one fingerprint, two nodes, two keys
    assert by[("n1", 2)]["sweep"]["label"].endswith(" on n1")
    assert summary["not_run"] == 1 and summary["counts"] == {"crashed": 1, "oom": 1, "skipped": 1}
    assert [e["event"] for e in events if e["event"] in ("dropped", "lost")] == ["dropped", "lost"]
    assert events[0]["nodes"] == ["n1", "n2"] and events[0]["to_run"] == 4

    # a second run resumes: only the dropped config is asked for again
    plugins, executor = scripted_plugins({**script, ("n1", 4): Outcome("error", None, "RuntimeError: boom")})
    events = []
    run_sweep(SweepSpec(**SPEC), tmp_path, plugins, executor="scripted", on_event=events.append)
    assert executor.asked == [("n1", 4)] and events[0]["to_run"] == 1
    assert len(read_results(tmp_path / "results.jsonl").records) == 4


def test_a_local_result_key_hashes_config_and_fingerprint_alone_and_a_node_changes_it():
    identity = {"values": {"data": {"batch_size": 4}}, "unsupported": None, "overrides": {"data.batch_size": 4}}
    env = {"fingerprint_id": "abc123", "hostname_hash": "h"}
    before = hashlib.sha256(json.dumps({"config": identity, "env": "abc123"}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:20]  # config and fingerprint, no node
    assert config_key(identity, env) == before
    assert config_key(identity, env, node="a") not in (before, config_key(identity, env, node="b"))


def test_two_nodes_of_one_fingerprint_are_two_machines():
    recs = []
    for node, ips in (("a", 2.0), ("b", 3.0)):
        r = make_record(quick_val_values(**{"data.batch_size": 8}), it_per_s=ips, fingerprint="same-box")
        r["node"] = {"label": node, "executor": "ray"}
        recs.append(r)
    assert machine(recs[0]) != machine(recs[1])
    assert machine_name(recs[0]).endswith(" on a") and machine_name(recs[1]).endswith(" on b")
    assert list(records_frame(recs)["node"]) == ["a", "b"]
    analysis = build_analysis(recs, ReportSettings(charts=False))
    comparison = analysis["machines"]
    assert [m.rsplit(" on ", 1)[1] for m in comparison["machines"]] == ["a", "b"]
    (row,) = comparison["rows"]
    assert row["fastest"].endswith(" on b") and row["fastest_vs_slowest"] == pytest.approx(1.5)
    text = render_markdown(analysis, recs, title="t")
    assert "## Machines compared" in text and "1.50x" in text
    # one machine: no comparison table
    assert build_analysis(recs[:1], ReportSettings(charts=False))["machines"] == {"machines": [], "rows": []}


@pytest.mark.parametrize("argv, message", [
    (["--executor", "nope"], "unknown executor 'nope'; registered executors: local, ray."),
    (["--address", "127.0.0.1:6379"], "--address is not an option of the local executor (it takes: none)."),
    (["--ray-nodes", "a"], "--ray-nodes is not an option of the local executor (it takes: none)."),
])
def test_executor_flags_are_checked_before_anything_runs(argv, message, tmp_path, capsys):
    code = main(["sweep", "--device", "cpu", "--options", "none", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"hjepa-bench: error: {message}"
    assert not (tmp_path / "x").exists()


def test_the_builtin_executors_are_plugins_like_any_other():
    infos = {i.name: i for i in build_plugins([]).describe()}
    assert infos["local"].provides == {"executors": ["local"]} and infos["local"].origin == "builtin"
    assert infos["ray"].provides == {"executors": ["ray"]}
    assert infos["ray"].hooks == ["hjepa_bench_add_options", "hjepa_bench_register_executors"]  # its own flags


GREETER_PLUGIN = textwrap.dedent('''
    """An executor plugin with a flag of its own: places() hands the value back through an error."""
    from hjepa_bench import hookimpl
    from hjepa_bench.errors import UserError
    from hjepa_bench.plugin.api import EXECUTOR_GROUP, Executor


    class Greeter(Executor):
        name = "greeter"
        options = ("greeting",)

        def places(self, devices, backends, plugin_args, options):
            raise UserError(f"greeter got {options!r}.")

        def run(self, places, queue):
            pass


    @hookimpl
    def hjepa_bench_register_executors(register):
        register(Greeter())


    @hookimpl
    def hjepa_bench_add_options(parser):
        if parser.command == "sweep":
            parser.group(EXECUTOR_GROUP).add_argument("--greeting", type=parser.list_type(), help="greeter: words")
''')


@pytest.fixture
def greeter(tmp_path, monkeypatch):
    (tmp_path / "greeter_plugin.py").write_text(GREETER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["sweep", "--device", "cpu", "--options", "none", "--out", str(tmp_path / "x")]


def test_a_plugin_adds_its_own_flag_and_its_executor_receives_the_value(greeter, capsys):
    assert main(["-p", "greeter_plugin", *greeter, "--executor", "greeter", "--greeting", "hi,there"]) == 2
    assert capsys.readouterr().err.strip() == "hjepa-bench: error: greeter got {'greeting': ['hi', 'there']}."
    # another executor refuses it, and the greeter refuses ray's flags
    assert main(["-p", "greeter_plugin", *greeter, "--greeting", "hi"]) == 2
    assert capsys.readouterr().err.strip() == ("hjepa-bench: error: --greeting is not an option of the local "
                                               "executor (it takes: none).")
    assert main(["-p", "greeter_plugin", *greeter, "--executor", "greeter", "--ray-nodes", "a"]) == 2
    assert capsys.readouterr().err.strip() == ("hjepa-bench: error: --ray-nodes is not an option of the greeter "
                                               "executor (it takes: --greeting).")
    with pytest.raises(SystemExit):
        main(["-p", "greeter_plugin", "sweep", "--help"])
    shown = capsys.readouterr().out
    assert "--greeting GREETING" in shown and "greeter: words" in shown
    with pytest.raises(SystemExit):  # without the plugin the flag does not exist
        main([*greeter, "--greeting", "hi"])
    assert "unrecognized arguments: --greeting hi" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_is_imported_only_when_the_ray_executor_runs():
    code = ("import sys; from hjepa_bench.plugin.manager import build_plugins; p = build_plugins([]); "
            "p.describe(); p.executor('ray') if 'ray' in p.executors() else None; print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    plugins = build_plugins([])
    assert "ray" in plugins.executors() and "local" in plugins.executors()
    with pytest.raises(UserError, match=r"executor ray is not available: ray is not installed; "
                                        r"pip install 'hjepa-bench\[ray\]'"):
        plugins.executor("ray")


WATCHED = ("import sys; from hjepa_bench.measure.parent_watch import watch_parent; "
           "watch_parent(int(sys.argv[2]), lambda: open(sys.argv[1], 'w').write('orphaned'), 0.05)")
MIDDLE = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', sys.argv[2], sys.argv[1], "
          "str(os.getpid())]); time.sleep(1.0)")


def test_the_parent_watchdog_acts_once_its_parent_is_gone(tmp_path):
    """The one watchdog (a sweep's child, the DDP agent and ranks, the Ray clean-up process): a process
    whose parent exits calls its on_orphan instead of running on."""
    import time

    flag = tmp_path / "flag"
    subprocess.run([sys.executable, "-c", MIDDLE, str(flag), WATCHED], check=True, timeout=60)
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flag.read_text() == "orphaned"
