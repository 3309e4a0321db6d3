"""The CPU backend: always available, timed with synced wall clock.

Memory is the whole process tree's resident set (psutil), the only figure a CPU run
has: the main process's RSS plus the private resident memory (RSS minus shared pages)
of its child processes, the DataLoader workers, which on CPU use the same RAM as the
step.  The main process's peak is the kernel's own high-water mark where it can be
reset (Linux: ``/proc/self/clear_refs`` + ``VmHWM``), else ``getrusage`` ru_maxrss
when it grew inside the window, else the maximum RSS sampled once per step; the
workers' part of the peak is the largest sum seen at a reading (``memory()``).
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch

from hjepa_bench.measure.env import cpu_model
from hjepa_bench.plugin.api import Backend, MemoryReading
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.plugin.precision import grad_scaler_works, make_grad_scaler

# RuntimeError messages of the CPU allocator (Linux/macOS, Windows, others).
_CPU_OOM_MARKERS = (
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
    "not enough memory",
    "failed to allocate",
    "can't allocate memory",
)
# Messages that belong to another backend even when they also say "allocate".
_OTHER_DEVICE_MARKERS = ("CUDA", "MPS", "HIP", "XPU", "cuDNN", "CUBLAS")
#: how often the list of child processes (DataLoader workers) is looked up again, seconds
CHILDREN_REFRESH_S = 1.0


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux (and the BSDs), bytes on macOS
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def _vm_hwm_bytes() -> int | None:
    """Linux peak RSS (``VmHWM``), resettable through ``/proc/self/clear_refs``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_vm_hwm() -> bool:
    """Reset the kernel's peak RSS to the current RSS (Linux >= 4.0); False if not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # 5 = reset peak RSS only; touches nothing else
    except OSError:
        return False
    return _vm_hwm_bytes() is not None


class CPUBackend(Backend):
    name = "cpu"
    definite_oom_markers = ("DefaultCPUAllocator",)
    definite_oom_types = (MemoryError,)
    foreign_markers = _OTHER_DEVICE_MARKERS
    oom_markers = _CPU_OOM_MARKERS

    def __init__(self) -> None:
        self._process = None  # psutil.Process, made on first use
        self._sampled_peak: int = 0
        self._hwm_resettable: bool | None = None  # known after the first reset
        self._maxrss_at_reset: int | None = None
        self._scaler_ok: bool | None = None
        self._children_peak: int = 0
        self._children: list | None = None  # psutil.Process of the children, refreshed now and then
        self._children_at = 0.0

    # ------------------------------------------------------------------ basics
    def device(self) -> torch.device:
        return torch.device("cpu")

    def synchronize(self) -> None:
        """CPU ops are synchronous: nothing to wait for."""

    # ------------------------------------------------------------------ memory
    def _rss(self) -> int:
        if self._process is None:
            import psutil

            self._process = psutil.Process()
        return int(self._process.memory_info().rss)

    def _children_private(self) -> int:
        """Private resident bytes of the child processes (DataLoader workers): RSS minus shared pages,
        so pages a forked worker still shares with the main process are not counted twice."""
        if self._process is None:
            self._rss()
        now = time.monotonic()
        if self._children is None or now - self._children_at > CHILDREN_REFRESH_S:
            try:  # finding the children scans the process table: at most every CHILDREN_REFRESH_S
                self._children = self._process.children(recursive=True)
            except Exception:
                self._children = []
            self._children_at = now
        total = 0
        for child in self._children:
            try:
                mi = child.memory_info()
                total += max(0, int(mi.rss) - int(getattr(mi, "shared", 0) or 0))
            except Exception:
                continue
        return total

    def reset_peak_memory(self) -> None:
        self._hwm_resettable = _reset_vm_hwm()
        self._maxrss_at_reset = _ru_maxrss_bytes()
        self._sampled_peak = self._rss()
        self._children_peak = 0
        self._children = None  # the workers of the window to come

    def sample_memory(self, where: str = "step end") -> None:
        if where != "step end" and self._hwm_resettable:
            return  # the kernel's high-water mark sees the peak: no reading inside the step
        rss = self._rss()
        if rss > self._sampled_peak:
            self._sampled_peak = rss

    def memory(self) -> MemoryReading:
        import psutil

        current = self._rss()
        children = self._children_private()
        self._children_peak = max(self._children_peak, children)
        peak = max(self._sampled_peak, current)
        source = ("psutil: the process tree (main process RSS + the DataLoader workers' private RSS, i.e. RSS "
                  "minus shared pages)")
        if self._hwm_resettable:
            hwm = _vm_hwm_bytes()
            if hwm is not None:
                peak = max(peak, hwm)
                source += "; peak: /proc/self/status VmHWM, reset via /proc/self/clear_refs"
        else:
            maxrss = _ru_maxrss_bytes()
            if (
                maxrss is not None
                and self._maxrss_at_reset is not None
                and maxrss > self._maxrss_at_reset
            ):
                # The lifetime high-water mark moved inside this window, so it is
                # this window's peak (and catches spikes between samples).
                peak = max(peak, maxrss)
                source += "; peak: resource.getrusage ru_maxrss (grew in window)"
            else:
                source += "; peak: max RSS sampled once per step"
        source += "; workers' part of the peak: the largest sum seen at a reading"
        return MemoryReading(
            current_bytes=current + children,
            peak_bytes=peak + self._children_peak,
            total_bytes=int(psutil.virtual_memory().total),
            reserved_bytes=None,
            source=source,
        )

    # ------------------------------------------------------------------ precision
    def grad_scaler(self, precision: str) -> Any | None:
        if precision != "fp16":
            return None
        if self._scaler_ok is None:
            self._scaler_ok = grad_scaler_works("cpu", self.synchronize)
        return make_grad_scaler("cpu") if self._scaler_ok else None

    # ------------------------------------------------------------------ facts
    def fingerprint(self) -> dict[str, Any]:
        import psutil

        facts: dict[str, Any] = {
            "device_name": cpu_model(),
            "device_total_bytes": int(psutil.virtual_memory().total),
        }
        cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        if cap is not None:
            try:
                facts["cpu_capability"] = cap()  # e.g. "AVX2", "AVX512", "NO AVX"
            except Exception:
                pass
        facts["mkldnn"] = bool(torch.backends.mkldnn.is_available())
        facts["torch_num_threads"] = torch.get_num_threads()  # a setting: not in fingerprint_id
        return facts


@hookimpl
def hjepa_bench_register_backends(register):
    register(CPUBackend())
