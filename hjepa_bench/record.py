"""The result record: one schema, written here, read everywhere.

A record is a JSON object describing one measured configuration.  The fields
are documented in docs/schema.md; ``validate_record`` checks the
structure that every reader relies on.  Bump ``SCHEMA_VERSION`` whenever a
field changes meaning or a required field is added.

Every record is started by :func:`new_record` (a run, a sweep's placeholder for a
config that did not run, a validation run, a training log, the tests' hand-made
records) and read through the accessors below (``label``, ``machine``, ``node_label``,
``batch_requested``, ``peak_bytes``, ``probe``...) or :func:`records_frame`, so a
field is read with one meaning everywhere.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .errors import JSON_MAX_BYTES, read_text
from .format import finite, finite_int
from .status import read_status

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "diverged", "timeout", "crashed", "error", "unsupported", "skipped")
#: a backend name: it becomes part of a file name (configs/option_NAME_BACKEND.yaml)
BACKEND_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: how deep a record may nest (the tool's own nest 5 levels deep)
MAX_DEPTH = 32
#: integers beyond this are not measurements (byte counts fit far below it)
MAX_INT = 2**64


class RecordError(ValueError):
    pass


# --------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Kind:
    """A field's type (and range): ``what`` names it in the error, ``test`` checks a value."""

    what: str
    test: Callable[[Any], bool]
    required: bool = False


@dataclass(frozen=True)
class Obj:
    """A JSON object whose listed fields have these kinds (other fields are free)."""

    fields: Mapping[str, "Kind | Obj"]
    required: bool = False
    nullable: bool = False


def _is_num(v: Any) -> bool:
    return type(v) in (int, float)  # not bool; finite and in range: checked for every number


def num(lo: float | None = None, *, above: float | None = None, integer: bool = False, null: bool = False) -> Kind:
    """A number (``integer``: a whole one) ``>= lo`` or ``> above``; ``null``: or null."""
    base = "an integer" if integer else "a number"
    parts = [f">= {lo:g}" if lo is not None else "", f"> {above:g}" if above is not None else ""]
    what = " ".join([base, *[p for p in parts if p]]) + (" or null" if null else "")

    def test(v: Any) -> bool:
        if v is None:
            return null
        if not (type(v) is int if integer else _is_num(v)):
            return False
        return (lo is None or v >= lo) and (above is None or v > above)
    return Kind(what, test)


def req(kind: Kind) -> Kind:
    return replace(kind, required=True)


def opt(kind: Kind) -> Kind:
    return replace(kind, what=f"{kind.what} or null", test=lambda v: v is None or kind.test(v))


def list_of(kind: Kind, what: str) -> Kind:
    return Kind(f"a list of {what}", lambda v: isinstance(v, list) and all(kind.test(x) for x in v))


STR = Kind("a string", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: type(v) is bool)
MAPPING = Kind("an object", lambda v: isinstance(v, dict))
COUNT = num(0, integer=True)
POSITIVE_INT = num(1, integer=True)
NUM_OR_NULL = num(null=True)
NONNEG_OR_NULL = num(0, null=True)
SERIES = list_of(NUM_OR_NULL, "numbers or nulls")

#: ``config``: the fields the readers use (model_key, labels, the decision matrix, charts)
CONFIG = Obj({
    "model": Obj({"encoder_type": req(STR), "encoder_depth": POSITIVE_INT, "num_hierarchies": req(POSITIVE_INT),
                  "embed_dim": POSITIVE_INT,
                  "predictor": Obj({"depth": req(POSITIVE_INT), "num_heads": req(POSITIVE_INT),
                                    "mlp_ratio": req(num(above=0))}, required=True)}, required=True),
    "data": Obj({"image_size": req(POSITIVE_INT), "batch_size": req(POSITIVE_INT), "num_workers": req(COUNT)},
                required=True),
    "training": Obj({"epochs": POSITIVE_INT, "warmup_epochs": num(0), "lr": num(0)}),
    "bench": Obj({"variant": req(STR), "precision": req(STR), "device": STR, "workload": STR,
                  "warmup_steps": COUNT}, required=True),
}, required=True)
#: ``env``: the machine; ``backend`` names files, so it is a plain name
ENV = Obj({
    "backend": Kind("a plain name (1 to 64 letters, digits, '_' or '-')",
                    lambda v: isinstance(v, str) and bool(BACKEND_NAME.fullmatch(v))),
    "device_name": opt(STR), "fingerprint_id": opt(STR), "device_total_bytes": num(above=0, null=True),
}, required=True)
STEP_TIME = Obj({"n": COUNT, "median": num(above=0, null=True), "rel_ci95": NONNEG_OR_NULL,
                 **{k: NONNEG_OR_NULL for k in ("mean", "iqr", "cv", "p10", "p90", "min", "max", "ci95_low",
                                                "ci95_high")}})
#: ``metrics``: every field the runner, a validation run or a training log writes
METRICS = Obj({
    "it_per_s": NONNEG_OR_NULL, "samples_per_s": NONNEG_OR_NULL, "step_time_s": STEP_TIME,
    "measured_steps": opt(COUNT), "measured_time_s": NONNEG_OR_NULL, "data_wait_frac": NONNEG_OR_NULL,
    "host_frac": NONNEG_OR_NULL, "host_wait_frac": NONNEG_OR_NULL, "data_wait_overlap_frac": NONNEG_OR_NULL,
    "host_phases_s": Kind("an object of numbers >= 0", lambda v: isinstance(v, dict) and all(
        NONNEG_OR_NULL.test(x) for x in v.values())),
    "warmup": Obj({"steps": COUNT, "time_s": NONNEG_OR_NULL, "step_time_s": SERIES}),
    "batch_size": Obj({"requested": opt(POSITIVE_INT),
                       "achieved": Kind("a positive integer, a list of them or null",
                                        lambda v: v is None or POSITIVE_INT.test(v)
                                        or (isinstance(v, list) and all(POSITIVE_INT.test(x) for x in v)))}),
    **{k: NONNEG_OR_NULL for k in ("peak_device_bytes", "current_device_bytes", "reserved_device_bytes",
                                   "peak_reserved_device_bytes", "device_outside_allocator_bytes",
                                   "peak_rss_bytes")},
    "device_total_bytes": num(above=0, null=True),
    "memory_source": opt(STR), "timing_method": opt(STR), "stop_reason": opt(STR),
    "min_steps": num(1, integer=True, null=True), "time_cap_s": NONNEG_OR_NULL,
    "loss_first": NUM_OR_NULL, "loss_last": NUM_OR_NULL, "warnings": list_of(STR, "strings"),
}, required=True)
#: what an ``ok`` record must have measured (at least one step: a speed above zero)
OK_METRICS = Obj({
    "it_per_s": req(num(above=0)), "samples_per_s": req(num(above=0)), "data_wait_frac": req(NONNEG_OR_NULL),
    "peak_device_bytes": req(num(0, integer=True, null=True)),
    "step_time_s": Obj({"median": req(num(above=0)), "iqr": req(NONNEG_OR_NULL), "cv": req(NONNEG_OR_NULL),
                        "p10": req(NONNEG_OR_NULL), "p90": req(NONNEG_OR_NULL), "n": req(POSITIVE_INT)},
                       required=True),
})
#: a probe's entry: a status, an error when it failed, and the fields the analysis reads of the built-in
#: probes (criteria, decisions, projections); every other field belongs to the probe's own report section
PROBE = Obj({"status": req(STR), "error": opt(STR), "measured": BOOL})
#: ``thresholds`` and ``definitions``: what an entry was judged with; a report judges the entry again
#: (analysis/verdicts.py) from the raw numbers listed here and writes both back
JUDGED = {"thresholds": MAPPING, "definitions": MAPPING}
PROBE_FIELDS: dict[str, Obj] = {
    "loss": Obj({"start_loss": NUM_OR_NULL, "end_loss": NUM_OR_NULL, "decrease_pct": NUM_OR_NULL,
                 "noise_pct": NUM_OR_NULL, "trend": opt(STR), "noisy": opt(BOOL), "diverged": opt(BOOL),
                 "warmup_spikes": Obj({"count": opt(COUNT)}, nullable=True), "n": opt(COUNT),
                 "preliminary": BOOL, "lr": NUM_OR_NULL, "non_finite_count": opt(COUNT),
                 "lr_applied": NUM_OR_NULL, "lr_in_warmup": opt(BOOL), "first_non_finite_step": opt(COUNT),
                 "window": opt(COUNT), **JUDGED,
                 "lr_advice": Obj({"action": opt(STR), "suggested_lr": NUM_OR_NULL, "trigger": opt(STR),
                                   "text": opt(STR)}, nullable=True)}),
    "features": Obj({"collapse": Obj({"collapsed": opt(BOOL)}, nullable=True), "rankme_ratio": NUM_OR_NULL,
                     "effective_rank": NUM_OR_NULL, "d": opt(POSITIVE_INT), "mean_cosine": NUM_OR_NULL,
                     "std_below_floor_frac": NONNEG_OR_NULL, "steps_trained": opt(COUNT),
                     "quality_judged": BOOL, "quality_note": opt(STR), **JUDGED}),
    "memory": Obj({"leak": Obj({"suspected": opt(BOOL)}, nullable=True), "memory_pressure": opt(BOOL),
                   "headroom_frac": NUM_OR_NULL, "peak_device_bytes": NONNEG_OR_NULL,
                   "trace": Obj({"steps": list_of(COUNT, "integers >= 0"), "bytes": list_of(COUNT, "integers >= 0"),
                                 "warmup_steps": COUNT}, nullable=True), **JUDGED}),
    "svd": Obj({"timings": list_of(MAPPING, "objects")}),
    "bottleneck": Obj({"verdict": opt(STR), "worker_advice": opt(STR),
                       "shares": Obj({"data_wait": NONNEG_OR_NULL, "host": NONNEG_OR_NULL, "device": NONNEG_OR_NULL,
                                      "host_phases": Kind("an object of numbers", lambda v: isinstance(v, dict) and all(
                                          NUM_OR_NULL.test(x) for x in v.values()))}, nullable=True),
                       "cpu_saturated": opt(BOOL), "workers": COUNT, "cores": POSITIVE_INT,
                       **{k: NONNEG_OR_NULL for k in ("cpu_util_mean_pct", "own_cpu_pct_of_cores",
                                                      "other_cpu_pct_of_cores", "device_wait_frac")},
                       **JUDGED}),
    "stability": Obj({"cv_pct": NONNEG_OR_NULL, "n": opt(COUNT), "verdict": opt(STR), "spike_count": opt(COUNT),
                      "spike_period_steps": opt(COUNT), "spike_threshold_s": NONNEG_OR_NULL,
                      "degradation": Obj({"significant": opt(BOOL), "degrading": opt(BOOL), "change_pct": NUM_OR_NULL,
                                          "p_value": NONNEG_OR_NULL}, nullable=True), **JUDGED}),
    "epoch_costs": Obj({"worker_startup_s": NONNEG_OR_NULL, "val_step_s": NONNEG_OR_NULL,
                        "checkpoint_save_s": NONNEG_OR_NULL, "paid_every_epoch": BOOL,
                        "val_batch_size": opt(POSITIVE_INT), "checkpoint_bytes": opt(COUNT)}),
}
#: the ``distributed`` block of a data-parallel job (``run --nproc-per-node N``; null or absent for one
#: process), and what an ok job's block must hold besides
DISTRIBUTED = Obj({"world_size": req(POSITIVE_INT), "backend": STR, "ranks": list_of(MAPPING, "objects"),
                   "job_samples_per_s": NONNEG_OR_NULL, "allreduce_share": NONNEG_OR_NULL,
                   "single_process": Obj({"samples_per_s": NONNEG_OR_NULL}, nullable=True),
                   "scaling_efficiency": NONNEG_OR_NULL}, nullable=True)
OK_DISTRIBUTED = Obj({"backend": req(STR), "ranks": req(list_of(MAPPING, "objects")),
                      "job_samples_per_s": req(num(above=0)), "allreduce_share": req(NONNEG_OR_NULL),
                      "single_process": Obj({"samples_per_s": req(NONNEG_OR_NULL)}, required=True),
                      "scaling_efficiency": req(NONNEG_OR_NULL)})
RECORD = Obj({
    "schema_version": req(Kind(f"{SCHEMA_VERSION}", lambda v: type(v) is int and v == SCHEMA_VERSION)),
    "status": req(Kind(f"one of {', '.join(STATUSES)}", lambda v: v in STATUSES)),
    "error": opt(STR), "started_at": opt(STR), "duration_s": NONNEG_OR_NULL,
    "config_warnings": list_of(STR, "strings"),
    "config": CONFIG, "env": ENV,
    "params": Obj({"total": req(COUNT), "trainable": req(COUNT)}, required=True),
    "metrics": METRICS,
    "series": Obj({"warmup_steps": COUNT, "step_time_s": SERIES, "data_wait_s": SERIES, "host_s": SERIES,
                   "loss": SERIES, "grad_norm": SERIES}),
    "probes": req(Kind("an object of probe entries", lambda v: isinstance(v, dict))),
    "distributed": DISTRIBUTED,
    "sweep": Obj({"key": STR, "label": STR, "index": COUNT, "batch_size": POSITIVE_INT, "overrides": MAPPING,
                  "group": list_of(Kind("", lambda v: not isinstance(v, (dict, list))), "plain values")}),
})


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(obj: Mapping[str, Any], spec: Obj, where: str) -> None:
    for key, kind in spec.fields.items():
        path = f"{where}{key}"
        if key not in obj:
            if kind.required:
                raise RecordError(f"{path} is missing")
            continue
        value = obj[key]
        if isinstance(kind, Kind):
            if not kind.test(value):
                raise RecordError(f"{path} must be {kind.what}, not {_show(value)}")
        else:
            if value is None and kind.nullable:
                continue
            if not isinstance(value, dict):
                raise RecordError(f"{path} must be an object, not {_show(value)}")
            _check(value, kind, path + ".")


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


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise RecordError naming the first field that does not fit the schema: plain JSON with
    finite numbers, and every field a reader uses of its type and in its range (:data:`RECORD`;
    an ``ok`` record has its speed measured, :data:`OK_METRICS`).  Once a record passed, the
    readers index it freely."""
    if not isinstance(record, Mapping):
        raise RecordError(f"a record must be a JSON object, not {_show(record)}")
    check_json(record)
    _check(record, RECORD, "")
    if record["status"] == "ok":
        _check(record["metrics"], OK_METRICS, "metrics.")
    if record.get("distributed") is not None:
        block = record["distributed"]
        if record["status"] == "ok":
            _check(block, OK_DISTRIBUTED, "distributed.")
            if len(block["ranks"]) != block["world_size"]:
                raise RecordError(f"distributed.ranks has {len(block['ranks'])} entries for world_size "
                                  f"{block['world_size']}")
    for name, entry in record["probes"].items():
        validate_probe_entry(name, entry)


def validate_probe_entry(name: str, entry: Any) -> None:
    """A probe's entry as :func:`validate_record` checks it: an object with a str ``status``
    (and, for the built-in probes the analysis reads, those fields typed: :data:`PROBE_FIELDS`)."""
    if not isinstance(entry, Mapping):
        raise RecordError(f"probes.{name} must be an object with a status, not {_show(entry)}")
    check_json(entry, f"probes.{name}")
    _check(entry, PROBE, f"probes.{name}.")
    if name in PROBE_FIELDS:
        _check(entry, PROBE_FIELDS[name], f"probes.{name}.")


def loads(line: str | bytes) -> dict[str, Any]:
    """One record from its JSON text, validated (:func:`validate_record`).  Text that is not JSON
    raises ``json.JSONDecodeError``; JSON that is not a valid record (a NaN literal, a number out
    of range, nesting too deep, a field of the wrong type) raises RecordError."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise RecordError(f"it nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise RecordError(str(exc)) from None
    validate_record(record)
    _read_statuses(record)
    return record


def _read_statuses(record: dict[str, Any]) -> None:
    """The verdict statuses of the probe entries (``criterion_*``, ``lr_advice.action``) in their one
    spelling (:func:`hjepa_bench.status.read_status`): an older record's "not-measured" reads back as
    "not measured"."""
    probes = record.get("probes")
    for entry in probes.values() if isinstance(probes, dict) else ():
        if not isinstance(entry, dict):
            continue
        for key in [k for k in entry if k.startswith("criterion_")]:
            entry[key] = read_status(entry[key])
        advice = entry.get("lr_advice")
        if isinstance(advice, dict) and "action" in advice:
            advice["action"] = read_status(advice["action"])


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


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(read_text(path, "JSON file", JSON_MAX_BYTES))


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


def peak_bytes(record: Mapping[str, Any]) -> int | None:
    """Peak device memory: the memory probe's (the larger of the backend's peak and the per-step
    samples) when it ran, else the backend's own peak (``metrics.peak_device_bytes``)."""
    entry = lookup(record, "probes", "memory")
    if isinstance(entry, Mapping) and entry.get("peak_device_bytes") is not None:
        return finite_int(entry["peak_device_bytes"])
    return finite_int(lookup(record, "metrics", "peak_device_bytes"))


def footprint_bytes(record: Mapping[str, Any]) -> int | None:
    """The device memory a run needed at its peak, what must fit in the total: the memory probe's
    ``peak_footprint_bytes`` (allocated peak, or the allocator's peak reserve plus the memory in use
    outside it, whichever is larger) when it ran, else the same from the metrics, else :func:`peak_bytes`."""
    entry = lookup(record, "probes", "memory")
    if isinstance(entry, Mapping) and entry.get("peak_footprint_bytes") is not None:
        return finite_int(entry["peak_footprint_bytes"])
    m = record.get("metrics") or {}
    peak = peak_bytes(record)
    reserved = finite_int(m.get("peak_reserved_device_bytes"))
    if reserved is None:
        return peak
    return max(peak or 0, reserved + (finite_int(m.get("device_outside_allocator_bytes")) or 0))


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
