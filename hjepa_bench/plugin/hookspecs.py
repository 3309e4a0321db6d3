"""Hook specifications: the whole plugin interface of hjepa-bench.

A plugin is a module (or object) with functions named after these hooks and
decorated with ``@hjepa_bench.hookimpl``.  It is found through the
``hjepa_bench`` entry-point group (the built-ins use the same group), through
``HJEPA_BENCH_PLUGINS=module[,module]``, or ``hjepa-bench -p module``.

Every hook here is a *registration* hook: it receives a ``register`` callback
and calls it once per object it provides, so one plugin can add several
backends, probes, workloads, report sections or executors.  All implementations are
called (none is ``firstresult``); a name registered twice is an error.

Functions whose names start with ``hjepa_bench_`` but match no hook below are
an error at load time (a misspelled hook never silently does nothing).
"""
from __future__ import annotations

from typing import Callable

import pluggy

from .api import Backend, Executor, Probe, ReportSection, Workload

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
