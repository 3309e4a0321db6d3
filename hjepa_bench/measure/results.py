"""``results.jsonl``: one record per line, appended (flushed and fsynced) as each
config finishes, so a killed sweep loses at most the config in flight.

Every line is parsed and validated once, here (:func:`hjepa_bench.record.loads`: JSON, finite
numbers, every field the readers use of its type, a record of an older schema_version upgraded in
memory; then each probe entry as its probe's ``entry_model`` types it, :func:`check_entries`);
after that the readers trust the records.  What a line that is not a valid record gets depends on
who reads:

* a sweep resuming (``strict``): an incomplete *last* line (the sweep died while writing it)
  is reported, moved aside to ``results.jsonl.partial`` and its config runs again; any other
  bad line is a corrupt file: one sentence naming the line, exit 2, the file left untouched;
* a report: the bad line is skipped with a warning that names it (the last line too), and
  the report lists what it skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import RESULTS_MAX_BYTES, UserError, read_bytes
from ..record import RecordError, check_probe_entry, check_record, dumps, loads, records_frame

if TYPE_CHECKING:
    import pandas as pd

    from ..plugin.manager import Plugins

#: probe name -> the model its entries fit (``Probe.entry_model``)
EntryModels = Mapping[str, type[BaseModel]]

RESULTS_NAME = "results.jsonl"
#: a report skips at most this many bad lines of one file; beyond, it is not a results file
MAX_SKIPPED = 100


def config_key(config: Mapping[str, Any], env: Mapping[str, Any], node: str | None = None) -> str:
    """Identity of a measurement: the resolved config and the environment fingerprint, plus the
    node label for a cluster node (``fingerprint_id`` leaves the host out, so two identical nodes
    would share keys).  Without a node the key is what it always was."""
    ident: dict[str, Any] = {"config": config, "env": env.get("fingerprint_id")}
    if node is not None:
        ident["node"] = node
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_models(plugins: Plugins | None = None) -> dict[str, type[BaseModel]]:
    """The entry model of every registered probe that has one (``Probe.entry_model``): of ``plugins``,
    else of the plugins every command loads by default (the built-ins, entry points, HJEPA_BENCH_PLUGINS)."""
    if plugins is None:
        from ..plugin.manager import build_plugins

        plugins = build_plugins()
    return {name: p.entry_model for name, p in plugins.probes().items() if p.entry_model is not None}


def check_entries(record: Mapping[str, Any], models: EntryModels) -> None:
    """Raise RecordError naming the first field of a probe entry that does not fit its probe's model
    (a record :func:`~hjepa_bench.record.check_record` passed; a probe without a model: its envelope only)."""
    for name, entry in record["probes"].items():
        if name in models:
            check_probe_entry(name, entry, models[name])


def check_result(record: Mapping[str, Any], models: EntryModels | None = None) -> None:
    """A record as a results file holds it: :func:`~hjepa_bench.record.check_record`, then every probe
    entry as its probe types it (``models``: :func:`entry_models` of the default plugins when None)."""
    check_record(record)
    check_entries(record, entry_models() if models is None else models)


@dataclass
class Skipped:
    """A line of a results file that is not a valid record, left out of a report."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} line {self.line}: {self.reason}; skipped"


@dataclass
class LoadReport:
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated_tail: str | None = None  # the incomplete last line, if there was one (strict)
    skipped: list[Skipped] = field(default_factory=list)  # bad lines left out (not strict)


def _parse(raw: bytes, models: EntryModels) -> tuple[dict[str, Any] | None, str, bool]:
    """(record, why it is not one, whether the text is not even JSON)."""
    try:
        record = loads(raw.decode("utf-8"))
        check_entries(record, models)
        return record, "", False
    except UnicodeDecodeError:
        return None, "not UTF-8 text", True
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})", True
    except RecordError as exc:
        return None, f"not a valid record ({exc})", False


def read_results(path: Path, *, strict: bool = False, models: EntryModels | None = None) -> LoadReport:
    """Parse and validate a results file; see the module docstring for what a bad line gets.
    ``models``: the probes' entry models (:func:`entry_models` of the default plugins when None)."""
    out = LoadReport()
    path = Path(path)
    if not os.path.lexists(path):  # (a symlink that leads nowhere is not "no file yet")
        return out
    models = entry_models() if models is None else models
    data = read_bytes(path, "results file", RESULTS_MAX_BYTES)
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the newline that ends the last record
    last = len(lines)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record, why, not_json = _parse(raw, models)
        if record is not None:
            out.records.append(record)
            continue
        if number == last and not_json:
            why = f"an incomplete last line ({why}; a sweep killed while writing it leaves one)"
            if strict:
                out.truncated_tail = raw.decode("utf-8", "replace")
                break
        if strict:
            raise UserError(f"{path} is corrupt at line {number}: {why}; fix or remove that line, "
                            "nothing in the file was changed.")
        out.skipped.append(Skipped(str(path), number, why))
        if len(out.skipped) > MAX_SKIPPED:
            first = out.skipped[0]
            raise UserError(f"{path} is not a results file: more than {MAX_SKIPPED} of its lines are not valid "
                            f"records (line {first.line}: {first.reason}).")
    return out


class ResultsFile:
    """Append-only results of one sweep directory; ``models``: the probes' entry models its records
    are checked with (:func:`entry_models` of the default plugins when None)."""

    def __init__(self, directory: str | Path, models: EntryModels | None = None):
        self.dir = Path(directory)
        self.path = self.dir / RESULTS_NAME
        self.models = entry_models() if models is None else models

    def load(self) -> LoadReport:
        """Read what is there and repair an incomplete last line (kept in ``.partial``)."""
        report = read_results(self.path, strict=True, models=self.models)
        if report.truncated_tail is not None:
            partial = self.path.with_name(RESULTS_NAME + ".partial")
            with open(partial, "a") as fh:
                fh.write(report.truncated_tail + "\n")
            text = "".join(dumps(r, indent=None) + "\n" for r in report.records)
            tmp = self.path.with_name(RESULTS_NAME + ".tmp")
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        return report

    def replace(self, key: str, record: Mapping[str, Any]) -> None:
        """Put ``record`` in place of every record of ``key`` (a config run again with ``--retry``):
        the file is rewritten atomically (temp file, fsync, rename), so a kill leaves the old file
        or the new one."""
        line = dumps(record, indent=None) + "\n"
        check_result(json.loads(line), self.models)
        kept = [r for r in read_results(self.path, strict=True, models=self.models).records
                if (r.get("sweep") or {}).get("key") != key]
        tmp = self.path.with_name(RESULTS_NAME + ".tmp")
        with open(tmp, "w") as fh:
            fh.write("".join(dumps(r, indent=None) + "\n" for r in kept) + line)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, record: Mapping[str, Any]) -> None:
        line = dumps(record, indent=None) + "\n"
        check_result(json.loads(line), self.models)  # what is read back later
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class Results:
    """The records of one or more results files, and the lines left out."""

    records: list[dict[str, Any]]
    skipped: list[Skipped]


def load_results(paths: Iterable[str | Path], models: EntryModels | None = None) -> Results:
    """Records from several sweep directories (or results files), in order; a line that is
    not a valid record is left out and listed in ``skipped``.  ``models``: as :func:`read_results`."""
    out = Results([], [])
    models = entry_models() if models is None else models
    for p in paths:
        p = Path(p)
        path = p / RESULTS_NAME if p.is_dir() else p
        if not path.exists():
            raise UserError(f"no results found at {p} (expected {path}).")
        report = read_results(path, models=models)
        out.skipped.extend(report.skipped)
        for r in report.records:
            r = dict(r)
            r["_source"] = str(path)
            out.records.append(r)
    return out


def results_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Merge result directories from one or more machines into one DataFrame.

    One row per record; ``machine`` (the fingerprint, plus the node label of a cluster node) and
    ``device`` tell machines apart, so the same config measured on two machines stays two rows.
    Lines that are not valid records are left out.
    """
    records = load_results(paths).records
    df = records_frame(records)
    df["fingerprint_id"] = [r["env"].get("fingerprint_id") for r in records]
    df["key"] = [(r.get("sweep") or {}).get("key") for r in records]
    df["source"] = [r["_source"] for r in records]
    return df
