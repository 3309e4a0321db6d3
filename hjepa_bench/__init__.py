"""hjepa-bench: measure the real H-JEPA training step before a long run.

Plugin authors write ``from hjepa_bench import Probe, hookimpl`` and ``@hookimpl`` (the hooks are
in :mod:`hjepa_bench.plugin.hookspecs`, the types in :mod:`hjepa_bench.plugin.api`).
"""
from .plugin.api import (Availability, Backend, DeviceEvent, DeviceFacts, Executor, Job, JobQueue, MemoryReading,
                         Outcome, Place, PreparedWorkload, Probe, ReportSection, RunContext, StepOutput, StepSample,
                         TimingEvent, WallClockEvent, Workload)
from .plugin.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__", "Availability", "Backend", "DeviceEvent", "DeviceFacts", "Executor",
           "Job", "JobQueue", "MemoryReading", "Outcome", "Place", "PreparedWorkload", "Probe", "ReportSection",
           "RunContext", "StepOutput", "StepSample", "TimingEvent", "WallClockEvent", "Workload"]
