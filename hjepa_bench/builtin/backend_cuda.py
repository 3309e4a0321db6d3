"""The CUDA backend (also ROCm builds, which torch exposes as ``cuda``).

Timing uses CUDA events; memory the caching allocator's counters, which have a
true resettable peak.  Nothing touches the device before it is asked to: the
module imports and the backend constructs on machines without CUDA.
"""
from __future__ import annotations

import os
import subprocess
from typing import Any

import torch

from hjepa_bench.plugin.api import Availability, Backend, DeviceEvent, MemoryReading, TimingEvent
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.plugin.precision import make_grad_scaler, probe_precision

_CUDA_OOM_MARKERS = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",  # cuDNN could not allocate its workspace
    # NCCL (data-parallel runs): torch raises DistBackendError naming NCCL's last error
    "Cuda failure 'out of memory'",
    "Failed to CUDA calloc",
    "HIP out of memory",  # ROCm builds
)
# What NCCL prints (NCCL_DEBUG=WARN or finer) when its own allocation fails, raised or not.
_CUDA_PRINTED_OOM_MARKERS = ("NCCL WARN Cuda failure 'out of memory'", "NCCL WARN Failed to CUDA calloc")
_OTHER_BACKEND_MARKERS = ("MPS backend", "CPUAllocator", "XPU out of memory")
# torch.OutOfMemoryError (2.x) and its older alias torch.cuda.OutOfMemoryError
_OOM_TYPES = tuple(
    {t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t}
)


class CUDABackend(Backend):
    name = "cuda"
    foreign_markers = _OTHER_BACKEND_MARKERS
    oom_types = _OOM_TYPES
    oom_markers = _CUDA_OOM_MARKERS
    probes_hold_device = True  # a CUDA context and cached blocks stay in the process that probes
    printed_oom_markers = _CUDA_PRINTED_OOM_MARKERS

    def __init__(self) -> None:
        self._total_bytes: int | None = None

    # ------------------------------------------------------------------ basics
    def check_availability(self) -> Availability:
        return _check_availability()

    def device(self) -> torch.device:
        return torch.device("cuda")

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def has_device_events(self) -> bool:
        return True

    def event(self) -> TimingEvent:
        return DeviceEvent(torch.cuda.Event(enable_timing=True))

    # ------------------------------------------------------------------ memory
    def reset_peak_memory(self) -> None:
        if self.availability().available:
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> MemoryReading:
        if not self.availability().available:
            return MemoryReading(None, None, None, None, source="unavailable: " + self.availability().reason)
        free, total = (int(x) for x in torch.cuda.mem_get_info())
        self._total_bytes = total
        reserved = int(torch.cuda.memory_reserved())
        return MemoryReading(
            current_bytes=int(torch.cuda.memory_allocated()),
            peak_bytes=int(torch.cuda.max_memory_allocated()),
            total_bytes=total,
            reserved_bytes=reserved,
            peak_reserved_bytes=int(torch.cuda.max_memory_reserved()),
            # in use on the device but not by the caching allocator: the CUDA context, cuBLAS/cuDNN/NCCL
            # workspaces outside it, other processes
            outside_allocator_bytes=max(0, total - free - reserved),
            source=(
                "torch.cuda.memory_allocated / max_memory_allocated (since "
                "reset_peak_memory_stats) / memory_reserved / max_memory_reserved; total and outside the "
                "allocator (total - free - reserved): torch.cuda.mem_get_info"
            ),
        )

    # ------------------------------------------------------------------ precision
    def precision_reason(self, precision: str) -> str:
        if precision == "bf16":
            try:
                ok = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # older torch: no including_emulation argument
                ok = torch.cuda.is_bf16_supported()
            if not ok:
                major, minor = torch.cuda.get_device_capability()
                return (
                    f"bf16 needs a GPU with native bf16 (compute capability 8.0+); "
                    f"this one is {major}.{minor}."
                )
        return probe_precision("cuda", precision)

    def grad_scaler(self, precision: str) -> Any | None:
        if precision != "fp16" or not self.availability().available:
            return None
        return make_grad_scaler("cuda")  # torch.cuda.amp.GradScaler on torch 2.2

    # ------------------------------------------------------------------ facts
    def fingerprint(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "device_name": None,
            "device_total_bytes": None,
            "cuda_version": torch.version.cuda,
        }
        if getattr(torch.version, "hip", None):
            facts["hip_version"] = torch.version.hip
        if not self.availability().available:
            facts["unavailable_reason"] = self.availability().reason
            return facts
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        major, minor = torch.cuda.get_device_capability(index)
        facts.update(
            device_name=torch.cuda.get_device_name(index),
            device_total_bytes=int(props.total_memory),
            device_capability=f"{major}.{minor}",
            device_count=torch.cuda.device_count(),
            multiprocessor_count=int(getattr(props, "multi_processor_count", 0)) or None,
            cudnn_version=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            driver_version=_driver_version(),
        )
        return facts


def _check_availability() -> Availability:
    if not torch.backends.cuda.is_built():
        return Availability(False, "torch was built without CUDA.")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    try:
        count = torch.cuda.device_count()
        ok = torch.cuda.is_available()
    except Exception as exc:
        return Availability(False, f"CUDA could not be initialised ({type(exc).__name__}: {exc}).")
    if count == 0:
        return Availability(False, f"no CUDA device visible ({shown}).")
    if not ok:
        return Availability(False,
                            f"CUDA is not usable although {count} device(s) are visible ({shown}); check the driver.")
    return Availability(True)


def _driver_version() -> str | None:
    """The NVIDIA driver version (torch does not expose it), via nvidia-smi if present."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


@hookimpl
def hjepa_bench_register_backends(register):
    register(CUDABackend())
