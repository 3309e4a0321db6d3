"""The result record's shape as pydantic models, and the one sentence a record that does not fit gets.

The models type the fields every reader relies on (docs/schema.md); every other field of a record is
kept as it is (``extra="allow"``), so a record stays as rich as the run made it.  Validation is
strict: an integer field takes no 1.5, no ``"1"`` and no true; a number field takes integers and
floats, never true or false.  A field typed ``X | MISSING`` may be left out but, when present, is an
X (``X | None | MISSING``: an X or null).  The records themselves stay plain dicts: the models check
them (:func:`check_model`), they never replace them.

A built-in or third-party probe types its own entry with a subclass of :class:`ProbeEntry` (or of
:class:`JudgedEntry` when a report judges the entry again), set as the probe's ``entry_model``; the
record's model itself only knows the envelope every entry has: a ``status``, an ``error`` and
``measured``.

The error sentence of a field is read from the model's JSON Schema, so the words a user reads and the
schema a tool reads say the same: a field's ``description`` (where the model gives one) is what
the field must be; else it is spelled from the field's type and bounds.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.experimental.missing_sentinel import MISSING
from pydantic_core import ErrorDetails

__all__ = [
    "MISSING",
    "SCHEMA_VERSION",
    "STATUSES",
    "Count",
    "JudgedEntry",
    "NonNeg",
    "OkDistributed",
    "OkMetrics",
    "PlainName",
    "PlainValue",
    "Positive",
    "PositiveInt",
    "ProbeEntry",
    "Record",
    "RecordError",
    "RecordModel",
    "Series",
    "check_model",
    "error_sentence",
    "record_json_schema",
    "show_value",
]

#: the version new records are written with; a reader upgrades older ones (``record.upgrade_record``)
SCHEMA_VERSION: Final = 2
Status = Literal["ok", "oom", "diverged", "timeout", "crashed", "error", "unsupported", "skipped"]
STATUSES: tuple[str, ...] = get_args(Status)
#: a backend name: it becomes part of a file name (configs/option_NAME_BACKEND.yaml)
BACKEND_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class RecordError(ValueError):
    """A record (or a probe's entry) that does not fit the schema; the message is one sentence."""


# --------------------------------------------------------------------------- value types
NonNeg = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
#: a per-step series: a number per step, null where the step has none
Series = list[float | None]
PlainName = Annotated[str, Field(pattern=BACKEND_PATTERN,
                                 description="a plain name (1 to 64 letters, digits, '_' or '-')")]
PlainValue = str | int | float | bool | None


class RecordModel(BaseModel):
    """A JSON object of the record: the listed fields typed, every other field kept as it is."""

    model_config = ConfigDict(extra="allow", strict=True, defer_build=True)


# --------------------------------------------------------------------------- config and env
class PredictorConfig(RecordModel):
    depth: PositiveInt
    num_heads: PositiveInt
    mlp_ratio: Positive


class ModelConfig(RecordModel):
    encoder_type: str
    encoder_depth: PositiveInt | MISSING = MISSING
    num_hierarchies: PositiveInt
    embed_dim: PositiveInt | MISSING = MISSING
    predictor: PredictorConfig


class DataConfig(RecordModel):
    image_size: PositiveInt
    batch_size: PositiveInt
    num_workers: Count


class TrainingConfig(RecordModel):
    epochs: PositiveInt | MISSING = MISSING
    warmup_epochs: NonNeg | MISSING = MISSING
    lr: NonNeg | MISSING = MISSING


class BenchConfig(RecordModel):
    variant: str
    precision: str
    device: str | MISSING = MISSING
    workload: str | MISSING = MISSING
    warmup_steps: Count | MISSING = MISSING


class Config(RecordModel):
    """The resolved config: the fields the readers use (model_key, labels, the decision matrix, charts)."""

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig | MISSING = MISSING
    bench: BenchConfig


class Env(RecordModel):
    """The machine's fingerprint; ``backend`` names files, so it is a plain name."""

    backend: PlainName | MISSING = MISSING
    device_name: str | MISSING | None = MISSING
    fingerprint_id: str | MISSING | None = MISSING
    device_total_bytes: Positive | MISSING | None = MISSING


class Params(RecordModel):
    total: Count
    trainable: Count


# --------------------------------------------------------------------------- metrics
class StepTime(RecordModel):
    """The summary of the per-step times after warm-up."""

    n: Count | MISSING = MISSING
    median: Positive | MISSING | None = MISSING
    rel_ci95: NonNeg | MISSING | None = MISSING
    mean: NonNeg | MISSING | None = MISSING
    iqr: NonNeg | MISSING | None = MISSING
    cv: NonNeg | MISSING | None = MISSING
    p10: NonNeg | MISSING | None = MISSING
    p90: NonNeg | MISSING | None = MISSING
    min: NonNeg | MISSING | None = MISSING
    max: NonNeg | MISSING | None = MISSING
    ci95_low: NonNeg | MISSING | None = MISSING
    ci95_high: NonNeg | MISSING | None = MISSING


class Warmup(RecordModel):
    steps: Count | MISSING = MISSING
    time_s: NonNeg | MISSING | None = MISSING
    step_time_s: Series | MISSING = MISSING


class BatchSize(RecordModel):
    requested: PositiveInt | MISSING | None = MISSING
    achieved: PositiveInt | list[PositiveInt] | MISSING | None = MISSING


class Metrics(RecordModel):
    """Every field the runner, a validation run or a training log writes."""

    it_per_s: NonNeg | MISSING | None = MISSING
    samples_per_s: NonNeg | MISSING | None = MISSING
    step_time_s: StepTime | MISSING = MISSING
    measured_steps: Count | MISSING | None = MISSING
    measured_time_s: NonNeg | MISSING | None = MISSING
    data_wait_frac: NonNeg | MISSING | None = MISSING
    host_frac: NonNeg | MISSING | None = MISSING
    host_wait_frac: NonNeg | MISSING | None = MISSING
    data_wait_overlap_frac: NonNeg | MISSING | None = MISSING
    host_phases_s: dict[str, NonNeg | None] | MISSING = MISSING
    warmup: Warmup | MISSING = MISSING
    batch_size: BatchSize | MISSING = MISSING
    peak_device_bytes: NonNeg | MISSING | None = MISSING
    current_device_bytes: NonNeg | MISSING | None = MISSING
    reserved_device_bytes: NonNeg | MISSING | None = MISSING
    peak_reserved_device_bytes: NonNeg | MISSING | None = MISSING
    device_outside_allocator_bytes: NonNeg | MISSING | None = MISSING
    peak_rss_bytes: NonNeg | MISSING | None = MISSING
    device_total_bytes: Positive | MISSING | None = MISSING
    memory_source: str | MISSING | None = MISSING
    timing_method: str | MISSING | None = MISSING
    stop_reason: str | MISSING | None = MISSING
    min_steps: PositiveInt | MISSING | None = MISSING
    time_cap_s: NonNeg | MISSING | None = MISSING
    loss_first: float | MISSING | None = MISSING
    loss_last: float | MISSING | None = MISSING
    warnings: list[str] | MISSING = MISSING


class OkStepTime(RecordModel):
    median: Positive
    iqr: NonNeg | None
    cv: NonNeg | None
    p10: NonNeg | None
    p90: NonNeg | None
    n: PositiveInt


class OkMetrics(RecordModel):
    """What an ``ok`` record's ``metrics`` must hold besides: at least one step measured, a speed above zero."""

    it_per_s: Positive
    samples_per_s: Positive
    data_wait_frac: NonNeg | None
    peak_device_bytes: Count | None
    step_time_s: OkStepTime


# --------------------------------------------------------------------------- series, probes, distributed, sweep
class SeriesBlock(RecordModel):
    """Per step, warm-up included (the first ``warmup_steps`` entries)."""

    warmup_steps: Count | MISSING = MISSING
    step_time_s: Series | MISSING = MISSING
    data_wait_s: Series | MISSING = MISSING
    host_s: Series | MISSING = MISSING
    loss: Series | MISSING = MISSING
    grad_norm: Series | MISSING = MISSING


class ProbeEntry(RecordModel):
    """A probe's entry: a status, an error when it failed, whether it measured; every other field is the
    probe's own (a probe types them with a subclass, its ``entry_model``)."""

    status: str
    error: str | MISSING | None = MISSING
    measured: bool | MISSING = MISSING


class JudgedEntry(ProbeEntry):
    """An entry a report judges again (``analysis/verdicts.py``) from its raw numbers: the
    ``thresholds`` and ``definitions`` it was judged with are objects."""

    thresholds: dict[str, Any] | MISSING = MISSING
    definitions: dict[str, Any] | MISSING = MISSING


class SingleProcess(RecordModel):
    samples_per_s: NonNeg | MISSING | None = MISSING


class Distributed(RecordModel):
    """A data-parallel job (``run --nproc-per-node N``); null or absent for one process."""

    world_size: PositiveInt
    backend: str | MISSING = MISSING
    ranks: list[dict[str, Any]] | MISSING = MISSING
    job_samples_per_s: NonNeg | MISSING | None = MISSING
    allreduce_share: NonNeg | MISSING | None = MISSING
    single_process: SingleProcess | MISSING | None = MISSING
    scaling_efficiency: NonNeg | MISSING | None = MISSING


class OkSingleProcess(RecordModel):
    samples_per_s: NonNeg | None


class OkDistributed(RecordModel):
    """What an ``ok`` job's ``distributed`` block must hold besides."""

    backend: str
    ranks: list[dict[str, Any]]
    job_samples_per_s: Positive
    allreduce_share: NonNeg | None
    single_process: OkSingleProcess
    scaling_efficiency: NonNeg | None


class Sweep(RecordModel):
    """Where a sweep's record belongs: its key, label and place in the grid."""

    key: str | MISSING = MISSING
    label: str | MISSING = MISSING
    index: Count | MISSING = MISSING
    batch_size: PositiveInt | MISSING = MISSING
    overrides: dict[str, Any] | MISSING = MISSING
    group: Annotated[list[PlainValue], Field(description="a list of plain values")] | MISSING = MISSING


class Record(RecordModel):
    """One measured configuration (docs/schema.md).  An ``ok`` record's ``metrics`` fit
    :class:`OkMetrics` too, and an ``ok`` job's ``distributed`` block :class:`OkDistributed`."""

    schema_version: Literal[2]
    status: Status
    error: str | MISSING | None = MISSING
    started_at: str | MISSING | None = MISSING
    duration_s: NonNeg | MISSING | None = MISSING
    config_warnings: list[str] | MISSING = MISSING
    config: Config
    env: Env
    params: Params
    metrics: Metrics
    series: SeriesBlock | MISSING = MISSING
    probes: dict[str, Annotated[ProbeEntry, Field(description="an object with a status")]] = Field(
        description="an object of probe entries")
    distributed: Distributed | MISSING | None = MISSING
    sweep: Sweep | MISSING = MISSING
    node: dict[str, Any] | MISSING | None = MISSING


def record_json_schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), from the models: :class:`Record`, plus what an
    ``ok`` record's ``metrics`` and ``distributed`` must hold besides."""
    schema = Record.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for model in (OkMetrics, OkDistributed):
        part = model.model_json_schema()
        defs.update(part.pop("$defs", {}))
        defs[model.__name__] = part
    ok_metrics, ok_distributed = ({"$ref": f"#/$defs/{m.__name__}"} for m in (OkMetrics, OkDistributed))
    schema["allOf"] = [{"if": {"properties": {"status": {"const": "ok"}}, "required": ["status"]},
                        "then": {"properties": {"metrics": ok_metrics,
                                                "distributed": {"anyOf": [ok_distributed, {"type": "null"}]}}}}]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# --------------------------------------------------------------------------- the one sentence
def show_value(value: Any) -> str:
    """A value as an error sentence quotes it: JSON text, cut to 40 characters."""
    text = json.dumps(value) if isinstance(value, (dict, list, str)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_model(model: type[BaseModel], data: Any, where: str = "") -> None:
    """Raise RecordError unless ``data`` fits ``model``: one sentence naming the first field that does
    not (``where`` prefixes its path: ``"probes.loss."``) and what it must be."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise RecordError(error_sentence(model, data, exc.errors()[0], where)) from None


def error_sentence(model: type[BaseModel], data: Any, error: ErrorDetails, where: str = "") -> str:
    """``metrics.it_per_s must be a number > 0, not 0`` from pydantic's error: the field is the
    error's location up to the first list item or union branch, and what it must be is read from
    the model's JSON Schema at that field."""
    root = _json_schema(model)
    node: dict[str, Any] = root
    path: list[str] = []
    value = data
    for part in error["loc"]:
        if isinstance(part, int):
            break  # an item of a list: the sentence names the list
        step = _child(root, node, part)
        if step is None:
            continue  # a union branch's tag
        node = step
        path.append(part)
        value = value.get(part) if isinstance(value, Mapping) else None
    name = where + ".".join(path) if path else (where.rstrip(".") or "the record")
    if error["type"] == "missing":
        return f"{name} is missing"
    expected = _expected(root, node)
    if not expected:
        return f"{name}: {error['msg'][:1].lower()}{error['msg'][1:]}"
    return f"{name} must be {expected}, not {show_value(value)}"


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _child(root: dict[str, Any], node: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema of field ``key`` of an object schema (of the branch that has it, in a union), or of
    an item of a map of objects (``probes``); None for anything else (a union branch's tag)."""
    resolved = _resolve(root, node)
    for branch in resolved.get("anyOf", [resolved]):
        branch = _resolve(root, branch)
        props = branch.get("properties", {})
        if key in props:
            return dict(props[key])
        items = branch.get("additionalProperties")
        if isinstance(items, dict) and "properties" in _resolve(root, items) and not props:
            return dict(items)
    return None


def _expected(root: dict[str, Any], node: dict[str, Any], plural: bool = False) -> str:
    """What a value of ``node`` is, in words: ``an integer >= 1 or null``, ``a list of numbers or nulls``."""
    if "description" in node and "properties" not in node and not plural:
        return str(node["description"])  # (a field's; a model's own description is prose, not read here)
    node = _resolve(root, node)
    if "anyOf" in node:
        words = [_expected(root, branch, plural) for branch in node["anyOf"]]
        return " or ".join(w for w in words if w)
    if "enum" in node:
        return "one of " + ", ".join(str(v) for v in node["enum"])
    if "const" in node:
        return str(node["const"])
    kind = node.get("type")
    if kind == "array":
        items = _expected(root, node.get("items", {}), plural=True) or "values"
        return ("lists of " if plural else "a list of ") + items
    if kind == "object":
        values = node.get("additionalProperties")
        inner = f" of {_expected(root, values, plural=True)}" if isinstance(values, dict) and values else ""
        return ("objects" if plural else "an object") + inner
    return _scalar(node, plural)


_NOUNS = {"integer": ("an integer", "integers"), "number": ("a number", "numbers"), "string": ("a string", "strings"),
          "boolean": ("true or false", "true or false"), "null": ("null", "nulls")}


def _scalar(node: dict[str, Any], plural: bool) -> str:
    one, many = _NOUNS.get(str(node.get("type")), ("", ""))
    bounds = [f"{op} {node[key]:g}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                   ("maximum", "<="), ("exclusiveMaximum", "<")) if key in node]
    return " ".join([many if plural else one, *bounds]) if one else ""
