"""Bad input never crashes, hangs or runs code.  Generated input for every reader
of the CLI, run in-process (see harness.py for the oracle and the sentinel trick).

Each test runs all its cases (hypothesis generates them deterministically: derandomize,
no database, no shrinking) and then fails with every finding grouped by kind and site.
No target is marked xfail: a finding is a failure.
"""
from __future__ import annotations

import os

import generators as gen
import pytest
from harness import RECORDER
from hypothesis import HealthCheck, Phase, given, settings

SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.filter_too_much])
#: generated cases per target (plus the enumerated ones)
EXAMPLES = {"config": 150, "flags": 180, "logs": 80, "results": 130, "checkpoints": 60, "options": 80,
            "thresholds": 80, "grids": 90, "benchjson": 80}
#: the kinds of input the CLI reads: together they must get at least 1,000 cases
NAMED_KINDS = ("config", "flags", "logs", "results", "checkpoints", "options", "thresholds", "grids", "benchjson")
#: HJEPA_FUZZ_SCALE=0.1 runs a tenth of the generated cases (for a quick look)
SCALE = float(os.environ.get("HJEPA_FUZZ_SCALE", "1"))


def generated(fuzz, name, strategy, n, extra=()):
    target = fuzz.target(name)

    @settings(max_examples=max(1, int(n * SCALE)), **SETTINGS)
    @given(strategy)
    def one(case):
        target.run(case)

    one()
    for case in extra:
        target.run(case)
    return target


def test_fuzz_bases_are_accepted(fuzz):
    """Every family's unmutated base input is accepted (exit 0 or the engine reached): an
    invalid case built on a broken base would pass for the wrong reason."""
    target = fuzz.target("bases")
    for case in gen.base_cases():
        res = target.run(case)
        assert res.exc is None and (res.rc == 0 or res.engine), (case.target, res.argv, res.err, res.tb)
    target.assert_clean()


@pytest.mark.slow
def test_fuzz_config_values(fuzz):
    generated(fuzz, "config", gen.config_value_cases(), EXAMPLES["config"],
              gen.structural_config_cases()).assert_clean()


@pytest.mark.slow
def test_fuzz_cli_flags(fuzz):
    generated(fuzz, "flags", gen.flag_cases(fuzz.files), EXAMPLES["flags"],
              gen.global_flag_cases(fuzz.files)).assert_clean()


def test_fuzz_upstream_logs(fuzz):
    extra = [c for c in gen.invalid_log_cases()]
    generated(fuzz, "logs", gen.log_cases(), EXAMPLES["logs"], extra).assert_clean()


@pytest.mark.slow
def test_fuzz_results_jsonl(fuzz):
    generated(fuzz, "results", gen.results_cases(fuzz.records), EXAMPLES["results"]).assert_clean()


def test_fuzz_checkpoints(fuzz):
    generated(fuzz, "checkpoints", gen.checkpoint_cases(fuzz.checkpoint), EXAMPLES["checkpoints"]).assert_clean()


def test_fuzz_options_files(fuzz):
    generated(fuzz, "options", gen.options_cases(), EXAMPLES["options"]).assert_clean()


def test_fuzz_thresholds_files(fuzz):
    generated(fuzz, "thresholds", gen.thresholds_cases(), EXAMPLES["thresholds"]).assert_clean()


def test_fuzz_grid_files(fuzz):
    generated(fuzz, "grids", gen.grid_cases(), EXAMPLES["grids"]).assert_clean()


def test_fuzz_benchmark_json(fuzz):
    generated(fuzz, "benchjson", gen.bench_cases(), EXAMPLES["benchjson"]).assert_clean()


def test_fuzz_special_files(fuzz):
    target = fuzz.target("special")
    for case in gen.special_input_cases() + gen.special_output_cases():
        target.run(case)
    target.assert_clean()


def test_fuzz_plugins(fuzz):
    target = fuzz.target("plugin-hooks")
    for case in gen.plugin_cases("a", fuzz.files()):
        target.run(case)
    target.assert_clean()


def test_fuzz_case_count(fuzz):
    """Runs last: the fuzz targets together ran at least 1,000 cases (the bases not counted)."""
    targets = [t for t in fuzz.targets if t.name != "bases"]
    if len(targets) < 11:
        pytest.skip(f"only {len(targets)} of 11 fuzz targets ran in this session")
    assert sum(t.cases for t in targets) >= 1000, {t.name: t.cases for t in targets}
    named = {t.name: t.cases for t in targets if t.name in NAMED_KINDS}
    assert len(named) == len(NAMED_KINDS) and sum(named.values()) >= 1000, named  # special files not counted
    assert sum(n for name, n in RECORDER.counts.items() if name != "bases") >= 1000
