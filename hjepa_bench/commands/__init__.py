"""The commands of the CLI, one module each: ``add_parser(subparsers)`` declares its flags and
``cmd_*(args, plugins)`` runs it (returns the exit code)."""
from __future__ import annotations

from . import analyze, benchmark_report, devices, eval, export, inspect, plugins, presets, report, run, sweep, validate

#: in the order ``hjepa-bench --help`` lists them
COMMANDS = (run, sweep, report, export, validate, analyze, eval, benchmark_report, inspect, presets, devices, plugins)
