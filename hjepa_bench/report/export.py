"""Results as one flat table: a row per record (``hjepa-bench export``), for pandas or a spreadsheet.

Columns, named by their dotted path in the record (pandas.json_normalize, ``sep="."``):

* who: ``label`` (:func:`~hjepa_bench.record.label`), ``machine``, ``device``, ``node``, ``world_size``,
  ``sweep.key``, ``status``, ``error``, ``started_at``, ``duration_s``;
* ``config.*``: every key of the resolved config (a list, such as ``masking.mask_scale``, as JSON text);
* ``params.*``, ``metrics.*`` and ``distributed.*``: every number, text and true/false (per-step series,
  per-rank lists and warnings are left out: they are not one value per configuration);
* ``probes.NAME.status``, ``probes.NAME.summary`` (the probe's own one-line summary, when the probe
  is loaded) and the probe's headline figures (``Probe.headline``; a probe that names none, or that
  is not loaded: every top-level number and true/false of its entry);
* ``source``: the results file the record came from.

Numbers stay as the record holds them (seconds, bytes, fractions); a value a record does not have is
empty (NaN in pandas, null in JSON).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..record import device_name, label, lookup, machine, node_label, world_size

FORMATS = ("csv", "parquet", "json")


def _scalars(value: Mapping[str, Any], *, lists_as_json: bool) -> dict[str, Any]:
    """``value`` with its lists left out (or as JSON text): what json_normalize flattens."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, Mapping):
            inner = _scalars(v, lists_as_json=lists_as_json)
            if inner:
                out[str(k)] = inner
        elif isinstance(v, (list, tuple)):
            if lists_as_json:
                out[str(k)] = json.dumps(v)
        else:
            out[str(k)] = v
    return out


def _headline(entry: Mapping[str, Any], probe: Any) -> dict[str, Any]:
    fields = tuple(getattr(probe, "headline", ()) or ())
    if fields:
        return {f: lookup(entry, *f.split(".")) for f in fields}
    return {k: v for k, v in entry.items()
            if isinstance(v, (int, float, bool)) and k not in ("status",)}


def _summary(entry: Mapping[str, Any], probe: Any) -> str | None:
    if probe is None or entry.get("status") == "failed":
        return None
    try:
        return probe.summarize(entry)
    except Exception:
        return None


def flat_row(record: Mapping[str, Any], probes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One record as nested plain values for :func:`flat_frame` (see the module docstring)."""
    probes = probes or {}
    row: dict[str, Any] = {
        "label": label(record), "machine": machine(record), "device": device_name(record), "node": node_label(record),
        "world_size": world_size(record), "sweep": {"key": lookup(record, "sweep", "key")},
        "status": record.get("status"), "error": record.get("error"), "started_at": record.get("started_at"),
        "duration_s": record.get("duration_s"),
        "config": _scalars(record.get("config") or {}, lists_as_json=True),
        "params": _scalars(record.get("params") or {}, lists_as_json=False),
        "metrics": _scalars(record.get("metrics") or {}, lists_as_json=False),
    }
    if isinstance(record.get("distributed"), Mapping):
        row["distributed"] = _scalars(record["distributed"], lists_as_json=False)
    probe_cols: dict[str, Any] = {}
    for name, entry in (record.get("probes") or {}).items():
        if not isinstance(entry, Mapping):
            continue
        probe = probes.get(name)
        cols: dict[str, Any] = {"status": entry.get("status"), "summary": _summary(entry, probe)}
        for k, v in _headline(entry, probe).items():
            cols[k] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
        probe_cols[name] = cols
    row["probes"] = probe_cols
    row["source"] = record.get("_source")
    return row


def flat_frame(records: Iterable[Mapping[str, Any]], probes: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per record, one column per dotted field (see the module docstring)."""
    rows = [flat_row(r, probes) for r in records]
    # headline paths hold dots already: flatten the probes' level by hand, json_normalize the rest
    flat = []
    for row in rows:
        probe_cols = row.pop("probes")
        source = row.pop("source")
        one = pd.json_normalize(row, sep=".").iloc[0].to_dict() if row else {}
        for name, cols in probe_cols.items():
            one.update({f"probes.{name}.{k}": v for k, v in cols.items()})
        one["source"] = source
        flat.append(one)
    df = pd.DataFrame(flat)
    for col in df.columns[df.dtypes == "object"]:  # one type per column (parquet needs it); a mix becomes text
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = [None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v) for v in df[col]]
    return df


def _plain(v: Any) -> Any:
    """A JSON value: numpy scalars as Python ones, NaN (a missing value) as null."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_frame(df: pd.DataFrame, path: str | Path, fmt: str) -> Path:
    """Write ``df`` as ``fmt`` (csv, parquet or json: an array of flat objects) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "json":  # (pandas' to_json rounds to 10 digits: the numbers are written as the record has them)
        rows = [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
        path.write_text(json.dumps(rows, indent=2, allow_nan=False) + "\n")
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return path


def parquet_missing() -> str | None:
    """Why parquet cannot be written here (pyarrow is missing), or None."""
    import importlib.util
    if importlib.util.find_spec("pyarrow") is None:
        return ("writing parquet needs pyarrow, which is not installed; run `pip install pyarrow` "
                "(or `pip install hjepa-bench[export]`), or use --format csv or json.")
    return None


def export_note(sources: Iterable[str], report_dir: str | Path) -> str | None:
    """The report's line on the flat export: the command for its results (and the files already
    exported next to the report); None when its sources are no results files (a log, a validation run)."""
    results = [s for s in sources if Path(s).name == "results.jsonl" or (Path(s) / "results.jsonl").is_file()]
    if not results:
        return None
    files = [f"results.{fmt}" for fmt in FORMATS if (Path(report_dir) / f"results.{fmt}").is_file()]
    cmd = "hjepa-bench export " + " ".join(results) + " --format csv"
    return ("Flat results (one row per record, for pandas or a spreadsheet): "
            + (", ".join(f"[{f}]({f})" for f in files) + "; rewrite with " if files else "")
            + f"`{cmd}` (or `--format parquet|json`).")
