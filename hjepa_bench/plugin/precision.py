"""Which precisions work on a device: answered by trying, not by version tables.

Used by the backend plugins.  torch silently turns autocast off for a dtype a
device does not support, so the output dtype is checked as well.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..errors import error_line

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def probe_precision(device_type: str, precision: str) -> str:
    """"" if a tiny (autocast) matmul with backward works on the device, else why not."""
    dtype = DTYPES[precision]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = torch.randn(16, 16, device=device_type, requires_grad=True)
            b = torch.randn(16, 16, device=device_type)
            if dtype is None:
                out = a @ b
            else:
                with torch.autocast(device_type, dtype=dtype):
                    out = a @ b
            out.float().sum().backward()
            finite = a.grad is not None and bool(torch.isfinite(a.grad).all().item())
        if dtype is not None and out.dtype != dtype:
            why = "; ".join(str(w.message) for w in caught) or "no warning"
            return f"{device_type} autocast did not run the matmul in {precision} in torch {torch.__version__} ({why})."
        if not finite:
            return f"backward under {device_type} {precision} gave a non-finite gradient."
    except Exception as exc:
        return f"{precision} matmul+backward failed on {device_type}: {error_line(exc)}"
    return ""


def make_grad_scaler(device_type: str) -> torch.amp.GradScaler | None:
    """A GradScaler for ``device_type``: ``torch.amp.GradScaler(device_type)`` (torch >= 2.3); on an
    older torch, whose only scaler is ``torch.cuda.amp.GradScaler``, that one for ``cuda`` and None
    for any other device (it has no scaler there)."""
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        scaler: torch.amp.GradScaler = amp_scaler(device_type)
        return scaler
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler()
    return None


def grad_scaler_works(device_type: str, sync: Callable[[], None]) -> bool:
    """Whether :func:`make_grad_scaler` gives a scaler for ``device_type`` that runs one fp16 step
    (``sync``: the backend's ``synchronize``, so an asynchronous failure shows here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scaler = make_grad_scaler(device_type)
            if scaler is None:
                return False
            if not scaler.is_enabled():
                return False
            w = torch.nn.Parameter(torch.randn(4, 4, device=device_type))
            opt = torch.optim.SGD([w], lr=0.0)
            with torch.autocast(device_type, dtype=torch.float16):
                loss = (w @ w).float().sum()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sync()
        return True
    except Exception:
        return False
