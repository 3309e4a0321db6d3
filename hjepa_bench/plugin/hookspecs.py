"""Hook specifications: the whole plugin interface of hjepa-bench.

A plugin is a module (or object) with functions named after these hooks and
decorated with ``@hjepa_bench.hookimpl``.  It is found through the
``hjepa_bench`` entry-point group (the built-ins use the same group), through
``HJEPA_BENCH_PLUGINS=module[,module]``, or ``hjepa-bench -p module``.

Every ``hjepa_bench_register_*`` hook is a *registration* hook: it receives a ``register``
callback and calls it once per object it provides, so one plugin can add several
backends, probes, workloads, report sections or executors.  All implementations are
called (none is ``firstresult``); a name registered twice is an error.
``hjepa_bench_add_options`` adds a plugin's own command-line flags.

Functions whose names start with ``hjepa_bench_`` but match no hook below are
an error at load time (a misspelled hook never silently does nothing).
"""
from __future__ import annotations

from collections.abc import Callable

import pluggy

from .api import Backend, CommandFlags, Executor, Probe, ReportSection, Workload

PROJECT = "hjepa_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def hjepa_bench_register_backends(register: Callable[[Backend], None]) -> None:
    """Register device backends (:class:`hjepa_bench.plugin.api.Backend`).

    Called once when the plugin manager is built.  A backend that cannot run on
    this machine is still registered; it reports why through ``availability()``.
    """


@hookspec
def hjepa_bench_register_workloads(register: Callable[[Workload], None]) -> None:
    """Register workloads (:class:`hjepa_bench.plugin.api.Workload`): the step being timed.

    The built-in ``hjepa`` workload is the real H-JEPA training step; a user's own
    step is benchmarked by registering another workload and passing
    ``--workload NAME``.
    """


@hookspec
def hjepa_bench_register_probes(register: Callable[[Probe], None]) -> None:
    """Register probes (:class:`hjepa_bench.plugin.api.Probe`).

    Every registered probe runs inside ``run`` (and later ``sweep``) and writes
    ``record["probes"][probe.name]``.
    """


@hookspec
def hjepa_bench_register_report_sections(register: Callable[[ReportSection], None]) -> None:
    """Register markdown report sections (:class:`hjepa_bench.plugin.api.ReportSection`)."""


@hookspec
def hjepa_bench_register_executors(register: Callable[[Executor], None]) -> None:
    """Register sweep executors (:class:`hjepa_bench.plugin.api.Executor`): where ``hjepa-bench
    sweep --executor NAME`` runs its configs.

    The built-ins are ``local`` (each config in a child process on this machine, the default) and
    ``ray`` (each config a Ray task on every node of a cluster).  An executor whose engine is not
    installed is still registered; it reports why through ``availability()``.
    """


@hookspec
def hjepa_bench_add_options(parser: CommandFlags) -> None:
    """Add the plugin's own command-line flags to a command (:class:`hjepa_bench.plugin.api.CommandFlags`).

    Called once per command (``parser.command``: ``sweep``, ``run``, ...) while the command line is
    built, before anything is registered; add flags with ``parser.add_argument(...)`` or
    ``parser.group(title).add_argument(...)``.  The values given reach the plugin in the parsed
    arguments (an executor's flags: ``Executor.options`` names their dests, ``places`` gets their
    values).  A built-in that implements it is listed in ``manager.OPTION_BUILTINS`` and imports
    nothing heavy (no torch): every command's ``--help`` imports it.
    """
