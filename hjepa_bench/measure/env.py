"""The environment fingerprint: which machine and software a result came from.

Pure apart from reading system facts: no torch device work here beyond what the
backend's own ``fingerprint()`` does.  ``fingerprint_id`` is a short hash of the
fields that identify machine + software, so results from the same machine and
the same versions share it and can be grouped or compared.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..plugin.api import Backend

#: Fields left out of ``fingerprint_id``: they name the host or are settings,
#: not facts of the machine or its software.
NON_IDENTITY_KEYS = frozenset({"fingerprint_id", "hostname_hash", "torch_num_threads"})

#: The fields ``environment_fingerprint`` always fills (values may be None).
CORE_KEYS = (
    "backend",
    "os",
    "python",
    "torch",
    "timm",
    "cpu_model",
    "cpu_count_logical",
    "cpu_count_physical",
    "total_memory_bytes",
    "hostname_hash",
    "fingerprint_id",
)


def sysctl(name: str) -> str | None:
    """``sysctl -n NAME`` on macOS/BSD, or None (never raises, never hangs)."""
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name, e.g. "AMD EPYC 7763 64-Core Processor" or "Apple M1 Max"."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                fields: dict[str, str] = {}
                for line in fh:
                    key, sep, value = line.partition(":")
                    if sep:
                        fields.setdefault(key.strip().lower(), value.strip())
            # x86: "model name"; some ARM kernels: "hardware" / "processor" / "cpu model"
            for key in ("model name", "hardware", "cpu model", "processor"):
                value = fields.get(key, "")
                if value and not value.isdigit():
                    return value
        except OSError:
            pass
    elif sys.platform == "darwin":
        value = sysctl("machdep.cpu.brand_string")
        if value:
            return value
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def hostname_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:12]


def _jsonable(value: Any) -> Any:
    """Make a backend's fact JSON-safe (tuples -> lists, odd objects -> str)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def fingerprint_id(fields: dict[str, Any]) -> str:
    """Short stable hash of the identifying fields (all but ``NON_IDENTITY_KEYS``)."""
    ident = {k: v for k, v in fields.items() if k not in NON_IDENTITY_KEYS}
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def environment_fingerprint(backend: Backend) -> dict[str, Any]:
    """Machine, software and device facts for a result record (JSON-serialisable)."""
    import psutil
    import torch

    core: dict[str, Any] = {
        "backend": backend.name,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "timm": _version("timm"),
        "cpu_model": cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True) or os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "total_memory_bytes": int(psutil.virtual_memory().total),
    }
    # The backend's facts come in, but never shadow the core fields.
    fp: dict[str, Any] = dict(core)
    fp.update(
        (k, v) for k, v in _jsonable(dict(backend.fingerprint())).items() if k not in core
    )
    fp["hostname_hash"] = hostname_hash()
    fp["fingerprint_id"] = fingerprint_id(fp)
    return fp
