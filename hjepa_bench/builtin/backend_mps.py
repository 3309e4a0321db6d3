"""The MPS backend (Apple GPUs through Metal).

Timing uses ``torch.mps.event.Event`` after a device sync; wall clocks read
without one measure dispatch only.  ``torch.mps`` has no peak-memory API (the
driver figure includes the allocator cache and is not a peak), so the peak is
the maximum of ``current_allocated_memory`` sampled once per step, unless this
torch's ``torch.accelerator`` memory API works for MPS at run time, which is
then used and named in ``MemoryReading.source``.
"""
from __future__ import annotations

import platform
import sys
from typing import Any

import torch

from hjepa_bench.measure.env import sysctl
from hjepa_bench.plugin.api import Availability, Backend, DeviceEvent, MemoryReading, TimingEvent, WallClockEvent
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.plugin.precision import grad_scaler_works, make_grad_scaler, probe_precision

# First torch release whose MPS autocast accepts the dtype.
_MIN_TORCH = {"fp16": (2, 5), "bf16": (2, 6)}
# First torch release whose torch.amp.GradScaler("mps") works: fp16 trains with loss scaling
# upstream, so before it fp16 on MPS would train unscaled (overflow reads "diverged").
_MIN_TORCH_SCALER = (2, 8)

_MPS_OOM_MARKERS = (
    "MPS backend out of memory",
    # A single buffer above the Metal device's max buffer length: the batch is
    # too big for this GPU just as with an OOM.
    "Invalid buffer size",
)
# A command buffer Metal aborted for lack of memory is PRINTED, not raised ("Error: command buffer
# exited with error status. ... Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"):
# the run goes on with work that never ran, or dies later.
_MPS_PRINTED_OOM_MARKERS = ("kIOGPUCommandBufferCallbackErrorOutOfMemory",)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():  # "0a0", "1rc1": stop after the numeric head
            break
    return tuple(parts)


def _macos_version() -> str:
    return platform.mac_ver()[0] if sys.platform == "darwin" else ""


def _mps_event_class():
    event_mod = getattr(torch.mps, "event", None)
    return getattr(event_mod, "Event", None)


class MPSBackend(Backend):
    name = "mps"
    oom_markers = _MPS_OOM_MARKERS
    probes_hold_device = True  # the MPS allocator keeps what the probes allocated (unified memory)
    printed_oom_markers = _MPS_PRINTED_OOM_MARKERS

    def __init__(self) -> None:
        self._scaler_ok: bool | None = None
        self._sampled_peak: int = 0
        self._sampled_reserved: int = 0
        self._sampled_at: dict[str, None] = {}  # the points sample_memory was called at, in order
        self._accel_peak_ok: bool | None = None  # None: not yet known

    # ------------------------------------------------------------------ basics
    def check_availability(self) -> Availability:
        return _check_availability()

    def device(self) -> torch.device:
        return torch.device("mps")

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def has_device_events(self) -> bool:
        return _mps_event_class() is not None

    def event(self) -> TimingEvent:
        if _mps_event_class() is None:
            return WallClockEvent(self)
        return DeviceEvent(_mps_event_class()(enable_timing=True))

    # ------------------------------------------------------------------ memory
    def _accel_peak(self) -> int | None:
        """Peak allocated bytes from ``torch.accelerator`` if it works for MPS here."""
        if self._accel_peak_ok is False:
            return None
        acc = getattr(torch, "accelerator", None)
        needed = ("max_memory_allocated", "reset_peak_memory_stats", "current_accelerator")
        if acc is None or not all(hasattr(acc, n) for n in needed):
            self._accel_peak_ok = False
            return None
        try:
            current = acc.current_accelerator()
            if current is None or current.type != "mps":
                self._accel_peak_ok = False
                return None
            stats_fn = getattr(acc, "memory_stats", None)
            if stats_fn is not None and "allocated_bytes.all.peak" not in stats_fn():
                # Allocator not initialised yet, or no stats for MPS: decide later.
                return None
            return int(acc.max_memory_allocated())
        except Exception:
            self._accel_peak_ok = False
            return None

    def reset_peak_memory(self) -> None:
        if not self.availability().available:
            return
        self._sampled_peak = int(torch.mps.current_allocated_memory())
        self._sampled_reserved = int(torch.mps.driver_allocated_memory())
        self._sampled_at = {}
        if self._accel_peak_ok is not False and hasattr(getattr(torch, "accelerator", None), "reset_peak_memory_stats"):
            try:
                torch.accelerator.reset_peak_memory_stats()
                peak = self._accel_peak()
                if peak is not None:
                    # A working reset leaves the peak at the live bytes, not above.
                    live = getattr(torch.accelerator, "memory_allocated", None)
                    live_bytes = int(live()) if live is not None else self._sampled_peak
                    self._accel_peak_ok = peak <= max(live_bytes, self._sampled_peak)
            except Exception:
                self._accel_peak_ok = False

    def sample_memory(self, where: str = "step end") -> None:
        """Live bytes now (no sync: MPS allocates when an op is encoded).  The H-JEPA step calls it at
        the end of its forward pass, where the activations are live; after the step they are freed."""
        if not self.availability().available:
            return
        self._sampled_at[where] = None
        current = int(torch.mps.current_allocated_memory())
        if current > self._sampled_peak:
            self._sampled_peak = current
        reserved = int(torch.mps.driver_allocated_memory())
        if reserved > self._sampled_reserved:
            self._sampled_reserved = reserved

    def memory(self) -> MemoryReading:
        avail = self.availability()
        if not avail.available:
            return MemoryReading(None, None, None, None, source="unavailable: " + avail.reason)
        current = int(torch.mps.current_allocated_memory())
        reserved = int(torch.mps.driver_allocated_memory())
        rec = getattr(torch.mps, "recommended_max_memory", None)
        total = int(rec()) if rec is not None else None
        source = (
            "torch.mps.current_allocated_memory (live tensors), driver_allocated_memory "
            "(reserved, incl. cache), recommended_max_memory (total)"
        )
        accel = self._accel_peak()
        if accel is not None:
            peak = max(accel, current)
            source += "; peak: torch.accelerator.max_memory_allocated (works for mps in this torch)"
        else:
            peak = max(self._sampled_peak, current)
            where = ", ".join(self._sampled_at) or "no step yet"
            source += (f"; peak: max of current_allocated_memory sampled at: {where} (torch.mps has no peak "
                       "API; without a forward-end sample the activations are missed)")
        return MemoryReading(current, peak, total, reserved, source=source,
                             peak_reserved_bytes=max(self._sampled_reserved, reserved))

    # ------------------------------------------------------------------ precision
    def precision_reason(self, precision: str) -> str:
        torch_v = _version_tuple(str(torch.__version__))
        need = _MIN_TORCH.get(precision)
        if need and torch_v < need:
            return (
                f"MPS autocast supports {precision} from torch {need[0]}.{need[1]}; "
                f"this is torch {torch.__version__}."
            )
        if precision == "fp16" and torch_v < _MIN_TORCH_SCALER:
            return (
                f"fp16 trains with a GradScaler upstream, and torch.amp.GradScaler('mps') works from torch "
                f"{_MIN_TORCH_SCALER[0]}.{_MIN_TORCH_SCALER[1]}; this is torch {torch.__version__} (unscaled "
                "fp16 is not the upstream step: use bf16 or fp32)."
            )
        if precision == "bf16":
            mac = _macos_version()
            if mac and _version_tuple(mac) < (14,):
                return f"bf16 on MPS needs macOS 14 or newer; this is macOS {mac}."
        why = probe_precision("mps", precision)
        if not why and precision == "fp16" and not self._scaler_works():
            return (f"torch.amp.GradScaler('mps') did not run an fp16 step in torch {torch.__version__}; "
                    "unscaled fp16 is not the upstream step (use bf16 or fp32).")
        return why

    def _scaler_works(self) -> bool:
        if self._scaler_ok is None:
            self._scaler_ok = grad_scaler_works("mps", self.synchronize)
        return self._scaler_ok

    def grad_scaler(self, precision: str) -> Any | None:
        if precision != "fp16" or not self.availability().available:
            return None
        return make_grad_scaler("mps") if self._scaler_works() else None

    # ------------------------------------------------------------------ facts
    def fingerprint(self) -> dict[str, Any]:
        chip = sysctl("machdep.cpu.brand_string") if sys.platform == "darwin" else None
        facts: dict[str, Any] = {
            "device_name": chip,
            "device_total_bytes": None,
            "macos_version": _macos_version() or None,
        }
        if sys.platform == "darwin":
            memsize = sysctl("hw.memsize")
            facts["unified_memory_bytes"] = int(memsize) if memsize and memsize.isdigit() else None
            for key, name in (("performance_cores", "hw.perflevel0.physicalcpu"),
                              ("efficiency_cores", "hw.perflevel1.physicalcpu")):
                value = sysctl(name)
                facts[key] = int(value) if value and value.isdigit() else None
        if not self.availability().available:
            facts["unavailable_reason"] = self.availability().reason
            return facts
        rec = getattr(torch.mps, "recommended_max_memory", None)
        if rec is not None:
            try:
                facts["device_total_bytes"] = int(rec())
            except Exception:
                pass
        return facts


def _check_availability() -> Availability:
    if sys.platform != "darwin":
        system = platform.system() or sys.platform
        return Availability(False, f"MPS needs macOS 12.3+ on Apple silicon; this is {system}.")
    if not torch.backends.mps.is_built():
        return Availability(False, "torch was built without MPS.")
    if torch.backends.mps.is_available():
        return Availability(True)
    mac = _macos_version()
    if platform.machine() != "arm64":
        return Availability(
            False,
            f"MPS is not available to this {platform.machine()} Python (Intel Mac or Rosetta); "
            "use an arm64 Python on Apple silicon.",
        )
    if mac and _version_tuple(mac) < (12, 3):
        return Availability(False, f"MPS needs macOS 12.3+; this is macOS {mac}.")
    return Availability(False, f"torch.backends.mps.is_available() is False on macOS {mac or '?'}.")


@hookimpl
def hjepa_bench_register_backends(register):
    register(MPSBackend())
