"""``results.jsonl``: one record per line, appended (flushed and fsynced) as each
config finishes, so a killed sweep loses at most the config in flight.

Loading tolerates one thing only: an incomplete *last* line (the sweep died
while writing it).  It is reported, moved aside to ``results.jsonl.partial`` and
its config runs again.  A broken line anywhere else is a corrupt file: one clear
sentence, exit 2, and the file is left untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..errors import UserError
from ..record import RecordError, dumps, records_frame, validate_record

RESULTS_NAME = "results.jsonl"


def config_key(config: Mapping[str, Any], env: Mapping[str, Any], node: str | None = None) -> str:
    """Identity of a measurement: the resolved config and the environment fingerprint, plus the
    node label for a cluster node (``fingerprint_id`` leaves the host out, so two identical nodes
    would share keys).  Without a node the key is what it always was."""
    ident: dict[str, Any] = {"config": config, "env": env.get("fingerprint_id")}
    if node is not None:
        ident["node"] = node
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class LoadReport:
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated_tail: str | None = None  # the incomplete last line, if there was one


def read_results(path: Path) -> LoadReport:
    """Parse a results file; see the module docstring for what is tolerated."""
    out = LoadReport()
    if not path.exists():
        return out
    data = path.read_bytes()
    if not data:
        return out
    lines = data.split(b"\n")
    ends_clean = data.endswith(b"\n")
    body, tail = (lines[:-1], b"") if ends_clean else (lines[:-1], lines[-1])
    for number, raw in enumerate(body, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            validate_record(record)
        except (ValueError, RecordError) as exc:
            if not ends_clean or number < len(body):
                raise UserError(f"{path} is corrupt at line {number} ({exc}); fix or remove that line, "
                                "nothing else in the file was changed.") from None
            # a complete-looking last line that does not parse: treat like a truncated tail
            out.truncated_tail = raw.decode("utf-8", "replace")
            return out
        out.records.append(record)
    if tail.strip():
        try:
            record = json.loads(tail)
            validate_record(record)
            out.records.append(record)  # complete record, only the newline is missing
        except (ValueError, RecordError):
            out.truncated_tail = tail.decode("utf-8", "replace")
    return out


class ResultsFile:
    """Append-only results of one sweep directory."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / RESULTS_NAME

    def load(self) -> LoadReport:
        """Read what is there and repair an incomplete last line (kept in ``.partial``)."""
        report = read_results(self.path)
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

    def append(self, record: Mapping[str, Any]) -> None:
        validate_record(record)
        self.dir.mkdir(parents=True, exist_ok=True)
        line = dumps(record, indent=None) + "\n"
        with open(self.path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records from several sweep directories (or results files), in order."""
    records: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        path = p / RESULTS_NAME if p.is_dir() else p
        if not path.exists():
            raise UserError(f"no results found at {p} (expected {path}).")
        report = read_results(path)
        for r in report.records:
            r = dict(r)
            r["_source"] = str(path)
            records.append(r)
    return records


def results_frame(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Merge result directories from one or more machines into one DataFrame.

    One row per record; ``machine`` (the fingerprint, plus the node label of a cluster node) and
    ``device`` tell machines apart, so the same config measured on two machines stays two rows.
    """
    records = load_results(paths)
    df = records_frame(records)
    df["fingerprint_id"] = [r.get("env", {}).get("fingerprint_id") for r in records]
    df["key"] = [r.get("sweep", {}).get("key") for r in records]
    df["source"] = [r["_source"] for r in records]
    return df
