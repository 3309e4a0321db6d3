"""Retry and keep, on real tiny sweeps: ``--retry timeout`` runs a timed-out config again in place;
a sweep that measures nothing leaves report.md as it was; a report that replaces one rendered with
other settings says so."""
from __future__ import annotations

import json

import pytest
from test_sweep import TINY_SWEEP, sweep

from hjepa_bench.measure.results import read_results


@pytest.mark.slow
def test_a_timed_out_config_is_retried_in_place_and_a_run_that_measures_nothing_keeps_the_report(tmp_path):
    out = tmp_path / "s"
    grid = [*TINY_SWEEP, "--workload", "hjepa_faults", "--batch-sizes", "4,5", "--workers", "0", "--out", str(out)]
    res = sweep("-p", "fault_plugin", "sweep", *grid, env={"HJEPA_BENCH_TEST_FAULTS": json.dumps({"5": "hang"})})
    assert res.returncode == 0, res.stderr
    by = {r["sweep"]["batch_size"]: r for r in read_results(out / "results.jsonl").records}
    assert by[4]["status"] == "ok" and by[5]["status"] == "timeout"
    assert by[5]["error"].startswith("timed out (benchmark): ")

    # the user renders the report with other settings
    res = sweep("report", str(out), "--budget-hours", "3", "--no-charts")
    assert res.returncode == 0, res.stderr
    theirs = (out / "report.md").read_text()
    # the same sweep again measures nothing: the user's report stays
    res = sweep("-p", "fault_plugin", "sweep", *grid[:-2], "--progress", "bar", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "0 configs run this time" in res.stdout and "left as it was" in res.stdout
    assert (out / "report.md").read_text() == theirs
    # --retry timeout: only the timed-out config runs, its record replaced in place
    res = sweep("-p", "fault_plugin", "sweep", *grid, "--retry", "timeout")
    assert res.returncode == 0, res.stderr
    plan = next(json.loads(line) for line in res.stdout.splitlines() if '"event": "plan"' in line)
    assert plan["to_run"] == 1 and plan["retry"] == 1
    recs = read_results(out / "results.jsonl").records
    assert sorted((r["sweep"]["batch_size"], r["status"]) for r in recs) == [(4, "ok"), (5, "ok")]
    assert "budget-hours 3" in res.stderr and "replaced" in res.stderr
    assert (out / "report.md").read_text() != theirs


def test_retry_takes_only_known_outcomes(tmp_path):
    res = sweep("sweep", *TINY_SWEEP, "--retry", "timeout,nope", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "retry takes timeout" in res.stderr and "not nope" in res.stderr
    assert res.stderr.count("\n") == 1
