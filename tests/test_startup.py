"""Start-up of the CLI: the parser of every command is built without importing torch, and a
command that trains nothing does not import what only training needs (benchmarks/startup.py times
it against ``import torch``)."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "timm", "torchvision", "matplotlib", "pandas", "scipy", "sklearn")

PROBE = """
import contextlib, io, json, sys
from hjepa_bench.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main({argv!r})
    except SystemExit as exc:
        code = exc.code
print(json.dumps({{"code": code, "out": out.getvalue(), "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _loaded(*argv: str) -> dict:
    """What a fresh interpreter has imported after ``hjepa-bench ARGV``."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv), heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_imports_neither_torch_nor_any_heavy_library():
    result = _loaded("--help")
    assert result["code"] == 0 and "sweep" in result["out"]
    assert result["loaded"] == []


def test_every_commands_help_is_built_without_torch():
    for command in ("run", "sweep", "report", "validate", "analyze", "eval", "benchmark-report", "inspect"):
        result = _loaded(command, "--help")
        assert result["code"] == 0 and "--" in result["out"], command
        assert "torch" not in result["loaded"], (command, result["loaded"])


def test_devices_and_plugins_import_torch_and_nothing_only_training_or_reports_need():
    for command, shown in (("devices", "cpu"), ("plugins", "hjepa")):
        result = _loaded(command)
        assert result["code"] == 0 and shown in result["out"], command
        assert result["loaded"] == ["torch"], (command, result["loaded"])  # the backends ask torch for devices


def test_plugin_api_names_still_import_from_the_package():
    proc = subprocess.run([sys.executable, "-c", "from hjepa_bench import Probe, hookimpl, Backend; "
                           "print(Probe.__module__, type(hookimpl).__name__)"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["hjepa_bench.plugin.api", "HookimplMarker"]
