"""hjepa-bench: measure the real H-JEPA training step before a long run.

Plugin authors write ``from hjepa_bench import Probe, hookimpl`` and ``@hookimpl`` (the hooks are
in :mod:`hjepa_bench.plugin.hookspecs`, the types in :mod:`hjepa_bench.plugin.api`).  The names
are imported on first use (PEP 562), so ``import hjepa_bench.cli`` stays light: ``hjepa-bench
--help`` imports neither torch nor what only training needs.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_API = ("Availability", "Backend", "DeviceEvent", "DeviceFacts", "Executor", "FactVerdict", "Job", "JobQueue",
        "MemoryReading", "Outcome", "Place", "PreparedWorkload", "Probe", "ReportSection", "RunContext", "StepOutput",
        "StepSample", "TimingEvent", "WallClockEvent", "Workload")
__all__ = ["hookimpl", "hookspec", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in ("hookimpl", "hookspec"):
        from .plugin import hookspecs

        return getattr(hookspecs, name)
    if name in _API:
        from .plugin import api

        return getattr(api, name)
    raise AttributeError(f"module 'hjepa_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
