"""The probes asked about records (pure: records in, records and facts out).

A probe judges its measurements when the run ends, with the default thresholds: a run has no
``--thresholds``.  It stores the raw numbers it judged (CV and drift, loss windows, memory
trace and headroom, time shares and CPU load, feature metrics and the training steps behind
them).  A report may use other thresholds (``--thresholds FILE``), so before anything is
judged or rendered, :func:`rejudge_records` asks each probe to judge its entry again
(:meth:`hjepa_bench.plugin.api.Probe.judge`, the same pure judge functions the probes call at
run time), with the report's thresholds, on copies of the records.  The probe sections, the
decision matrix, the criteria and the checklist then all read one set of verdicts, so no report
contradicts itself.  Judging twice with the same thresholds gives the same record.

An entry is judged again only when it holds what its judge needs (a validation run's or a
training log's shorter entries are left as they are), and only when the probe ran ok.

The probes are a mapping name -> :class:`~hjepa_bench.plugin.api.Probe`, each asked about the
entry stored under its name; None means the registered probes
(:func:`hjepa_bench.plugin.manager.registered_probes`).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from ..plugin.api import FactVerdict, Probe
from ..plugin.manager import registered_probes
from ..thresholds import Thresholds

Probes = Mapping[str, Probe]


def probes_or_registered(probes: Probes | None) -> Probes:
    """``probes``, or the registered probes when None."""
    return registered_probes() if probes is None else probes


def ok_entries(record: Mapping[str, Any], probes: Probes | None = None) -> list[tuple[Probe, Mapping[str, Any]]]:
    """(probe, its entry) for every probe of ``probes`` whose entry in ``record`` ran ok."""
    entries = record.get("probes")
    if not isinstance(entries, Mapping):
        return []
    out = []
    for name, p in probes_or_registered(probes).items():
        entry = entries.get(name)
        if isinstance(entry, Mapping) and entry.get("status", "ok") == "ok":
            out.append((p, entry))
    return out


def rejudge_record(record: Mapping[str, Any], th: Thresholds, probes: Probes | None = None) -> dict[str, Any]:
    """A copy of ``record`` whose probe entries are judged with ``th`` by their probes."""
    out = dict(record)
    if not isinstance(record.get("probes"), Mapping):
        return out
    judged = dict(record["probes"])
    for name, p in probes_or_registered(probes).items():
        entry = judged.get(name)
        if isinstance(entry, Mapping) and entry.get("status", "ok") == "ok":
            judged[name] = p.judge(copy.deepcopy(dict(entry)), th, record)
    out["probes"] = judged
    return out


def rejudge_records(records: Sequence[Any], th: Thresholds, probes: Probes | None = None) -> list[Any]:
    """:func:`rejudge_record` of every record (anything that is not a mapping is kept as it is)."""
    probes = probes_or_registered(probes)
    return [rejudge_record(r, th, probes) if isinstance(r, Mapping) else r for r in records]


def probe_facts(record: Mapping[str, Any], probes: Probes | None = None) -> dict[str, Any]:
    """Every fact the probes' ok entries of ``record`` measured (:meth:`Probe.facts`), by name."""
    out: dict[str, Any] = {}
    for p, entry in ok_entries(record, probes):
        out.update(p.facts(entry, record))
    return out


def probe_verdicts(record: Mapping[str, Any], th: Thresholds, probes: Probes | None = None) -> list[dict[str, Any]]:
    """The checklist verdicts the probes judge themselves (:meth:`Probe.verdicts`), as plain data:
    ``{"criterion", "fact" ("PROBE.fact"), "name", "status", "evidence", "value"}``."""
    out = []
    for p, entry in ok_entries(record, probes):
        for v in p.verdicts(entry, th):
            if not isinstance(v, FactVerdict):
                raise TypeError(f"probe {p.name}'s verdicts() gave {v!r:.60}, which is not a FactVerdict")
            out.append({"criterion": v.criterion, "fact": f"{p.name}.{v.fact}", "name": v.name, "status": v.status,
                        "evidence": v.evidence, "value": v.value})
    return out


def advise_record(record: Mapping[str, Any], advice: Mapping[str, str],
                  probes: Probes | None = None) -> Mapping[str, Any]:
    """``record`` with each ok probe entry as its probe shows it with the report's ``advice``
    (:meth:`Probe.advise`); the record itself when no entry changes."""
    entries = record.get("probes")
    if not isinstance(entries, Mapping) or not advice:
        return record
    changed = dict(entries)
    for name, p in probes_or_registered(probes).items():
        entry = entries.get(name)
        if isinstance(entry, Mapping) and entry.get("status", "ok") == "ok":
            changed[name] = p.advise(entry, advice)
    if all(changed[k] is entries[k] for k in entries):
        return record
    return {**record, "probes": changed}
