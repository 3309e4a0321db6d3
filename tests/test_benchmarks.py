"""The pytest-benchmark suite: machine info is saved, a slowed step trips
--benchmark-compare-fail, baselines from another machine are refused, and
hjepa-bench renders the JSON against a baseline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from hjepa_bench.cli import main

#: every test here runs real child processes for tens of seconds (docs/testing.md)
pytestmark = pytest.mark.slow

FULL_STEP = [str(REPO / "benchmarks" / "test_step_pieces.py"), "-k", "test_full_step and cpu and reference"]


def bench(tmp_path, *args, slowdown=None):
    env = {**os.environ}
    env.pop("HJEPA_BENCH_TEST_SLOWDOWN_S", None)
    if slowdown:
        env["HJEPA_BENCH_TEST_SLOWDOWN_S"] = str(slowdown)
    return subprocess.run([sys.executable, "-m", "pytest", *FULL_STEP, "-p", "no:cacheprovider", "-q",
                           "--hjepa-size", "tiny", "--hjepa-rounds", "5",
                           "--benchmark-storage=file://./store", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # (pytest-benchmark needs its storage under the working directory to print locations)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    res = bench(tmp, "--benchmark-save=base")
    assert res.returncode == 0, res.stdout + res.stderr
    saved = list((tmp / "store").glob("*/0001_base.json"))
    assert len(saved) == 1
    return tmp, saved[0]


def test_saved_json_carries_hjepa_machine_info(baseline):
    _, saved = baseline
    data = json.loads(saved.read_text())
    info = data["machine_info"]["hjepa_bench"]
    assert info["size"] == "tiny" and info["precision"] == "fp32"
    assert info["torch"] and info["timm"] and "cpu" in info["devices"]
    assert [b["name"] for b in data["benchmarks"]] == ["test_full_step[cpu-reference]"]
    assert data["benchmarks"][0]["stats"]["rounds"] == 5


def test_slowed_step_trips_the_compare_fail_gate(baseline):
    tmp, _ = baseline
    slowed = bench(tmp, "--benchmark-compare=0001", "--benchmark-compare-fail=median:10%",
                   "--benchmark-json", str(tmp / "slowed.json"), slowdown=0.15)
    assert slowed.returncode != 0
    assert "Performance has regressed" in slowed.stdout + slowed.stderr
    # the same gate with a generous limit passes: it is the slowdown that trips it
    control = bench(tmp, "--benchmark-compare=0001", "--benchmark-compare-fail=median:400%")
    assert control.returncode == 0, control.stdout + control.stderr


def test_baseline_from_another_machine_is_refused(baseline, tmp_path):
    tmp, saved = baseline
    other = json.loads(saved.read_text())
    other["machine_info"]["hjepa_bench"]["devices"] = {"mps": {"device_name": "Apple M1 Max"}}
    fake = saved.with_name("0002_m1max.json")
    fake.write_text(json.dumps(other))
    try:
        res = bench(tmp, "--benchmark-compare=0002")
        assert res.returncode != 0
        assert "another machine" in res.stdout + res.stderr
        allowed = bench(tmp, "--benchmark-compare=0002", "--hjepa-allow-other-machine")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    finally:
        fake.unlink()


def test_benchmark_report_renders_medians_against_the_baseline(baseline, tmp_path, capsys):
    tmp, saved = baseline
    slowed = tmp / "slowed.json"
    if not slowed.exists():
        res = bench(tmp, "--benchmark-json", str(slowed), slowdown=0.15)
        assert res.returncode == 0
    out = tmp_path / "bench.md"
    assert main(["benchmark-report", str(slowed), "--baseline", str(saved), "--out", str(out)]) == 0
    text = out.read_text()
    assert "test_full_step[cpu-reference]" in text and "slower" in text and "baseline median (ms)" in text
    capsys.readouterr()
    other = json.loads(saved.read_text())
    other["machine_info"]["hjepa_bench"]["torch"] = "9.9"
    (tmp_path / "o.json").write_text(json.dumps(other))
    assert main(["benchmark-report", str(slowed), "--baseline", str(tmp_path / "o.json")]) == 2
    assert "another machine" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["benchmark-report", str(tmp_path / "bad.json")]) == 2
