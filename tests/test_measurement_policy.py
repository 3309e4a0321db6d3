"""The measurement policy on real tiny runs: the minimum steps are met past the time target up to
a hard cap from the warm-up's step time; a sweep child's deadline follows its warm-up; a record
below its minimum is "not measured" in its projection, its option row, the report's first screen
and every finding; a benchmark timeout is named as one and never fails the guide's crash
criterion; the defaults are one set on run and sweep, and no default worker count exceeds the
cores."""
from __future__ import annotations

import json
import math
import time

import pytest
from helpers import TINY_OPTION, run_cli, tiny_config

from hjepa_bench.analysis import policy
from hjepa_bench.analysis.criteria import NOT_MEASURED, fact_verdicts, facts_from_records
from hjepa_bench.analysis.projection import project_record
from hjepa_bench.analysis.report_data import ReportSettings, build_analysis
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload, PreparedHJEPA
from hjepa_bench.config import DEFAULTS, available_cores
from hjepa_bench.measure.env import environment_fingerprint
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.measure.sweep import Point, SweepSpec, _record_for, run_in_child
from hjepa_bench.options import load_options
from hjepa_bench.report.markdown import render_markdown
from hjepa_bench.thresholds import DEFAULTS as TH


class SlowAfterWarmup(PreparedHJEPA):
    """The real step; every step after the first also sleeps ten times the first step's time: steps
    far slower than the warm-up's, whatever the machine's speed or load."""

    def __init__(self, config, backend):
        super().__init__(config, backend)
        self.first_s: float | None = None

    def step(self, batch):
        t0 = time.perf_counter()
        out = super().step(batch)
        if self.first_s is None:
            self.first_s = time.perf_counter() - t0
        else:
            time.sleep(10 * self.first_s)
        return out


class SlowWorkload(HJEPAWorkload):
    name = "hjepa_slow"

    def prepare(self, config, backend):
        return SlowAfterWarmup(config, backend)


def _run(workload=None, **bench):
    values = tiny_config(**{f"bench.{k}": v for k, v in bench.items()})
    values["bench"]["precision"], values["bench"]["device"] = "fp32", "cpu"
    backend = CPUBackend()
    return run_benchmark(values, backend, workload or HJEPAWorkload(), [], environment_fingerprint(backend))


@pytest.fixture(scope="module")
def short_record():
    """A real record stopped at the hard cap below its minimum steps."""
    rec = _run(SlowWorkload(), warmup_steps=1, min_steps=4, max_steps=8, max_time_s=0.001)
    assert rec["status"] == "ok"
    return rec


def test_the_minimum_steps_are_met_past_the_time_target():
    rec = _run(warmup_steps=1, min_steps=4, max_steps=8, max_time_s=0.001, target_rel_precision=1e-9)
    m = rec["metrics"]
    assert rec["status"] == "ok" and m["measured_steps"] == 4  # not 1: the minimum holds past the time target
    assert m["stop_reason"] == "max_time" and m["min_steps"] == 4
    assert m["time_cap_s"] == pytest.approx(policy.CAP_FACTOR * 4 * m["warmup"]["step_time_s"][0])
    assert policy.shortfall(rec) is None


def test_the_hard_cap_stops_steps_far_slower_than_the_warmup(short_record):
    m = short_record["metrics"]
    assert m["stop_reason"] == "time_cap" and 1 <= m["measured_steps"] < 4
    cap = policy.CAP_FACTOR * 4 * m["warmup"]["step_time_s"][0]
    assert m["time_cap_s"] == pytest.approx(cap)
    assert m["measured_time_s"] < cap + 2 * m["step_time_s"]["max"]  # it did not run on to the minimum
    assert any("minimum steps measured" in w for w in m["warnings"])


def test_a_record_below_its_minimum_reads_not_measured_with_the_max_time_to_rerun_with(short_record):
    m = short_record["metrics"]
    s = policy.shortfall(short_record)
    x = math.ceil(4 * m["step_time_s"]["median"] * (1 + policy.RERUN_MARGIN) / 10) * 10
    assert s["text"] == f"not measured: {m['measured_steps']} steps (needs 4); rerun with --max-time {x}"
    proj = project_record(short_record, epochs=2)
    assert proj["hours"] is None and proj["not_measured"] == s["text"]


def test_no_option_row_verdict_or_finding_comes_from_a_record_below_its_minimum(short_record, tmp_path):
    p = tmp_path / "opts.yaml"
    p.write_text(TINY_OPTION)
    settings = ReportSettings(options=load_options(p, include_guide=False))
    analysis = build_analysis([short_record], settings)
    row = analysis["matrix"][0]
    text = policy.shortfall(short_record)["text"]
    assert row["status"] == "not measured" and row.get("hours") is None and not row["eligible"]
    assert any(text in r for r in row["reasons"])
    assert analysis["decision"]["per_machine"][0]["recommended"] is None
    assert analysis["model_speed_ratios"] == [] and analysis["group_choices"] == []
    assert "minimum steps" in analysis["facts"]["subject"] and analysis["facts"]["it_per_s"] is None
    md = render_markdown(analysis, [short_record], title="t")
    first = md[md.index("## Recommendation"):md.index("## Decision matrix")]
    assert "**Measured too briefly to project:**" in first and text in first
    assert " h [" not in first and "projected" not in first


def test_a_benchmark_timeout_is_named_and_is_no_crash_of_a_validation_run():
    ok = _run(warmup_steps=1, min_steps=3, max_steps=3, max_time_s=30.0)
    point = Point(index=1, device="cpu", overrides={}, label="cpu vit_small b32", group=(), values=ok["config"],
                  env=ok["env"])
    timeout = _record_for(point, "timeout", "timed out (benchmark): no result after 210 s (the start-up allowance "
                                            "(no warm-up step reported)); the child was killed")
    f = facts_from_records([ok, timeout])
    crash = fact_verdicts(f, TH)["crash"]
    assert f.crashed is False and crash["status"] == NOT_MEASURED
    assert "timed out (benchmark)" in crash["evidence"] and "validation run crashed" not in crash["evidence"]
    assert "not crashes of a validation run" in crash["evidence"]


@pytest.mark.slow
def test_a_sweep_childs_deadline_follows_its_warmup_not_the_allowance(monkeypatch):
    """A child that hangs after its warm-up is stopped at the deadline its warm-up set, long before
    the start-up allowance; with --timeout (fixed) the allowance is the limit."""
    monkeypatch.setenv("HJEPA_BENCH_TEST_FAULTS", json.dumps({"5": "hang"}))
    values = tiny_config(**{"data.batch_size": 5, "bench.warmup_steps": 1, "bench.min_steps": 3,
                            "bench.max_steps": 3, "bench.max_time_s": 0.5, "bench.workload": "hjepa_faults"})
    values["bench"]["precision"], values["bench"]["device"] = "fp32", "cpu"
    payload = {"values": values, "env": environment_fingerprint(CPUBackend()), "warnings": [], "device": "cpu",
               "plugins": ["fault_plugin"], "probes": [], "artifacts_dir": None, "fixed_timeout": False}
    t0 = time.monotonic()
    out = run_in_child(payload, 500.0)
    took = time.monotonic() - t0
    assert out.status == "timeout" and out.detail.startswith("timed out (benchmark): no result after")
    assert "the deadline its warm-up set" in out.detail
    assert took < 400  # the hang is stopped by the warm-up's deadline, not the 500 s allowance


def test_run_and_sweep_share_their_measuring_defaults_and_no_default_exceeds_the_cores():
    spec = SweepSpec()
    b = DEFAULTS["bench"]
    assert spec.common_overrides()["bench.max_time_s"] is None  # the config's default, as on run
    for name in ("warmup_steps", "min_steps", "max_steps", "max_time_s"):
        assert getattr(spec, name) is None, name
    assert max(spec.workers) <= available_cores()
    run_help = run_cli("run", "--help").stdout
    sweep_help = run_cli("sweep", "--help").stdout
    for flag_text in (f"default {b['min_steps']})", f"(default {b['max_time_s']:g})"):
        assert flag_text in " ".join(run_help.split()) and flag_text in " ".join(sweep_help.split())


def test_the_sweep_says_how_much_more_time_a_short_config_needs_and_how_to_retry_it(short_record):
    from hjepa_bench.commands.sweep import more_time_lines

    s = policy.shortfall(short_record)
    lines = more_time_lines([short_record], ["sweep", "--max-time", "5", "--out", "o", "--resume"])
    assert len(lines) == 1
    assert s["text"] in lines[0] and "more minute(s) here" in lines[0]
    assert lines[0].endswith(f"hjepa-bench sweep --out o --retry short --max-time {s['max_time_s']}")


def test_the_deadline_lets_one_stalled_step_finish():
    """The measured loop checks its cap only between steps: a config of 0.1 s steps whose step in
    flight at the cap stalls for 6 s must not be killed as a timeout."""
    from hjepa_bench.analysis.policy import STALL_GRACE_S, child_deadline_s, time_cap_s

    cap = time_cap_s(1.0, 2, 0.1)
    deadline = child_deadline_s(warmed_at_s=2.0, startup_s=2.0, cap_s=cap, step_s=0.1)
    assert deadline >= 2.0 + cap + 6.0
    assert deadline == pytest.approx(2.0 + cap + 2.0 + STALL_GRACE_S)
