"""The epoch_costs probe on real tiny H-JEPA runs through the real harness (CPU backend)."""
from __future__ import annotations

import json
import math
import os

import psutil
import pytest
import torch
from helpers import tiny_config
from test_runner import ToyWorkload

from hjepa_bench.builtin import probe_epoch_costs
from hjepa_bench.builtin.probe_epoch_costs import DEFINITIONS, EpochCostsProbe, EpochCostsSection
from hjepa_bench.measure.env import environment_fingerprint
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.api import Workload
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.report.sections import render_report

MAIN_FIELDS = ("worker_startup_s", "val_step_s", "checkpoint_save_s")


class KeepPrepared(Workload):
    """The real workload, keeping the prepared object so a test can look at it after the run."""

    def __init__(self, inner: Workload):
        self.inner, self.name, self.prepared = inner, inner.name, None

    def prepare(self, config, backend):
        self.prepared = self.inner.prepare(config, backend)
        return self.prepared


@pytest.fixture(scope="module")
def plugins():
    return build_plugins()


def _run(plugins, artifacts_dir=None, **overrides):
    backend = plugins.backends()["cpu"]
    workload = KeepPrepared(plugins.workloads()["hjepa"])
    overrides = {"bench.min_steps": 3, "bench.max_steps": 3, **overrides}  # the probe runs after the steps
    record = run_benchmark(tiny_config(**overrides), backend, workload, [EpochCostsProbe()],
                           environment_fingerprint(backend), artifacts_dir=artifacts_dir)
    return record, workload.prepared


def _finite_pos(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def reference_run(plugins, tmp_path_factory):
    """Reference variant, 2 non-persistent workers, an artifacts folder that does not exist yet."""
    base = tmp_path_factory.mktemp("arts")
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    record, prepared = _run(plugins, artifacts_dir=str(base / "new" / "deeper"), **{"data.num_workers": 2})
    children_after = {p.pid for p in psutil.Process().children(recursive=True)}
    return record, prepared, base, children_after - children_before


def test_reference_run_measures_every_cost(reference_run):
    record, _prepared, _, _ = reference_run
    assert record["status"] == "ok"
    e = record["probes"]["epoch_costs"]
    assert e["status"] == "ok" and e["measured"] is True and e["errors"] == {}
    assert e["variant"] == "reference" and e["steps_per_epoch"] == 64 // 4
    # worker start-up with 2 fresh workers, both repeats kept
    assert e["num_workers"] == 2 and e["persistent_workers"] is False and e["paid_every_epoch"] is True
    assert e["multiprocessing_context"] in ("fork", "spawn", "forkserver")
    assert e["multiprocessing_context_source"] == "platform default"
    assert _finite_pos(e["worker_startup_s"]) and len(e["worker_startup_runs_s"]) == 2
    assert all(_finite_pos(x) for x in e["worker_startup_runs_s"])
    assert min(e["worker_startup_runs_s"]) <= e["worker_startup_s"] <= max(e["worker_startup_runs_s"])
    parts = e["first_batch_s"]
    assert _finite_pos(parts["start_workers_s"]) and _finite_pos(parts["first_batch_wait_s"])
    assert parts["start_workers_s"] + parts["first_batch_wait_s"] == pytest.approx(e["worker_startup_s"], rel=0.5)
    assert _finite_pos(e["worker_shutdown_s"])
    waits = record["series"]["data_wait_s"][record["series"]["warmup_steps"]:]
    assert e["steady_batch_wait_s"] == pytest.approx(sorted(waits)[len(waits) // 2], rel=1.0)
    assert e["startup_extra_s"] == pytest.approx(max(0.0, e["worker_startup_s"] - e["steady_batch_wait_s"]))
    # validation forward
    assert _finite_pos(e["val_step_s"]) and len(e["val_step_runs_s"]) == 3
    assert _finite_pos(e["val_forward_s"]) and e["val_inputs_s"] >= 0
    assert e["val_batch_size"] == 4 and e["val_precision"] == "fp32"
    assert e["val_loss"] is not None and math.isfinite(e["val_loss"])
    # checkpoint: model state (incl. target encoder) + 2 AdamW moments of the trainable params, fp32
    assert _finite_pos(e["checkpoint_save_s"]) and len(e["checkpoint_runs_s"]) == 2
    params = record["params"]
    expected = 4 * (params["total"] + 2 * params["trainable"])
    assert 0.9 * expected < e["checkpoint_bytes"] < 1.5 * expected
    # every field documented, probe time covers the measurements, JSON-clean
    assert set(e) - {"status", "definitions"} == set(e["definitions"]) == set(DEFINITIONS)
    assert e["probe_time_s"] >= e["checkpoint_save_s"] + e["val_step_s"] + e["worker_startup_s"]
    json.dumps(e, allow_nan=False)


def test_reference_run_leaves_nothing_behind(reference_run):
    record, prepared, base, new_children = reference_run
    e = record["probes"]["epoch_costs"]
    assert e["checkpoint_dir_parent"] == str(base / "new" / "deeper")
    assert not (base / "new").exists()  # the folders the probe had to make are gone again
    assert new_children == set()  # the probe's DataLoader workers were shut down
    loader = prepared.loader
    assert loader.timeout == 0 and getattr(loader, "_iterator", None) is None
    assert prepared.trainer.model.training is True  # eval() for the val step, train() restored


def test_efficient_variant_with_persistent_workers(plugins):
    record, prepared = _run(plugins, **{"bench.variant": "efficient", "data.num_workers": 1,
                                        "bench.persistent_workers": True})
    e = record["probes"]["epoch_costs"]
    assert record["status"] == "ok" and e["errors"] == {}
    assert e["variant"] == "efficient" and e["num_workers"] == 1
    assert e["persistent_workers"] is True and e["persistent_workers_effective"] is True
    assert e["paid_every_epoch"] is False  # persistent workers start once per run
    assert _finite_pos(e["worker_startup_s"])
    assert _finite_pos(e["val_step_s"]) and e["val_batch_size"] == 4 and math.isfinite(e["val_loss"])
    assert e["checkpoint_bytes"] > 4 * record["params"]["total"]
    assert prepared.loader._iterator is None  # no persistent iterator (and its workers) left running
    assert "once (persistent)" in EpochCostsProbe().summarize(e)


def test_no_workers_and_an_existing_artifacts_folder(plugins, tmp_path):
    (tmp_path / "trace.json").write_text("{}")
    record, _ = _run(plugins, artifacts_dir=str(tmp_path))  # tiny config: num_workers 0
    e = record["probes"]["epoch_costs"]
    assert e["num_workers"] == 0 and e["paid_every_epoch"] is False
    assert e["multiprocessing_context"] is None and _finite_pos(e["worker_startup_s"])
    assert EpochCostsProbe().summarize(e).startswith("no workers (first batch ")
    # the checkpoints went into the existing folder and were deleted; its own files stay
    assert e["checkpoint_bytes"] > 0 and e["checkpoint_dir_parent"] == str(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["trace.json"]


def test_workload_without_loader_is_not_measured(plugins):
    backend = plugins.backends()["cpu"]
    r = run_benchmark(tiny_config(), backend, ToyWorkload(), [EpochCostsProbe()], {"backend": "cpu"})
    e = r["probes"]["epoch_costs"]
    assert r["status"] == "ok" and e["status"] == "ok"
    assert e["measured"] is False and "loader" in e["reason"]
    assert EpochCostsProbe().summarize(e).startswith("not measured: ")
    assert EpochCostsSection().render([r]) is None


def test_a_failing_checkpoint_keeps_the_other_measurements(plugins, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    record, _ = _run(plugins, **{"data.num_workers": 1})
    e = record["probes"]["epoch_costs"]
    assert e["status"] == "ok" and e["measured"] is True
    assert e["errors"] == {"checkpoint_save_s": "OSError: disk full"}
    assert e["checkpoint_save_s"] is None and e["checkpoint_bytes"] is None
    assert _finite_pos(e["worker_startup_s"]) and _finite_pos(e["val_step_s"])
    line = EpochCostsProbe().summarize(e)
    assert "checkpoint failed" in line and "val step" in line and "worker start-up" in line
    assert "checkpoint_save_s: OSError: disk full" in EpochCostsSection().render([record])


def test_summarize_line():
    e = {"measured": True, "num_workers": 4, "paid_every_epoch": True, "worker_startup_s": 1.234,
         "val_step_s": 0.045, "val_batch_size": 32, "checkpoint_save_s": 0.31, "checkpoint_bytes": 150 * 2**20,
         "errors": {}}
    assert EpochCostsProbe().summarize(e) == \
        "worker start-up 1.23 s/epoch, val step 45 ms (b32), checkpoint 0.31 s (150 MiB)"
    failed = {**e, "val_step_s": None, "errors": {"val_step_s": "RuntimeError: boom"}}
    assert "val step failed" in EpochCostsProbe().summarize(failed)


def test_report_section_renders_a_table(reference_run, plugins):
    record = reference_run[0]
    text = render_report([record, {"probes": {}}], [EpochCostsSection()])
    assert "## Per-epoch costs" in text
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(table) == 3  # header, rule, one record
    assert "worker start-up (s)" in table[0] and "checkpoint size" in table[0]
    assert "every epoch" in table[2] and "MiB" in table[2]
    assert EpochCostsSection().render([{"probes": {}}]) is None


def test_registered_by_default_as_cheap(plugins):
    probe = plugins.probes()["epoch_costs"]
    assert isinstance(probe, EpochCostsProbe) and probe.cost == "cheap"
    assert "epoch_costs" in [p.name for p in plugins.select_probes(None)]
    assert "epoch_costs" in [s.name for s in plugins.report_sections()]
    assert probe_epoch_costs.hjepa_bench_register_probes is not None
