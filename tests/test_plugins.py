"""Plugin system: a throwaway third-party package found through entry points, autoload switch,
misspelled hooks, duplicates and -p no:NAME."""
from __future__ import annotations

import json
import textwrap
import types

import pytest

from hjepa_bench import hookimpl
from hjepa_bench.plugin.api import Backend
from hjepa_bench.errors import UserError
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import validate_record

from helpers import TINY_FLAGS

TOY_PLUGIN = textwrap.dedent('''
    """A third-party hjepa-bench plugin: one workload and one probe."""
    import torch
    import hjepa_bench
    from hjepa_bench.plugin.api import PreparedWorkload, Probe, StepOutput, Workload


    class Prepared(PreparedWorkload):
        batch_size = 2

        def __init__(self):
            self.net = torch.nn.Linear(4, 1)
            self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)

        def batches(self):
            while True:
                yield torch.ones(2, 4)

        def step(self, batch):
            loss = self.net(batch).pow(2).mean()
            self.opt.zero_grad(); loss.backward(); self.opt.step()
            return StepOutput(loss=loss.detach())

        def params(self):
            return {"total": 5, "trainable": 5}


    class ToyWorkload(Workload):
        name = "toy"

        def prepare(self, config, backend):
            return Prepared()


    class StepCounter(Probe):
        name = "toy_counter"

        def start(self, ctx):
            self.n = 0

        def after_step(self, ctx, sample):
            self.n += 1

        def finish(self, ctx, record):
            return {"steps_seen": self.n, "workload": record["config"]["bench"]["workload"]}


    @hjepa_bench.hookimpl
    def hjepa_bench_register_workloads(register):
        register(ToyWorkload())


    @hjepa_bench.hookimpl
    def hjepa_bench_register_probes(register):
        register(StepCounter())
''')


@pytest.fixture
def toy_site(tmp_path):
    """Install a real third-party distribution (module + dist-info with entry points) on a path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_hjepa_plugin.py").write_text(TOY_PLUGIN)
    info = site / "toy_hjepa_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-hjepa-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[hjepa_bench]\ntoy = toy_hjepa_plugin\n")
    return site


def test_third_party_plugin_is_listed_and_used(cli, toy_site, tmp_path):
    env = {"PYTHONPATH": str(toy_site)}
    listing = cli("plugins", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["toy"]["origin"] == "entry point of toy-hjepa-plugin 0.3"
    assert plugins["toy"]["provides"] == {"workloads": ["toy"], "probes": ["toy_counter"]}
    assert plugins["cpu"]["origin"] == "builtin"
    assert "hjepa_bench_register_probes" in plugins["toy"]["hooks"]

    out = tmp_path / "toy.json"
    res = cli("run", "--device", "cpu", "--workload", "toy", *TINY_FLAGS, "--json", str(out), "-q", env=env)
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text())
    validate_record(record)
    assert record["params"] == {"total": 5, "trainable": 5}
    assert record["probes"]["toy_counter"]["workload"] == "toy"
    assert record["probes"]["toy_counter"]["steps_seen"] == len(record["series"]["step_time_s"])

    blocked = cli("plugins", "--json", env={**env, "HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    names = {p["name"] for p in json.loads(blocked.stdout)}
    assert "toy" not in names and {"cpu", "cuda", "mps", "hjepa"} <= names


def test_probe_from_plugin_runs_inside_the_real_hjepa_step(cli, toy_site, tmp_path):
    out = tmp_path / "h.json"
    res = cli("run", "--device", "cpu", *TINY_FLAGS, "--json", str(out), "-q", env={"PYTHONPATH": str(toy_site)})
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text())
    assert record["probes"]["toy_counter"] == {"status": "ok", "steps_seen": len(record["series"]["loss"]), "workload": "hjepa"}


def _module(**attrs):
    mod = types.ModuleType("throwaway")
    mod.__dict__.update(attrs)
    return mod


def test_misspelled_hook_fails_loudly():
    @hookimpl
    def hjepa_bench_register_backend(register):  # missing the final "s"
        pass

    with pytest.raises(UserError, match="does not exist"):
        build_plugins(objects=[("typo", _module(hjepa_bench_register_backend=hjepa_bench_register_backend))])

    def hjepa_bench_register_probe(register):  # unmarked, and misspelled
        pass

    with pytest.raises(UserError, match="does not exist"):
        build_plugins(objects=[("typo2", _module(hjepa_bench_register_probe=hjepa_bench_register_probe))])


def test_duplicate_names_and_wrong_types_are_errors():
    from hjepa_bench.plugins.backend_cpu import CPUBackend

    @hookimpl
    def hjepa_bench_register_backends(register):
        register(CPUBackend())

    plugins = build_plugins(objects=[("dup", _module(hjepa_bench_register_backends=hjepa_bench_register_backends))])
    with pytest.raises(UserError, match="registered twice"):
        plugins.backends()

    @hookimpl
    def hjepa_bench_register_probes(register):
        register("not a probe")

    plugins = build_plugins(objects=[("bad", _module(hjepa_bench_register_probes=hjepa_bench_register_probes))])
    with pytest.raises(UserError, match="not a Probe"):
        plugins.probes()


def test_disable_a_plugin_by_name():
    plugins = build_plugins(["no:cuda"])
    assert "cuda" not in plugins.backends() and "cpu" in plugins.backends()
    assert isinstance(plugins.backends()["cpu"], Backend)
