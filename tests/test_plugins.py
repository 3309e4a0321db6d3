"""Plugin system: a throwaway third-party package found through entry points, autoload switch,
misspelled hooks, duplicates and -p no:NAME."""
from __future__ import annotations

import json
import textwrap
import types

import pytest
from helpers import TINY_FLAGS

from hjepa_bench import hookimpl
from hjepa_bench.errors import UserError
from hjepa_bench.plugin.api import Backend
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import check_record

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


@pytest.mark.slow
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
    check_record(record)
    assert record["params"] == {"total": 5, "trainable": 5}
    assert record["probes"]["toy_counter"]["workload"] == "toy"
    assert record["probes"]["toy_counter"]["steps_seen"] == len(record["series"]["step_time_s"])

    blocked = cli("plugins", "--json", env={**env, "HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    names = {p["name"] for p in json.loads(blocked.stdout)}
    assert "toy" not in names and {"cpu", "cuda", "mps", "hjepa"} <= names


@pytest.mark.slow
def test_probe_from_plugin_runs_inside_the_real_hjepa_step(cli, toy_site, tmp_path):
    out = tmp_path / "h.json"
    res = cli("run", "--device", "cpu", *TINY_FLAGS, "--json", str(out), "-q", env={"PYTHONPATH": str(toy_site)})
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text())
    steps = len(record["series"]["loss"])
    assert record["probes"]["toy_counter"] == {"status": "ok", "steps_seen": steps, "workload": "hjepa"}


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


def test_a_probe_with_an_unknown_cost_is_refused_at_registration():
    from hjepa_bench.plugin.api import Probe

    class Pricey(Probe):
        name = "pricey"
        cost = "expensive"

    @hookimpl
    def hjepa_bench_register_probes(register):
        register(Pricey())

    pricey = _module(hjepa_bench_register_probes=hjepa_bench_register_probes)
    plugins = build_plugins(objects=[("pricey_plugin", pricey)])
    with pytest.raises(UserError) as err:
        plugins.probes()
    assert str(err.value) == ("probe 'pricey' of plugin pricey_plugin has cost 'expensive'; a probe's cost is "
                              "'cheap' or 'costly'.")


def test_duplicate_names_and_wrong_types_are_errors():
    from hjepa_bench.builtin.backend_cpu import CPUBackend

    @hookimpl
    def hjepa_bench_register_backends(register):
        register(CPUBackend())

    plugins = build_plugins(objects=[("dup", _module(hjepa_bench_register_backends=hjepa_bench_register_backends))])
    with pytest.raises(UserError, match="registered twice"):
        plugins.backends()


def test_a_plugin_that_registers_the_wrong_type_is_disabled_alone(capsys):
    """A plugin that registers something that is not the hook's type is disabled with one warning;
    the rest loads and every command that collects that kind still works."""
    @hookimpl
    def hjepa_bench_register_probes(register):
        register("not a probe")

    from hjepa_bench.builtin.backend_cpu import CPUBackend

    @hookimpl
    def hjepa_bench_register_backends(register):
        register(type("Other", (CPUBackend,), {"name": "other"})())

    plugins = build_plugins(objects=[("bad", _module(hjepa_bench_register_probes=hjepa_bench_register_probes,
                                                     hjepa_bench_register_backends=hjepa_bench_register_backends))])
    assert "loss" in plugins.probes() and "cpu" in plugins.backends()
    assert "other" not in plugins.backends()  # a disabled plugin contributes nothing, from any hook
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: plugin bad (throwaway) is disabled: its hook register_probes: TypeError: it "
                   "registered 'not a probe', which is not a Probe"]
    info = {i.name: i for i in plugins.describe()}
    assert "not a Probe" in info["bad"].error and info["bad"].provides == {} and info["cpu"].error is None


def test_disable_a_plugin_by_name():
    plugins = build_plugins(["no:cuda"])
    assert "cuda" not in plugins.backends() and "cpu" in plugins.backends()
    assert isinstance(plugins.backends()["cpu"], Backend)


BROKEN_PLUGIN = textwrap.dedent('''
    """A plugin that breaks every contract it can: each failure is isolated."""
    from hjepa_bench import Probe, ReportSection, hookimpl
    from hjepa_bench.record_model import MISSING, ProbeEntry


    class ListProbe(Probe):
        name = "badlist"
        cost = "costly"

        def finish(self, ctx, record):
            return [1, 2]


    class ObjectProbe(Probe):
        name = "badjson"
        cost = "costly"

        def finish(self, ctx, record):
            return {"x": object(), "y": {1, 2}}


    class TypedEntry(ProbeEntry):
        decrease_pct: float | MISSING | None = MISSING


    class TypedProbe(Probe):
        name = "loss"  # the built-in's name, disabled with -p no:loss below
        cost = "costly"
        entry_model = TypedEntry  # the analysis reads this field as a number

        def finish(self, ctx, record):
            return {"decrease_pct": "a lot"}


    class Boom(ReportSection):
        name = "boom"
        title = "Boom"
        order = 1

        def render(self, records):
            raise RuntimeError("render failed")


    @hookimpl
    def hjepa_bench_register_probes(register):
        register(ListProbe())
        register(ObjectProbe())
        register(TypedProbe())


    @hookimpl
    def hjepa_bench_register_report_sections(register):
        register(Boom())
''')
RAISING_PLUGIN = textwrap.dedent('''
    from hjepa_bench import hookimpl


    @hookimpl
    def hjepa_bench_register_backends(register):
        raise RuntimeError("boom")


    @hookimpl
    def hjepa_bench_register_workloads(register):
        register("hjepa")
''')


def _write_module(folder, name, source):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    return {"PYTHONPATH": str(folder)}


@pytest.mark.slow
def test_a_raising_register_hook_disables_that_plugin_and_every_command_still_works(cli, tmp_path):
    """A register hook that raises disables its plugin with one warning line, and ``plugins`` lists
    it as disabled; every command still works."""
    env = _write_module(tmp_path / "mods", "raising_plugin", RAISING_PLUGIN)
    res = cli("-p", "raising_plugin", "devices", env=env)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "cpu" in res.stdout
    warnings = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert warnings == ["warning: plugin raising_plugin (raising_plugin) is disabled: its hook register_backends: "
                        "RuntimeError: boom"]
    listing = cli("-p", "raising_plugin", "plugins", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    infos = {p["name"]: p for p in json.loads(listing.stdout)}
    assert infos["raising_plugin"]["error"] == "register_backends: RuntimeError: boom"
    assert infos["raising_plugin"]["provides"] == {}  # its workload registration is not used either
    assert infos["cpu"]["error"] is None and infos["hjepa"]["provides"] == {"workloads": ["hjepa"]}
    table = cli("-p", "raising_plugin", "plugins", env=env)
    assert "disabled (register_backends: RuntimeError: boom)" in table.stdout


@pytest.mark.slow
def test_broken_probes_and_sections_never_lose_the_record_or_the_report(cli, tmp_path):
    """A probe whose finish() returns a list, data JSON cannot hold or a field of the wrong type, and
    a report section whose render() raises: each failure is recorded against that probe or section,
    and the record (``run --json``) and the reports (``run --report``, ``report``) keep the rest."""
    env = _write_module(tmp_path / "mods", "broken_plugin", BROKEN_PLUGIN)
    rec, md = tmp_path / "rec.json", tmp_path / "run.md"
    res = cli("-p", "broken_plugin", "-p", "no:loss", "run", "--device", "cpu", *TINY_FLAGS,
              "--probes", "badlist,badjson,loss,stability", "-q", "--json", str(rec), "--report", str(md), env=env)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    record = json.loads(rec.read_text())
    check_record(record)
    assert record["status"] == "ok" and record["metrics"]["it_per_s"] > 0
    probes = record["probes"]
    assert probes["badlist"] == {"status": "failed", "error": "finish() returned a list, not a mapping"}
    assert probes["badjson"]["status"] == "failed" and "cannot hold" in probes["badjson"]["error"]
    assert "TypeError" in probes["badjson"]["error"]
    assert probes["loss"]["status"] == "failed"
    assert "probes.loss.decrease_pct must be a number" in probes["loss"]["error"]
    assert probes["stability"]["status"] == "ok"  # the other probes are kept
    text = md.read_text()
    assert "section boom failed: RuntimeError: render failed" in text
    assert "## Measured step speed" in text  # the sections after it rendered
    assert "warning: report section boom failed" in res.stderr

    results = tmp_path / "sweep"
    results.mkdir()
    (results / "results.jsonl").write_text(json.dumps(record) + "\n")
    # the report loads the same plugins, its own "loss" probe disabled as in the run
    rep = cli("-p", "broken_plugin", "-p", "no:loss", "report", str(results), "--no-charts",
              "--out", str(tmp_path / "rep" / "report.md"), env=env)
    assert rep.returncode == 0, rep.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "section boom failed: RuntimeError: render failed" in report and "## Recommendation" in report
    assert "Measured step speed" in report
