"""The result record: one schema, written here, read everywhere.

A record is a JSON object describing one measured configuration.  The fields
are documented in README.md ("Result schema"); ``validate_record`` checks the
structure that every reader relies on.  Bump ``SCHEMA_VERSION`` whenever a
field changes meaning or a required field is added.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "diverged", "timeout", "crashed", "error", "unsupported", "skipped")

# key -> required type(s); nested dicts checked recursively.
REQUIRED: dict[str, Any] = {
    "schema_version": int,
    "status": str,
    "config": dict,
    "env": dict,
    "params": {"total": int, "trainable": int},
    "metrics": dict,
    "probes": dict,
}
OK_METRICS: dict[str, Any] = {
    "it_per_s": (int, float),
    "samples_per_s": (int, float),
    "step_time_s": {"median": (int, float), "iqr": (int, float), "cv": (int, float),
                    "p10": (int, float), "p90": (int, float), "n": int},
    "data_wait_frac": (int, float),
    "peak_device_bytes": (int, type(None)),
}


class RecordError(ValueError):
    pass


def _check(obj: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> None:
    for key, kind in spec.items():
        if key not in obj:
            raise RecordError(f"{where}{key} is missing")
        value = obj[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise RecordError(f"{where}{key} must be an object")
            _check(value, kind, f"{where}{key}.")
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise RecordError(f"{where}{key} has type {type(value).__name__}")


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise RecordError naming the first field that does not fit the schema."""
    if not isinstance(record, Mapping):
        raise RecordError("a record must be a JSON object")
    _check(record, REQUIRED, "")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"schema_version {record['schema_version']} is not {SCHEMA_VERSION}")
    if record["status"] not in STATUSES:
        raise RecordError(f"status {record['status']!r} is not one of {', '.join(STATUSES)}")
    if record["status"] == "ok":
        _check(record["metrics"], OK_METRICS, "metrics.")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(record: Mapping[str, Any], indent: int | None = 2) -> str:
    return json.dumps(_clean(record), indent=indent, allow_nan=False)


def write_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + fsync + rename): a crash leaves old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(record)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
