"""The result record: one schema, written here, read everywhere.

A record is a JSON object describing one measured configuration.  The fields
are documented in docs/schema.md and typed by the pydantic models of
:mod:`hjepa_bench.record_model` (:func:`record_json_schema` gives their JSON
Schema); ``check_record`` checks the structure that every reader relies on.
Bump ``SCHEMA_VERSION`` whenever a field changes meaning or a required field is
added, and teach :func:`upgrade_record` the step, so older files still read.

Every record is started by :func:`new_record` (a run, a sweep's placeholder for a
config that did not run, a validation run, a training log, the tests' hand-made
records), read by :func:`loads` or :func:`read_json` (validated, upgraded to the
current version) and read through the accessors below (``label``, ``machine``,
``node_label``, ``batch_requested``, ``peak_bytes``, ``probe``...) or
:func:`records_frame`, so a field is read with one meaning everywhere.  Records
stay plain dicts: the models check them, never replace them.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .errors import JSON_MAX_BYTES, read_text
from .format import finite, finite_int
from .record_model import SCHEMA_VERSION as SCHEMA_VERSION  # (re-exported: read here)
from .record_model import STATUSES as STATUSES
from .record_model import OkDistributed, OkMetrics, ProbeEntry, Record, check_model, show_value
from .record_model import RecordError as RecordError
from .record_model import record_json_schema as record_json_schema
from .status import read_status

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

#: how deep a record may nest (the tool's own nest 5 levels deep)
MAX_DEPTH = 32
#: integers beyond this are not measurements (byte counts fit far below it)
MAX_INT = 2**64
#: the probe-entry keys (and keys of an entry's ``definitions``) that schema_version 2 renamed: the
#: version-1 names said 20% whatever limit ``--thresholds`` set (the limit is in the entry's thresholds)
RENAMED_IN_V2 = {"criterion_cv_lt_20pct": "criterion_cv_below_limit",
                 "criterion_loss_down_20pct": "criterion_loss_decrease_met"}


def check_json(value: Any, where: str = "the record", depth: int = 0) -> None:
    """Raise RecordError unless ``value`` is plain JSON (str keys) with finite numbers (integers
    below 2**64), at most MAX_DEPTH levels deep.  JSON text may hold NaN, Infinity and 1e400
    (json.loads reads them as floats); JSON written by hjepa-bench never does."""
    stack = [(value, where, depth)]
    while stack:
        v, path, d = stack.pop()
        if isinstance(v, dict):
            if d >= MAX_DEPTH:
                raise RecordError(f"{path} nests deeper than {MAX_DEPTH} levels")
            for k, x in v.items():
                if not isinstance(k, str):
                    raise RecordError(f"{path} has a key that is not a string ({k!r})")
                stack.append((x, f"{k}" if path == where else f"{path}.{k}", d + 1))
        elif isinstance(v, list):
            if d >= MAX_DEPTH:
                raise RecordError(f"{path} nests deeper than {MAX_DEPTH} levels")
            stack.extend((x, f"{path}[{i}]", d + 1) for i, x in enumerate(v))
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise RecordError(f"{path} is {v}, not a finite number")
        elif isinstance(v, int) and not isinstance(v, bool):
            if abs(v) >= MAX_INT:
                raise RecordError(f"{path} is an integer beyond 2**64")
        elif v is not None and not isinstance(v, (str, bool)):
            raise RecordError(f"{path} holds a {type(v).__name__}, which JSON cannot")


def check_record(record: Mapping[str, Any]) -> None:
    """Raise RecordError naming the first field that does not fit the schema: plain JSON with
    finite numbers (:func:`check_json`), a schema_version this version reads (an older record is
    checked as it reads once upgraded, :func:`upgrade_record`), and every field a reader uses of its
    type and in its range (:class:`~hjepa_bench.record_model.Record`; an ``ok`` record has its speed
    measured, :class:`~hjepa_bench.record_model.OkMetrics`).  Each probe entry is checked as an
    entry (a status, an error, measured); the fields of a probe's own are the probe's to type
    (``Probe.entry_model``, checked where the probes are known: ``measure.results``).  Once a
    record passed, the readers index it freely."""
    _checked(record)


def _checked(record: Any) -> dict[str, Any]:
    """:func:`check_record`, returning the record as this version reads it (upgraded)."""
    if not isinstance(record, Mapping):
        raise RecordError(f"a record must be a JSON object, not {show_value(record)}")
    check_json(record)
    current = upgrade_record(record)
    check_model(Record, current)
    if current["status"] == "ok":
        check_model(OkMetrics, current["metrics"], "metrics.")
    block = current.get("distributed")
    if block is not None and current["status"] == "ok":
        check_model(OkDistributed, block, "distributed.")
        if len(block["ranks"]) != block["world_size"]:
            raise RecordError(f"distributed.ranks has {len(block['ranks'])} entries for world_size "
                              f"{block['world_size']}")
    return current


def check_probe_entry(name: str, entry: Any, model: type[BaseModel] | None = None) -> None:
    """A probe's entry as :func:`check_record` checks it, an object with a str ``status``
    (:class:`~hjepa_bench.record_model.ProbeEntry`), and then as ``model`` types it: the probe's own
    ``entry_model``, which the caller that knows the probes gives."""
    if not isinstance(entry, Mapping):
        raise RecordError(f"probes.{name} must be an object with a status, not {show_value(entry)}")
    check_json(entry, f"probes.{name}")
    check_model(ProbeEntry, entry, f"probes.{name}.")
    if model is not None:
        check_model(model, entry, f"probes.{name}.")


# --------------------------------------------------------------------------- versions
def schema_version(record: Mapping[str, Any]) -> int:
    """The record's ``schema_version``: RecordError unless it is one this version reads (1 to
    :data:`SCHEMA_VERSION`)."""
    if "schema_version" not in record:
        raise RecordError("schema_version is missing")
    version = record["schema_version"]
    if type(version) is not int or version < 1:
        raise RecordError(f"schema_version must be an integer from 1 to {SCHEMA_VERSION}, not {show_value(version)}")
    if version > SCHEMA_VERSION:
        raise RecordError(f"schema_version {version} is newer than this hjepa-bench reads (1 to {SCHEMA_VERSION}); "
                          "read it with a newer hjepa-bench")
    return version


def upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as :data:`SCHEMA_VERSION` has it, in memory: the record itself when it is current, else
    a copy with what changed since its version changed (the files are never rewritten).  Version 2
    renamed two probe-entry keys (:data:`RENAMED_IN_V2`); a verdict status of any version is read in
    its one spelling (:func:`_one_spelling`).  A version this one does not read is a
    RecordError (:func:`schema_version`)."""
    version = schema_version(record)
    current = record if isinstance(record, dict) else dict(record)
    if version == 1:
        current = {**current, "schema_version": 2}
        if isinstance(current.get("probes"), Mapping):
            current["probes"] = {name: _renamed_v2(entry) for name, entry in current["probes"].items()}
    return _one_spelling(current)


def _one_spelling(record: dict[str, Any]) -> dict[str, Any]:
    """The record with the verdict statuses of its probe entries (``criterion_*``,
    ``lr_advice.action``) in their one spelling (:func:`hjepa_bench.status.read_status`): an older
    record's "not-measured" reads back as "not measured".  The record itself when nothing changes,
    else a copy."""
    probes = record.get("probes")
    if not isinstance(probes, Mapping):
        return record
    spelled = {name: _entry_spelling(entry) for name, entry in probes.items()}
    if all(spelled[name] is probes[name] for name in probes):
        return record
    return {**record, "probes": spelled}


def _entry_spelling(entry: Any) -> Any:
    if not isinstance(entry, Mapping):
        return entry
    changed = {k: read_status(v) for k, v in entry.items() if k.startswith("criterion_") and read_status(v) != v}
    advice = entry.get("lr_advice")
    if isinstance(advice, Mapping) and read_status(advice.get("action")) != advice.get("action"):
        changed["lr_advice"] = {**advice, "action": read_status(advice["action"])}
    return {**entry, **changed} if changed else entry


def _renamed_v2(entry: Any) -> Any:
    """A version-1 probe entry with the keys (and ``definitions`` keys) version 2 renamed, in place order."""
    if not isinstance(entry, Mapping):
        return entry
    out = {RENAMED_IN_V2.get(k, k): v for k, v in entry.items()}
    if isinstance(out.get("definitions"), Mapping):
        out["definitions"] = {RENAMED_IN_V2.get(k, k): v for k, v in out["definitions"].items()}
    return out


def loads(line: str | bytes) -> dict[str, Any]:
    """One record from its JSON text, validated (:func:`check_record`) and upgraded to the current
    schema_version (:func:`upgrade_record`).  Text that is not JSON raises ``json.JSONDecodeError``;
    JSON that is not a valid record (a NaN literal, a number out of range, nesting too deep, a field
    of the wrong type, a schema_version newer than this one reads) raises RecordError."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise RecordError(f"it nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise RecordError(str(exc)) from None
    return _checked(record)


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


def _umask() -> int:
    """The process's umask (read without changing it where /proc says it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def write_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + fsync + rename): a crash leaves old or new, never half.  The
    file gets the mode every other output gets (:func:`default_file_mode`), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(record)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """A JSON file (a record, or another file of the tool's: a job, the gathered ranks); a record (an
    object with a ``schema_version``) comes upgraded to the current version (:func:`upgrade_record`)."""
    data = json.loads(read_text(path, "JSON file", JSON_MAX_BYTES))
    if isinstance(data, dict) and "schema_version" in data:
        return upgrade_record(data)
    return data


# --------------------------------------------------------------------------- building
def new_record(config: Mapping[str, Any], env: Mapping[str, Any], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """A record with every top-level field, status ``error`` until the caller says otherwise."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "error",
        "error": None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (3.10 has no dt.UTC)
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
    name = (lookup(record, "env", "device_name") or lookup(record, "env", "backend")
            or lookup(record, "config", "bench", "device"))
    return None if name is None else str(name)


def node_label(record: Mapping[str, Any]) -> str | None:
    """The cluster node a record was measured on (``node.label``), None for a local run."""
    value = lookup(record, "node", "label")
    return None if value in (None, "") else str(value)


def machine(record: Mapping[str, Any]) -> str:
    """Identity of the machine + software stack, for grouping: the environment fingerprint, plus
    the node label for a record of a cluster node (two identical nodes are two machines)."""
    env = record.get("env") or {}
    ident = str(env.get("fingerprint_id") or env.get("device_name") or env.get("backend"))
    node = node_label(record)
    return ident if node is None else f"{ident}@{node}"


def machine_name(record: Mapping[str, Any]) -> str:
    """The machine for people: ``cpu (AMD EPYC ...)``, ``cpu (AMD EPYC ...) on node-a`` on a cluster."""
    env = record.get("env") or {}
    node = node_label(record)
    return f"{env.get('backend')} ({env.get('device_name') or '?'})" + ("" if node is None else f" on {node}")


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
    node = node_label(record)
    if node is not None:
        parts.append(f"on {node}")
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
            "node": node_label(r),
            "machine": machine(r),
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
    import pandas as pd

    return pd.DataFrame(rows)
