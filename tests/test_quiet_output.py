"""Quiet tools: third-party native output is captured and summarised (shown with -v), every written
file says where it went, and every output file gets the same (umask) mode.  Real CLI runs on CPU."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from helpers import TINY_FLAGS, run_cli

from hjepa_bench.measure.quiet import NativeOutput, hidden_line, restore_all
from hjepa_bench.record import default_file_mode, write_json

KINETO = ("gpuGetDeviceCount", "USDT", "profiler_start", "profiler_stop", "CPUAllocator", "kineto")


def _profiled_run(tmp_path, *extra):
    out = tmp_path / "out"
    res = run_cli("run", "--device", "cpu", *TINY_FLAGS, "--max-steps", "3", "--probes", "profiler",
                  "--trace-dir", str(tmp_path / "traces"), "--json", str(out / "r.json"),
                  "--report", str(out / "r.md"), *extra)
    assert res.returncode == 0, res.stderr
    return res, json.loads((out / "r.json").read_text())


@pytest.mark.slow
def test_profiler_run_on_cpu_prints_nothing_from_kineto(tmp_path):
    """Without -v the child's stderr holds none of kineto's lines, only one line that counts them; the
    record keeps them; stdout says where the record and the report went."""
    res, record = _profiled_run(tmp_path)
    assert not [k for k in KINETO if k in res.stderr], res.stderr
    out = record["probes"]["profiler"]["library_output"]
    assert out["count"] == len(out["lines"]) >= 1  # kineto did write: it was captured, not absent
    assert any("profiler_start" in line for line in out["lines"])
    assert hidden_line("profiler", out) in res.stderr
    assert f"record written to {tmp_path / 'out' / 'r.json'}" in res.stdout
    assert f"report written to {tmp_path / 'out' / 'r.md'}" in res.stdout


@pytest.mark.slow
def test_verbose_shows_the_library_output_in_full(tmp_path):
    res, record = _profiled_run(tmp_path, "-v")
    for line in record["probes"]["profiler"]["library_output"]["lines"]:
        assert line in res.stderr
    assert "library output hidden" not in res.stderr


def test_output_files_get_the_same_mode(tmp_path):
    """A JSON record (an atomic writer, though mkstemp's own mode is 0600) and a markdown report get
    the mode every new file gets under the umask, in this process and in a child run with another
    umask."""
    write_json({"a": 1}, tmp_path / "x.json")
    (tmp_path / "x.md").write_text("x\n")
    modes = {stat.S_IMODE(os.stat(tmp_path / n).st_mode) for n in ("x.json", "x.md")}
    assert modes == {default_file_mode()}
    code = ("import os, sys; os.umask(0o027); from hjepa_bench.record import write_json; "
            "write_json({'a': 1}, sys.argv[1] + '/y.json'); open(sys.argv[1] + '/y.md', 'w').close()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert stat.S_IMODE(os.stat(tmp_path / "y.json").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "y.md").st_mode) == 0o640


def test_native_output_captures_file_descriptor_2_and_restore_all_puts_it_back(tmp_path):
    """What is written to fd 2 (as C++ writes it, below sys.stderr) lands in the capture; restore_all
    ends a capture left open (an interrupted run) so later output reaches the real stderr."""
    code = ("import os, sys; from hjepa_bench.measure.quiet import NativeOutput, restore_all\n"
            "c = NativeOutput().start(); os.write(2, b'native one\\nnative two\\n')\n"
            "print('lines', c.stop(), c.count)\n"
            "NativeOutput().start(); restore_all(); os.write(2, b'after restore\\n')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "lines ['native one', 'native two'] 2" in res.stdout
    assert "native one" not in res.stderr and "after restore" in res.stderr
    assert NativeOutput().stop() == [] and restore_all() is None
