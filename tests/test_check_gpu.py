"""scripts/check-gpu: its CPU-only parts on the CPU (a tiny model), so the script cannot rot without a GPU;
and the serialized (CUDA_LAUNCH_BLOCKING) cross-check of the bottleneck verdict."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, run_cli

from hjepa_bench.analysis.bottleneck import serialized_verdict


def test_serialized_verdict():
    # host own 2 ms; serialized step 10 ms: the device was busy 8 ms -> device-bound
    verdict, evidence = serialized_verdict(0.002, 0.010)
    assert verdict == "device-bound" and evidence["device_busy_s"] == pytest.approx(0.008)
    # host own 6 ms; serialized 10 ms: device busy 4 ms -> host-bound
    assert serialized_verdict(0.006, 0.010)[0] == "host-bound"
    assert serialized_verdict(None, 0.010)[0] is None


@pytest.mark.slow
def test_check_gpu_runs_its_cpu_parts_and_the_folder_renders(tmp_path):
    out = tmp_path / "gpu-check"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "check-gpu"), "--device", "cpu", "--tiny",
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=1500)
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("No CUDA device here")
    status = {line.split()[1].rstrip(":"): line.split()[0] for line in lines[1:-1]}
    assert status == {"cuda-tests": "SKIP", "runs": "PASS", "launch-blocking": "SKIP", "profiler-svd": "PASS",
                      "oom": "SKIP", "report": "PASS"}, res.stdout + res.stderr
    assert lines[-1].startswith("PASS (3 passed, 0 failed, 3 skipped on cpu")
    assert res.returncode == 0
    summary = json.loads((out / "check-gpu.json").read_text())
    assert summary["result"] == "PASS" and len(summary["checks"]) == 6
    # the folder renders with the ordinary report command, every config measured in it
    (out / "report.md").unlink()
    rendered = run_cli("report", str(out), "--no-charts")
    assert rendered.returncode == 0, rendered.stderr
    text = (out / "report.md").read_text()
    assert "Bottleneck" in text and "SVD" in text and "Profiler" in text.replace("profiler", "Profiler")
    assert list((out / "traces").rglob("*.pt.trace.json*"))  # the profiler traces are kept
