"""Every verdict is judged on data that supports it, on records of real tiny runs.

The records come from real runs of the H-JEPA step on the CPU (64 px, a 2-block ViT-Tiny), in
this process, with the real probes; the RSS trace that plateaus is a recorded real run
(``tests/data/rss_plateau_cpu.json``, its note says how it was made).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_OPTION, md_table, run_cli, tiny_config
from scipy import stats as sps
from test_runner import ToyWorkload

from hjepa_bench.analysis.criteria import (
    FAIL,
    NOT_MEASURED,
    PASS,
    checklist,
    fact_verdicts,
    facts_from_records,
    is_backend_error,
    success_criteria,
)
from hjepa_bench.analysis.decision_matrix import decide, evaluate_option, judge, recommend_warmup, recommend_workers
from hjepa_bench.analysis.memory import leak_check
from hjepa_bench.analysis.projection import measured_step_times, seconds_per_step
from hjepa_bench.analysis.report_data import ReportSettings, build_analysis
from hjepa_bench.analysis.verdicts import rejudge_record, rejudge_records
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.probe_bottleneck import BottleneckProbe
from hjepa_bench.builtin.probe_features import FeaturesProbe
from hjepa_bench.builtin.probe_loss import LossProbe
from hjepa_bench.builtin.probe_memory import MemoryProbe
from hjepa_bench.builtin.probe_stability import StabilityProbe
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
from hjepa_bench.measure.env import environment_fingerprint
from hjepa_bench.measure.results import check_result
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.measure.validation_record import validation_facts, validation_record
from hjepa_bench.measure.validation_run import ValidationSettings, run_validation
from hjepa_bench.options import guide_options, load_options
from hjepa_bench.plugin.api import Probe
from hjepa_bench.record import RecordError, dumps
from hjepa_bench.report.run_text import summary_text
from hjepa_bench.thresholds import DEFAULTS

DATA = Path(__file__).parent / "data"
MiB = 2**20


class LeakyProbe(Probe):
    """Deliberately leaks: keeps a 4 MiB tensor (written, so its pages are resident) every step."""

    name = "leaky"

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []

    def after_step(self, ctx, sample):
        self.kept.append(torch.ones(MiB, dtype=torch.float32))

    def finish(self, ctx, record):
        n, self.kept = len(self.kept), []
        return {"tensors_kept": n}


def _run(measured: int, probes, *, workload=None, warmup: int = 1):
    values = tiny_config(**{"bench.warmup_steps": warmup, "bench.min_steps": measured, "bench.max_steps": measured,
                            "bench.max_time_s": 120.0, "bench.target_rel_precision": 1e-6})
    values["bench"]["precision"], values["bench"]["device"] = "fp32", "cpu"
    backend = CPUBackend()
    return run_benchmark(values, backend, workload or HJEPAWorkload(), list(probes), environment_fingerprint(backend))


def _cheap():
    return [StabilityProbe(), LossProbe(), MemoryProbe(), BottleneckProbe()]


@pytest.fixture(scope="module")
def runs():
    """Real records: 1, 3 and 14 measured steps (the long one with features; long enough for the loss
    probe to scan the warm-up for spikes), and a run that errors."""
    out = {"one": _run(1, [StabilityProbe(), LossProbe()]), "three": _run(3, _cheap()),
           "long": _run(14, _cheap() + [FeaturesProbe()]),
           "error": _run(5, _cheap(), workload=ToyWorkload(fail="error"))}
    assert [out[k]["status"] for k in ("one", "three", "long")] == ["ok"] * 3 and out["error"]["status"] == "error"
    return out


@pytest.fixture(scope="module")
def tiny_option(tmp_path_factory):
    p = tmp_path_factory.mktemp("opt") / "opts.yaml"
    p.write_text(TINY_OPTION)
    return p, load_options(p, include_guide=False)[0]




def _row(option, records, th=DEFAULTS):
    rows = evaluate_option(option, rejudge_records(records, th), th)
    assert len(rows) == 1 and rows[0]["measured"]
    return judge(rows[0], th)


# --------------------------------------------------------------------------- 1. the decision rule
def test_an_option_with_unmeasured_step_time_cv_is_not_recommended(runs, tiny_option):
    _, opt = tiny_option
    row = _row(opt, [runs["three"]])
    assert row["step_cv_pct"] is None and row["steps_measured"] == 3 and row["fits"]
    assert row["eligible"] is False
    assert any("measure longer (--max-time)" in b for b in row["blockers"])
    assert decide([row])["per_machine"][0]["recommended"] is None
    # the same option measured over 14 steps has a CV, and is recommended when that CV is below the limit
    lenient = DEFAULTS.model_copy(update={"max_step_cv_pct": 1000.0})
    good = _row(opt, [runs["long"]], lenient)
    assert good["step_cv_pct"] is not None and good["eligible"]
    assert decide([good])["per_machine"][0]["recommended"] == "T"


# --------------------------------------------------------------------------- 2. the projection band
@pytest.mark.slow
def test_no_band_from_fewer_than_five_steps(runs, tiny_option, tmp_path):
    sps3 = seconds_per_step(runs["three"])
    assert sps3["n"] == 3 and sps3["mid"] is not None
    assert sps3["low"] is None and sps3["high"] is None and sps3["band_note"] == "no band (n < 5)"
    opts, _ = tiny_option
    out = _report(tmp_path, [runs["three"]], "--options-file", str(opts))
    text = (out / "report.md").read_text()
    row = next(r for r in md_table(text, "## Decision matrix") if r["option"] == "T")
    assert row["projected h [band]"].endswith("[no band (n < 5)]")
    proj = next(r for r in md_table(text, "## Time-to-train projections") if r["option"] == "T")
    assert proj["s/step [95% band]"].endswith("[no band (n < 5)]")
    assert proj["total h [band]"].endswith("[no band (n < 5)]")


def test_the_band_is_the_student_t_interval_of_the_mean(runs):
    rec = runs["long"]
    x = np.asarray(measured_step_times(rec))
    assert len(x) == 14
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(len(x)))
    band = seconds_per_step(rec)
    mid = band["mid"]
    assert band["band_note"] is None
    assert band["low"] == pytest.approx(mid * max(lo, 0.0) / x.mean(), rel=1e-9)
    assert band["high"] == pytest.approx(mid * hi / x.mean(), rel=1e-9)
    # honest at small n: as wide as the t interval, so wider than the half-width s / sqrt(n) * 1.96 of a normal one
    assert (band["high"] - band["low"]) / mid > 2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x)) / x.mean()


# --------------------------------------------------------------------------- 6. checklist = criteria
def _assert_consistent(f, th=DEFAULTS):
    """Each checklist item agrees with the criterion that covers its fact; returns both, by id."""
    crit = {c["id"]: c for c in success_criteria(f, th)}
    # criterion 1 also covers "all epochs", which the checklist has no line for: its fact verdict
    items = {**fact_verdicts(f, th), **{i["fact"]: i for s in checklist(f, th) for i in s["items"]}}
    covers = {"stability": ["crash", "epochs"], "performance": ["speed", "variance"],
              "learning": ["loss_drop", "divergence", "warmup"],
              "compatibility": ["mps"] if f.backend == "mps" else []}
    for cid, facts in covers.items():
        statuses = [items[x]["status"] for x in facts]
        if not statuses:
            continue
        if crit[cid]["status"] == PASS:
            assert all(s == PASS for s in statuses), (cid, statuses)
        elif crit[cid]["status"] == FAIL:
            assert FAIL in statuses, (cid, statuses)
        else:
            assert FAIL not in statuses and not all(s == PASS for s in statuses), (cid, statuses)
    # "No major bottlenecks" passes only when the report advises no change of the worker count
    if items["bottleneck"]["status"] == PASS:
        advice = (f.bottleneck_advice or "").lower()
        assert not advice.startswith(("increase", "decrease")) and "saturated" not in advice
        assert not f.workers_more_needed and f.bottleneck != "data-bound"
    return crit, items


def test_checklist_and_criteria_agree_over_many_fact_sets(runs):
    base = facts_from_records(rejudge_records([runs["long"]], DEFAULTS))
    seen = set()
    for crashed in (False, True):
        for preliminary, diverged in ((True, False), (True, True), (False, False), (False, True)):
            for spikes in (0, 2, None):
                for bottleneck, saturated, more in (("device-bound", False, False), ("data-bound", False, True),
                                                    ("device-bound", True, False), (None, None, None)):
                    for leak in (False, True, None):
                        for backend, errors in (("cpu", []), ("mps", []), ("mps", ["mps: op not implemented"])):
                            f = copy.deepcopy(base)
                            f.crashed, f.crash_detail = crashed, "ValueError" if crashed else None
                            f.loss_preliminary, f.diverged, f.warmup_spikes = preliminary, diverged, spikes
                            f.bottleneck, f.cpu_saturated, f.workers_more_needed = bottleneck, saturated, more
                            f.bottleneck_advice = (None if bottleneck is None else
                                                   "increase num_workers" if more else
                                                   "decrease num_workers to 2" if saturated else
                                                   "keep num_workers at 0")
                            f.leak, f.backend, f.backend_errors = leak, backend, errors
                            f.guide_differences = []  # judged as quick_val's own run
                            crit, items = _assert_consistent(f)
                            seen.add((crit["learning"]["status"], items["bottleneck"]["status"]))
    assert len(seen) >= 6  # the fact sets really differ


def test_a_benchmarks_preliminary_loss_judges_neither_divergence_nor_warmup(runs):
    f = facts_from_records(rejudge_records([runs["long"]], DEFAULTS))
    assert f.loss_preliminary and f.diverged is False and f.warmup_spikes is not None
    crit, items = _assert_consistent(f)
    assert crit["learning"]["status"] == NOT_MEASURED
    assert items["divergence"]["status"] == NOT_MEASURED and "preliminary" in items["divergence"]["evidence"]
    assert items["warmup"]["status"] == NOT_MEASURED and "preliminary" in items["warmup"]["evidence"]


def test_a_benchmark_error_is_listed_but_is_no_crash_of_a_validation_run(runs):
    """A sweep runs benchmarks: a config that errors is named in criterion 1's evidence, and only a
    validation run can fail the guide's "no crashes" criterion (a validation run's crash: below)."""
    f = facts_from_records(rejudge_records([runs["long"], runs["error"]], DEFAULTS))
    crit, items = _assert_consistent(f)
    assert crit["stability"]["status"] == NOT_MEASURED and "shapes do not line up" in crit["stability"]["evidence"]
    assert items["crash"]["status"] == NOT_MEASURED
    assert "not crashes of a validation run" in items["crash"]["evidence"]
    # no backend error, but the criterion also lists the CPU fallbacks, which this run did not measure
    assert crit["compatibility"]["status"] == NOT_MEASURED and "no backend errors" in crit["compatibility"]["evidence"]
    assert "CPU fallbacks not measured" in crit["compatibility"]["evidence"]
    assert is_backend_error("NotImplementedError: The operator 'aten::x' "
                            "is not currently implemented for the MPS device")
    assert not is_backend_error("ValueError: shapes do not line up")


def test_no_major_bottlenecks_fails_when_the_report_advises_a_worker_change(runs):
    th = DEFAULTS.model_copy(update={"data_bound_share": 0.0})  # any data wait is data-bound
    rec = runs["long"]
    assert rec["metrics"]["data_wait_frac"] > 0
    judged = rejudge_record(rec, th)
    bott = judged["probes"]["bottleneck"]
    assert bott["verdict"] == "data-bound" and not bott["worker_advice"].startswith("keep num_workers at")
    analysis = build_analysis([rec], ReportSettings(thresholds=th))
    items = {i["fact"]: i for s in analysis["checklist"] for i in s["items"]}
    # a tiny config is not the guide's run: the line shows the problem and the advice, judged "not measured" ...
    assert items["bottleneck"]["status"] == NOT_MEASURED and "data-bound" in items["bottleneck"]["evidence"]
    # ... and as quick_val's own run it fails
    f = facts_from_records(rejudge_records([rec], th), workers_choice=analysis["group_choices"][0]["workers"])
    f.guide_differences = []
    assert {i["fact"]: i for s in checklist(f, th) for i in s["items"]}["bottleneck"]["status"] == FAIL
    # one advice per fact: the checklist shows the report's worker advice, the one the recommendations show
    group = analysis["group_choices"][0]["workers"]
    assert group["reason"] in items["bottleneck"]["evidence"] and group["more_needed"]
    # with the default threshold the same record passes only if no change of workers is advised
    facts = facts_from_records(rejudge_records([rec], DEFAULTS))
    _assert_consistent(facts)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    out = tmp_path_factory.mktemp("val")
    values = tiny_config(**{"data.num_workers": 0})
    backend = CPUBackend()
    result = run_validation(values, backend, ValidationSettings(epochs=1, out_dir=out, max_steps_per_epoch=8,
                                                                feature_every_epochs=0, feature_n=32,
                                                                val_max_batches=1), progress=False)
    assert result["status"] == "ok"
    return result, validation_record(result, environment_fingerprint(backend))


def test_validate_judges_its_bottleneck_from_its_data_wait(validated):
    result, record = validated
    for th in (DEFAULTS, DEFAULTS.model_copy(update={"data_bound_share": 0.0})):
        rec = rejudge_record(record, th)
        f = validation_facts(result, rec)
        assert f.guide_differences  # a tiny config: the checklist's bottleneck line names it ...
        f.guide_differences = []  # ... and judges it like quick_val's own run here
        items = {i["fact"]: i for s in checklist(f, th) for i in s["items"]}
        more = recommend_workers([rec], None, th)["more_needed"]
        assert items["bottleneck"]["status"] != NOT_MEASURED
        assert rec["probes"]["bottleneck"]["verdict"] in ("data-bound", "not data-bound")
        # the checklist and the workers advice judge the same data wait with the same rule
        data_bound = rec["probes"]["bottleneck"]["verdict"] == "data-bound"
        assert (items["bottleneck"]["status"] == FAIL) == more == data_bound
    assert more  # data_bound_share 0: data-bound, so both say so


# --------------------------------------------------------------------------- 7. memory leaks
def test_a_real_rss_trace_that_plateaus_is_no_leak():
    trace = json.loads((DATA / "rss_plateau_cpu.json").read_text())
    warm = trace["warmup_steps"]
    pts = [(s, b) for s, b in zip(trace["steps"], trace["bytes"]) if s >= warm]
    steps, values = [s for s, _ in pts], [b for _, b in pts]
    assert values[-1] - values[0] > 300 * MiB  # it did grow, by more than 5% of the mean, during start-up
    full = leak_check(steps, values)
    assert full["suspected"] is False and full["reason"].startswith("settled")
    # the same run stopped while memory still grew: not judged, never a leak
    for n in (12, 27, 60):
        short = leak_check(steps[:n], values[:n])
        assert short["suspected"] is None and short["reason"].startswith("not enough settled steps to judge")


def test_a_run_that_keeps_allocating_is_a_leak():
    # a real torch training step (test_runner's toy: Linear + SGD, 20 ms), so the probe reads RSS every step
    rec = _run(150, [MemoryProbe(), LeakyProbe()], workload=ToyWorkload(step_sleep=0.02))
    assert rec["status"] == "ok" and rec["probes"]["leaky"]["tensors_kept"] == 151
    assert rec["probes"]["memory"]["samples"] >= 140
    leak = rec["probes"]["memory"]["leak"]
    assert leak["suspected"] is True, leak
    assert leak["last_third"]["slope_bytes_per_step"] > 3 * MiB


def test_a_plateau_is_no_memory_failure_in_the_report(runs):
    trace = json.loads((DATA / "rss_plateau_cpu.json").read_text())
    rec = copy.deepcopy(runs["long"])
    rec["probes"]["memory"]["trace"] = {k: trace[k] for k in ("steps", "bytes", "warmup_steps")}
    f = facts_from_records(rejudge_records([rec], DEFAULTS))
    items = {i["fact"]: i for s in checklist(f, DEFAULTS) for i in s["items"]}
    assert f.leak is False and items["memory"]["status"] == NOT_MEASURED  # a tiny config: not the guide's run
    f.guide_differences = []  # judged as if it were quick_val itself: the plateau is no leak
    items = {i["fact"]: i for s in checklist(f, DEFAULTS) for i in s["items"]}
    assert items["memory"]["status"] == PASS
    # the 14-step run's own trace is too short to judge a leak: the item says so, it does not fail
    own = facts_from_records(rejudge_records([runs["long"]], DEFAULTS))
    own_items = {i["fact"]: i for s in checklist(own, DEFAULTS) for i in s["items"]}
    assert own_items["memory"]["status"] != FAIL


# --------------------------------------------------------------------------- 9. collapse at init
def test_collapse_flags_of_a_barely_trained_model_are_shown_not_judged(runs, tiny_option):
    _, opt = tiny_option
    # every real feature matrix is "low rank"
    th = DEFAULTS.model_copy(update={"low_rank_frac": 0.99, "max_step_cv_pct": 1000.0})
    rec = rejudge_record(runs["long"], th)
    feats = rec["probes"]["features"]
    assert feats["steps_trained"] == 15 and feats["collapse"]["low_rank"] is True
    assert feats["quality_judged"] is False and feats["quality_note"].startswith("untrained: 15 steps, not judged")
    row = _row(opt, [runs["long"]], th)
    assert row["collapsed"] is None and row["collapse_note"].startswith("untrained: 15 steps")
    assert row["eligible"] and not any("collapse" in b for b in row["blockers"])
    crit = {c["id"]: c for c in success_criteria(facts_from_records([rec]), th)}
    assert crit["quality"]["status"] == NOT_MEASURED and "untrained: 15 steps" in crit["quality"]["evidence"]
    # trained long enough (the threshold lowered to the steps it had), the same flags count
    trained = _row(opt, [runs["long"]], th.model_copy(update={"min_quality_steps": 15}))
    assert trained["collapsed"] is True and not trained["eligible"]


def test_the_no_option_summary_names_the_real_reason(runs, tiny_option):
    _, opt = tiny_option
    row = _row(opt, [runs["three"]])
    summary = decide([row])["per_machine"][0]["reasons"][0]
    assert summary.startswith("no option passes and fits: T: not eligible (step-time stability not measured")
    assert "too slow" not in summary and "does not fit" not in summary


# --------------------------------------------------------------------------- 11. --thresholds everywhere
def _report(tmp_path, records, *args):
    d = tmp_path / "res"
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.jsonl").write_text("".join(dumps(r, indent=None) + "\n" for r in records))
    res = run_cli("report", str(d), "--no-charts", *args)
    assert res.returncode == 0, res.stderr
    return d


@pytest.mark.slow
def test_thresholds_rejudge_every_verdict_of_the_report(runs, tiny_option, tmp_path):
    rec = runs["long"]
    cv = rec["probes"]["stability"]["cv_pct"]
    assert rec["probes"]["stability"]["thresholds"]["cv_pct"] == DEFAULTS.max_step_cv_pct  # judged at run time
    opts, _ = tiny_option
    for limit, verdict in ((round(cv / 2, 3), "unstable"), (round(2 * cv + 1, 3), "stable")):
        th = tmp_path / f"th{limit}.yaml"
        th.write_text(f"max_step_cv_pct: {limit}\n")
        out = _report(tmp_path / verdict, [rec], "--thresholds", str(th), "--options-file", str(opts))
        data = json.loads((out / "report.json").read_text())
        text = (out / "report.md").read_text()
        # the probe section, its note included (a run that slowed down significantly on a loaded machine is
        # "unstable" whatever its CV: the drift, judged with the same default thresholds at either limit)
        drifted = bool((rec["probes"]["stability"].get("degradation") or {}).get("degrading"))
        assert [r["verdict"] for r in md_table(text, "### Step-time stability")] == ["unstable" if drifted else verdict]
        section = text[text.index("### Step-time stability"):]
        assert f"unstable when CV >= {limit:g}%" in section.split("###")[1]
        # the matrix and the recommendation
        row = next(r for r in data["matrix"] if r["option"] == "T")
        rec_on = data["decision"]["per_machine"][0]["recommended"]
        if verdict == "unstable":
            assert not row["eligible"] and any(b.startswith("unstable: step-time CV") for b in row["blockers"])
            assert rec_on is None
        else:
            assert row["eligible"] and rec_on == "T"
        # the criteria and the checklist
        # the criteria and the checklist: the tiny run is not the guide's quick_val, so they say so ...
        items = {i["fact"]: i for s in data["checklist"] for i in s["items"]}
        assert items["variance"]["status"] == NOT_MEASURED and f"CV {cv:.1f}%" in items["variance"]["evidence"]
        # ... and judge it with the report's threshold as the guide's run
        from hjepa_bench.thresholds import load_thresholds
        f = facts_from_records(rejudge_records([rec], load_thresholds(th)))
        f.guide_differences = []
        crit = {c["id"]: c for c in success_criteria(f, load_thresholds(th))}
        items = {i["fact"]: i for s in checklist(f, load_thresholds(th)) for i in s["items"]}
        want = FAIL if verdict == "unstable" else PASS
        comparison = ">=" if want == FAIL else "<"
        assert items["variance"]["status"] == want and f"{comparison} {limit:g}%" in items["variance"]["evidence"]
        assert ((crit["performance"]["status"] == FAIL) if want == FAIL
                else f"< {limit:g}%" in crit["performance"]["evidence"])


# --------------------------------------------------------------------------- 13. labels
def test_warmup_between_the_guides_lengths_is_labelled_as_interpolation():
    text = recommend_warmup(5, 50, 0)["reason"]
    assert "this tool's interpolation" in text and "the guide: 3-6" not in text
    assert "the guide's 2-4 epochs for 20 epochs" in recommend_warmup(4, 20, 0)["reason"]
    c = next(o for o in guide_options() if o.name == "C")
    assert c.epochs == 50


def test_one_measured_step_has_no_cv_and_no_none_in_the_summary(runs):
    rec = runs["one"]
    assert rec["metrics"]["step_time_s"]["n"] == 1 and rec["metrics"]["step_time_s"]["cv"] is None
    probes = {"stability": StabilityProbe(), "loss": LossProbe()}
    text = summary_text(rec, probes)
    assert "CV -," in text and "CV 0.0%" not in text
    assert "None" not in text and "probe loss: not measured" in text


@pytest.mark.slow
def test_one_measured_step_reads_dash_in_the_tables(runs, tiny_option, tmp_path):
    opts, _ = tiny_option
    out = _report(tmp_path, [runs["one"]], "--options-file", str(opts))
    text = (out / "report.md").read_text()
    assert [r["CV %"] for r in md_table(text, "### Measured step speed")] == ["-"]
    assert next(r for r in md_table(text, "## Decision matrix") if r["option"] == "T")["CV %"] == "-"
    cells = [c.strip() for line in text.splitlines() if line.startswith("|") for c in line.split("|")]
    assert "nan" not in cells and "None" not in cells and not re.search(r"\bnan\b", text)


def test_the_docs_say_how_each_verdict_is_judged():
    docs = (REPO / "docs" / "verdicts.md").read_text() + (REPO / "docs" / "report.md").read_text()
    for needle in ("measure longer (--max-time)", "Student t", "no band (n < 5)", "not enough settled steps to judge",
                   "untrained: N steps, not judged", "--thresholds", "this tool's interpolation"):
        assert needle in docs, needle


# --------------------------------------------------------------------------- the raw numbers a report judges again
@pytest.mark.parametrize("probe_name, path, value, message", [
    ("features", ["steps_trained"], "many", "probes.features.steps_trained must be an integer >= 0"),
    ("memory", ["trace", "bytes"], ["1 GiB"], "probes.memory.trace.bytes must be a list of integers >= 0"),
    ("bottleneck", ["shares", "host"], "most", "probes.bottleneck.shares.host must be a number >= 0"),
    ("bottleneck", ["workers"], 1.5, "probes.bottleneck.workers must be an integer >= 0"),
    ("stability", ["degradation", "change_pct"], "5%", "probes.stability.degradation.change_pct must be a number"),
    ("loss", ["thresholds"], [20], "probes.loss.thresholds must be an object"),
])
@pytest.mark.slow
def test_a_bad_raw_number_is_a_skipped_line_not_a_traceback(runs, tmp_path, probe_name, path, value, message):
    """A report judges the probes' stored numbers again, so the record schema types them: a bad
    one makes the line a named, skipped record, never a crash of the report."""
    bad = copy.deepcopy(runs["long"])
    entry = bad["probes"][probe_name]
    for key in path[:-1]:
        entry = entry[key]
    entry[path[-1]] = value
    with pytest.raises(RecordError, match=re.escape(message)):
        check_result(bad)
    d = tmp_path / "res"
    d.mkdir()
    (d / "results.jsonl").write_text(dumps(runs["long"], indent=None) + "\n" + dumps(bad, indent=None) + "\n")
    res = run_cli("report", str(d), "--no-charts")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "line 2: not a valid record" in res.stderr and message in res.stderr


def test_validation_table_prints_a_dash_for_what_was_not_measured():
    """A validation epoch without a data-wait reading, or a feature row without RankMe, is "-", not 0."""
    from hjepa_bench.report.run_text import validation_section

    text = validation_section({
        "epochs": [{"epoch": 1, "steps": 3, "elapsed_s": 1.0, "it_per_s": 3.0, "lr_end": 1e-4, "data_wait_frac": None}],
        "features": [{"epoch": 1, "n_images": 8, "rankme_centred_ratio": None, "mean_cosine": 0.5, "std_mean": None}]})
    epoch_row = next(line for line in text.splitlines() if line.startswith("| 1 ") and "3.00" in line)
    assert epoch_row.rstrip(" |").endswith("-") and "0.0 " not in epoch_row
    feature_row = next(line for line in text.splitlines() if line.startswith("| 1 ") and "0.500" in line)
    assert "0.000" not in feature_row and "| -" in feature_row


def test_measured_worker_counts_overrule_the_probes_cpu_saturation_advice():
    """The example report advised "decrease num_workers to 2" (its own processes saturated the CPU)
    while the same sweep measured 2 workers slower than 4: "No major bottlenecks" failed against the
    report's own workers recommendation.  A measurement of fewer workers in the sweep wins."""
    from records_factory import make_record, quick_val_values

    from hjepa_bench.analysis.bottleneck import judge_bottleneck

    th = DEFAULTS.model_copy()
    recs = []
    for workers, it_s in ((2, 0.27), (4, 0.33)):
        rec = make_record(quick_val_values(**{"data.num_workers": workers}), it_per_s=it_s)
        entry = {"status": "ok", "workers": workers, "cores": 2, "own_cpu_pct_of_cores": 95.0,
                 "other_cpu_pct_of_cores": 3.0, "cpu_saturated": True,
                 "shares": {"data_wait": 0.0, "host": 0.1, "device": 0.9, "host_phases": {}}}
        rec["probes"]["bottleneck"] = judge_bottleneck(entry)
        recs.append(rec)
    assert "decrease num_workers" in recs[1]["probes"]["bottleneck"]["worker_advice"]  # the probe's own advice
    analysis = build_analysis(recs, ReportSettings(thresholds=th))
    items = {i["fact"]: i for s in analysis["checklist"] for i in s["items"]}
    assert items["workers"]["status"] == PASS and "4 workers: measurably the fastest" in items["workers"]["evidence"]
    assert items["bottleneck"]["status"] == PASS, items["bottleneck"]
    assert "num_workers 4: 4 workers: measurably the fastest" in items["bottleneck"]["evidence"]
    # with one worker count measured, the probe's advice stands
    single = build_analysis(recs[1:], ReportSettings(thresholds=th))
    items = {i["fact"]: i for s in single["checklist"] for i in s["items"]}
    assert items["bottleneck"]["status"] == FAIL and "CPU saturated" in items["bottleneck"]["evidence"]


def test_loss_table_does_not_repeat_the_lr_trigger_its_advice_already_says():
    from hjepa_bench.analysis.loss_curve import lr_advice
    from hjepa_bench.builtin.probe_loss import LossSection

    warm = lr_advice(False, "decreasing", 0.5, 5.0, 1e-4, applied_lr=1e-6, in_warmup=True)
    cell = LossSection().row({"lr_advice": warm})["lr advice (preliminary)"]
    assert cell.count(warm["trigger"]) == 1, cell
    slow = lr_advice(False, "flat", 0.5, 1.0, 1e-4)
    cell = LossSection().row({"lr_advice": slow})["lr advice (preliminary)"]
    assert slow["text"] in cell and (slow["trigger"] in cell)


def test_speed_variance_names_the_drift_the_stability_section_flags():
    """A record whose step times drift (the stability section says "unstable": a significant
    slow-down) but whose CV is low passes "Speed variance < 20%" on its CV, and the evidence names
    the drift and the stability section."""
    from records_factory import make_record, quick_val_values

    from hjepa_bench.analysis.stability import analyze_stability

    times = [1.0 + 0.02 * i + (0.01 if i % 2 else -0.01) for i in range(30)]  # steadily slower, low CV
    rec = make_record(quick_val_values(), it_per_s=1.0, step_times=times)
    rec["probes"]["stability"] = {"status": "ok", **analyze_stability(rec["series"]["step_time_s"], 2)}
    assert rec["probes"]["stability"]["verdict"] == "unstable"
    analysis = build_analysis([rec], ReportSettings(thresholds=DEFAULTS))
    item = next(i for s in analysis["checklist"] for i in s["items"] if i["fact"] == "variance")
    assert item["status"] == PASS and "slows down +" in item["evidence"] and "stability section" in item["evidence"]
    crit = next(c for c in analysis["criteria"] if c["id"] == "performance")
    assert "slows down" in crit["evidence"]
