"""The result record: one schema, written here, read everywhere.

A record is a JSON object describing one measured configuration.  The fields
are documented in README.md ("Result schema"); ``validate_record`` checks the
structure that every reader relies on.  Bump ``SCHEMA_VERSION`` whenever a
field changes meaning or a required field is added.

Every record is started by :func:`new_record` (a run, a sweep's placeholder for a
config that did not run, a validation run, a training log, the tests' hand-made
records) and read through the accessors below (``label``, ``machine``,
``batch_requested``, ``peak_bytes``, ``probe``...) or :func:`records_frame`, so a
field is read with one meaning everywhere.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .format import finite, finite_int

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
NUMBER = (int, float)
#: null where the source cannot measure it: a training log has no data wait, and no spread
#: of step times when it has too few steady intervals
NUMBER_OR_NULL = (int, float, type(None))
OK_METRICS: dict[str, Any] = {
    "it_per_s": NUMBER,
    "samples_per_s": NUMBER,
    "step_time_s": {"median": NUMBER, "iqr": NUMBER_OR_NULL, "cv": NUMBER_OR_NULL,
                    "p10": NUMBER_OR_NULL, "p90": NUMBER_OR_NULL, "n": int},
    "data_wait_frac": NUMBER_OR_NULL,
    "peak_device_bytes": (int, type(None)),
}
#: the optional ``distributed`` block of a data-parallel job (``run --nproc-per-node N``), and what an
#: ok job's block must hold besides
DISTRIBUTED: dict[str, Any] = {"world_size": int}
OK_DISTRIBUTED: dict[str, Any] = {
    "backend": str,
    "ranks": list,
    "job_samples_per_s": NUMBER,
    "allreduce_share": NUMBER_OR_NULL,
    "single_process": {"samples_per_s": NUMBER_OR_NULL},
    "scaling_efficiency": NUMBER_OR_NULL,
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
    if record.get("distributed") is not None:
        block = record["distributed"]
        if not isinstance(block, dict):
            raise RecordError("distributed must be an object")
        _check(block, DISTRIBUTED, "distributed.")
        if block["world_size"] < 1:
            raise RecordError(f"distributed.world_size {block['world_size']} is below 1")
        if record["status"] == "ok":
            _check(block, OK_DISTRIBUTED, "distributed.")
            if len(block["ranks"]) != block["world_size"]:
                raise RecordError(f"distributed.ranks has {len(block['ranks'])} entries for world_size "
                                  f"{block['world_size']}")


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


# --------------------------------------------------------------------------- building
def new_record(config: Mapping[str, Any], env: Mapping[str, Any], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """A record with every top-level field, status ``error`` until the caller says otherwise."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "error",
        "error": None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": None,
        "config": dict(config),
        "config_warnings": list(warnings),
        "env": dict(env),
        "params": {"total": 0, "trainable": 0},
        "metrics": {},
        "series": {},
        "probes": {},
    }


# --------------------------------------------------------------------------- reading
def lookup(record: Any, *path: str) -> Any:
    """``record[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    d = record
    for p in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(p)
    return d


def short_model_name(encoder_type: Any) -> str:
    """``vit_tiny_patch16_224`` -> ``vit_tiny``."""
    return str(encoder_type).replace("_patch16_224", "")


def model_short(record: Mapping[str, Any], missing: str = "") -> str:
    """The record's encoder, short (``vit_tiny``); ``missing`` when the config has none."""
    return short_model_name(lookup(record, "config", "model", "encoder_type") or missing)


def device_name(record: Mapping[str, Any]) -> str | None:
    """What the record ran on, for people: the device name, else the backend (else the config's device)."""
    return (lookup(record, "env", "device_name") or lookup(record, "env", "backend")
            or lookup(record, "config", "bench", "device"))


def machine(record: Mapping[str, Any]) -> str:
    """Identity of the machine + software stack (the environment fingerprint), for grouping."""
    env = record.get("env") or {}
    return str(env.get("fingerprint_id") or env.get("device_name") or env.get("backend"))


def machine_name(record: Mapping[str, Any]) -> str:
    """The machine for people: ``cpu (AMD EPYC ...)``."""
    env = record.get("env") or {}
    return f"{env.get('backend')} ({env.get('device_name') or '?'})"


def label(record: Mapping[str, Any]) -> str:
    """``sweep.label``, or a label built the same way from the config."""
    given = lookup(record, "sweep", "label")
    if given:
        return str(given)
    c = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    parts = [device_name(record) or "?", model_short(record, "?"),
             f"b{lookup(c, 'data', 'batch_size')}", f"w{lookup(c, 'data', 'num_workers')}",
             lookup(c, "bench", "variant"), lookup(c, "bench", "precision")]
    img = lookup(c, "data", "image_size")
    if img is not None:
        parts.append(f"{img}px")
    if world_size(record) > 1:
        parts.append(f"{world_size(record)} ranks")
    return " ".join(str(p) for p in parts if p is not None)


def world_size(record: Mapping[str, Any]) -> int:
    """The processes of the job the record measured: ``distributed.world_size`` of a data-parallel
    job, else what the config asked for (``bench.nproc_per_node``; a job that never ran has no
    block), else 1.  Each step of the job processes world_size x the batch size."""
    n = finite_int(lookup(record, "distributed", "world_size"))
    if n is None:
        n = finite_int(lookup(record, "config", "bench", "nproc_per_node"))
    return max(1, n or 1)


def batch_requested(record: Mapping[str, Any]) -> int:
    """The configured batch size (``config.data.batch_size``): what a config is known by."""
    return int(record["config"]["data"]["batch_size"])


def batch_achieved(record: Mapping[str, Any]) -> int | None:
    """The batch size the steps really had (``metrics.batch_size.achieved``) for an ok record,
    else the configured one: what memory was measured at."""
    achieved = lookup(record, "metrics", "batch_size", "achieved")
    if isinstance(achieved, (int, float)) and record.get("status") == "ok":
        return int(achieved)
    return finite_int(lookup(record, "config", "data", "batch_size"))


def workers(record: Mapping[str, Any]) -> int:
    """The configured DataLoader workers."""
    return int(record["config"]["data"]["num_workers"])


def peak_bytes(record: Mapping[str, Any]) -> int | None:
    """Peak device memory: the memory probe's (the larger of the backend's peak and the per-step
    samples) when it ran, else the backend's own peak (``metrics.peak_device_bytes``)."""
    entry = lookup(record, "probes", "memory")
    if isinstance(entry, Mapping) and entry.get("peak_device_bytes") is not None:
        return finite_int(entry["peak_device_bytes"])
    return finite_int(lookup(record, "metrics", "peak_device_bytes"))


def backend_peak_bytes(record: Mapping[str, Any]) -> float | None:
    """The backend's own peak (``metrics.peak_device_bytes``), without the memory probe's samples."""
    return finite((record.get("metrics") or {}).get("peak_device_bytes"))


def device_total_bytes(record: Mapping[str, Any]) -> float | None:
    """Device memory in total: the backend's reading in the metrics, else the environment's."""
    m = record.get("metrics") or {}
    return finite(m.get("device_total_bytes")) or finite((record.get("env") or {}).get("device_total_bytes"))


def samples_per_s(record: Mapping[str, Any]) -> float | None:
    return finite((record.get("metrics") or {}).get("samples_per_s"))


def probe(record: Mapping[str, Any], name: str) -> Any:
    """The record's entry of probe ``name`` (None when that probe did not run)."""
    return (record.get("probes") or {}).get(name)


def record_label(record: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that identify a record in a probe's report table."""
    c = record.get("config", {}) or {}
    n = world_size(record)
    return {
        "device": device_name(record) if n == 1 else f"{device_name(record)} ({n} ranks)",
        "model": model_short(record),
        "precision": (c.get("bench") or {}).get("precision"),
        "batch": (c.get("data") or {}).get("batch_size"),
        "workers": (c.get("data") or {}).get("num_workers"),
    }


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record with the columns reports and comparisons use."""
    rows = []
    for r in records:
        c, m, env = r.get("config", {}), r.get("metrics", {}) or {}, r.get("env", {})
        st = m.get("step_time_s") or {}
        rows.append({
            "device": device_name(r),
            "backend": env.get("backend"),
            "model": model_short(r),
            "levels": c.get("model", {}).get("num_hierarchies"),
            "pred_depth": c.get("model", {}).get("predictor", {}).get("depth"),
            "variant": c.get("bench", {}).get("variant"),
            "precision": c.get("bench", {}).get("precision"),
            "img": c.get("data", {}).get("image_size"),
            "batch": c.get("data", {}).get("batch_size"),
            "workers": c.get("data", {}).get("num_workers"),
            "ranks": world_size(r),
            "status": r.get("status"),
            "it_per_s": m.get("it_per_s"),
            "samples_per_s": m.get("samples_per_s"),
            "step_median_ms": None if st.get("median") is None else st["median"] * 1000,
            "step_cv_pct": None if st.get("cv") is None else st["cv"] * 100,
            "data_wait_pct": None if m.get("data_wait_frac") is None else m["data_wait_frac"] * 100,
            "peak_mem_mib": None if m.get("peak_device_bytes") is None else m["peak_device_bytes"] / 2**20,
            "steps": st.get("n"),
        })
    return pd.DataFrame(rows)
