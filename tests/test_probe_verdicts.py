"""Probes judge themselves and feed the success criteria: a report asks the probe objects it is given
(the registered ones by default), never an entry by its key's spelling."""
from __future__ import annotations

import types

import pytest
from records_factory import GOOD_LOSS, make_record, quick_val_values

from hjepa_bench import FactVerdict, Probe, hookimpl
from hjepa_bench.analysis.criteria import FAIL, NOT_MEASURED, PASS, PROBE_SECTION, Facts, set_probe_facts
from hjepa_bench.analysis.report_data import ReportSettings, build_analysis
from hjepa_bench.analysis.verdicts import probe_facts, rejudge_record
from hjepa_bench.builtin.probe_loss import LossProbe
from hjepa_bench.plugin.manager import build_plugins, registered_probes
from hjepa_bench.thresholds import DEFAULTS

LIMIT_C = 90


class ThermalProbe(Probe):
    """A third-party probe: the hottest the device got, and its own verdict on it."""

    name = "thermal"

    def verdicts(self, entry, thresholds):
        hottest = entry.get("max_c")
        if hottest is None:
            return [FactVerdict("performance", "throttle", "No thermal throttling", NOT_MEASURED, "no reading")]
        return [FactVerdict("performance", "throttle", "No thermal throttling", FAIL if hottest > LIMIT_C else PASS,
                            f"hottest {hottest} C (limit {LIMIT_C} C)", hottest)]


def _record(**probes):
    rec = make_record(quick_val_values(), it_per_s=3.0, cv=0.05)
    rec["probes"].update(probes)
    return rec


def _analysis(records, probes=None):
    return build_analysis(records, ReportSettings(probes=probes))


def _criterion(analysis, cid):
    return next(c for c in analysis["criteria"] if c["id"] == cid)


def _with_thermal():
    return {**registered_probes(), "thermal": ThermalProbe()}


def test_the_judged_run_passes_performance_without_the_third_party_probe():
    assert _criterion(_analysis([_record()]), "performance")["status"] == PASS


@pytest.mark.parametrize("reading, status", [(95, FAIL), (60, PASS), (None, NOT_MEASURED)])
def test_a_third_party_verdict_feeds_its_criterion(reading, status):
    analysis = _analysis([_record(thermal={"status": "ok", "max_c": reading})], _with_thermal())
    perf = _criterion(analysis, "performance")
    assert perf["status"] == status
    assert "No thermal throttling: " in perf["evidence"]
    section = next(s for s in analysis["checklist"] if s["section"] == PROBE_SECTION)
    assert [(i["fact"], i["status"], i["criterion"]) for i in section["items"]] == [
        ("thermal.throttle", status, "performance")]
    assert analysis["facts"]["probe_verdicts"][0]["fact"] == "thermal.throttle"
    # the other criteria are not touched
    assert _criterion(analysis, "quality") == _criterion(_analysis([_record()]), "quality")


def test_a_third_party_probe_registered_as_a_plugin_feeds_the_report():
    @hookimpl
    def hjepa_bench_register_probes(register):
        register(ThermalProbe())

    plugin = types.ModuleType("thermal_plugin")
    plugin.hjepa_bench_register_probes = hjepa_bench_register_probes
    probes = build_plugins(objects=[("thermal_plugin", plugin)]).probes()
    analysis = _analysis([_record(thermal={"status": "ok", "max_c": 95})], probes)
    assert _criterion(analysis, "performance")["status"] == FAIL


def test_a_failed_probe_entry_gives_no_verdict():
    analysis = _analysis([_record(thermal={"status": "failed", "error": "boom"})], _with_thermal())
    assert _criterion(analysis, "performance")["status"] == PASS
    assert PROBE_SECTION not in [s["section"] for s in analysis["checklist"]]
    assert "probe_verdicts" not in analysis["facts"]  # a report without any reads as it always did


def test_an_entry_under_another_name_does_not_feed_a_built_in_criterion():
    real_loss = {"status": "ok", **GOOD_LOSS, "preliminary": False}
    fed = _criterion(_analysis([_record(loss=real_loss)]), "learning")
    assert fed["status"] == PASS
    unfed = _criterion(_analysis([_record()]), "learning")
    assert unfed["status"] == NOT_MEASURED
    # the same entry under a name no probe registers is nobody's measurement
    assert _criterion(_analysis([_record(loss_v2=real_loss)]), "learning") == unfed


def test_the_criterion_is_fed_by_the_probe_object_whatever_its_name():
    renamed = type("RenamedLoss", (LossProbe,), {"name": "loss_v2"})()
    probes = {k: v for k, v in registered_probes().items() if k != "loss"} | {"loss_v2": renamed}
    real_loss = {"status": "ok", **GOOD_LOSS, "preliminary": False}
    assert _criterion(_analysis([_record(loss_v2=real_loss)], probes), "learning")["status"] == PASS
    # without the loss probe, an entry called "loss" is judged by nobody
    assert _criterion(_analysis([_record(loss=real_loss)], probes), "learning")["status"] == NOT_MEASURED


def test_a_probe_judges_its_own_entry_with_the_reports_thresholds():
    rec = _record()
    rec["probes"]["loss"] = {"status": "ok", **GOOD_LOSS, "criterion_loss_decrease_met": "pass"}
    strict = rejudge_record(rec, DEFAULTS.__class__(min_loss_decrease_pct=50.0))
    assert strict["probes"]["loss"]["criterion_loss_decrease_met"] == "fail"
    # a probe that is not asked leaves its entry as it is
    kept = rejudge_record(rec, DEFAULTS.__class__(min_loss_decrease_pct=50.0), {})
    assert kept["probes"]["loss"] == rec["probes"]["loss"]


def test_probe_facts_are_facts_fields_or_record_facts():
    facts = probe_facts(_record(loss={"status": "ok", **GOOD_LOSS}))
    assert facts["loss_decrease_pct"] == 30.0 and facts["step_cv_pct"] == 5.0
    f = Facts(source="sweep", subject="x")
    set_probe_facts(f, {"loss_end": 0.5, "lr_applied": 1e-4})
    assert f.loss_end == 0.5
    with pytest.raises(ValueError, match="unknown facts lost_end"):
        set_probe_facts(f, {"lost_end": 0.5})


def test_a_verdict_names_a_real_criterion_and_status():
    with pytest.raises(ValueError, match="unknown criterion"):
        FactVerdict("speed", "x", "x", PASS, "x")
    with pytest.raises(ValueError, match="unknown verdict"):
        FactVerdict("performance", "x", "x", "ok", "x")


THERMAL_MODULE = '''
from hjepa_bench import FactVerdict, Probe, hookimpl


class Thermal(Probe):
    name = "thermal"

    def verdicts(self, entry, thresholds):
        hot = entry["max_c"] > 90
        return [FactVerdict("performance", "throttle", "No thermal throttling", "fail" if hot else "pass",
                            f"hottest {entry['max_c']} C", entry["max_c"])]


@hookimpl
def hjepa_bench_register_probes(register):
    register(Thermal())
'''


def test_a_probe_loaded_with_p_feeds_the_report_command(tmp_path):
    """`hjepa-bench -p MODULE report DIR`: the report asks the probes this command loaded, so a probe
    given with -p fails the criterion its verdict names."""
    import json

    from helpers import run_cli

    from hjepa_bench.record import dumps

    (tmp_path / "thermal_probe.py").write_text(THERMAL_MODULE)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "results.jsonl").write_text(dumps(_record(thermal={"status": "ok", "max_c": 97}), indent=None) + "\n")
    res = run_cli("-p", "thermal_probe", "report", str(out), "--no-charts", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    perf = _criterion(json.loads((out / "report.json").read_text()), "performance")
    assert perf["status"] == FAIL and "hottest 97 C" in json.dumps(perf), perf
    # without -p nobody judges the entry
    res = run_cli("report", str(out), "--no-charts")
    assert res.returncode == 0, res.stderr
    assert _criterion(json.loads((out / "report.json").read_text()), "performance")["status"] == PASS
