"""benchmarks/variants.py stays runnable (tiny sizes; the real numbers are in docs/step.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO

#: every test here runs real child processes for tens of seconds (docs/testing.md)
pytestmark = pytest.mark.slow


def test_variants_benchmark_runs_both_variants_side_by_side(tmp_path):
    out = tmp_path / "v.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "variants.py"), "--device", "cpu",
                          "--img-size", "64", "--batch-size", "4", "--encoder-depth", "2", "--rounds", "2",
                          "--warmup", "1", "--batches", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert set(data["rows"]) == {"reference", "efficient"}
    assert all(len(t) == 2 for t in data["times_s"].values())
    assert data["rows"]["efficient"]["gflop_per_step"] < data["rows"]["reference"]["gflop_per_step"]
    assert data["time_ratio"] > 0 and data["paired_ratio"] > 0
    assert "| reference |" in res.stdout
    # the real data path at 0 DataLoader workers (masks built in the main process) runs by default
    (loader,) = data["loader"]
    assert loader["workers"] == 0 and set(loader["rows"]) == {"reference", "efficient"}
    assert all(len(t) == 2 for t in loader["times_s"].values())
    assert loader["time_ratio"] > 0 and loader["paired_ratio"] > 0
    assert "| workers |" in res.stdout
