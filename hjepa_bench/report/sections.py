"""Markdown rendering of result records: the report from its sections (which come from plugins),
and ``probe_table``, the table a probe's section is made of."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PLUGIN_FAILURES, first_line
from ..plugin.api import ReportSection
from ..record import probe, record_label

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd


def render_report(records: Sequence[Mapping[str, Any]], sections: Sequence[ReportSection],
                  title: str = "hjepa-bench report") -> str:
    """The sections in order.  A section whose ``render`` raises or returns something other than
    text shows "section NAME failed: ..." in its place (and a warning on stderr); the rest renders."""
    parts = [f"# {title}", ""]
    for section in sections:
        try:
            body = section.render(records)
            if body is not None and not isinstance(body, str):
                raise TypeError(f"render() returned a {type(body).__name__}, not markdown text")
        except PLUGIN_FAILURES as exc:  # a plugin's section must not break the report
            body = f"section {section.name} failed: {type(exc).__name__}: {first_line(exc, 300)}"
            print(f"warning: report {body}; the rest of the report is complete", file=sys.stderr)
        if body:
            parts += [f"## {section.title or section.name}", "", body.rstrip(), ""]
    return "\n".join(parts)


def frame_markdown(frame: pd.DataFrame, floatfmt: str = ".2f", dash: str = "-") -> str:
    """A DataFrame as a markdown table whose missing cells (None, NaN: not measured) read ``dash``,
    never "nan"."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=floatfmt,
                                                                        missingval=dash)


def probe_table(records: Iterable[Mapping[str, Any]], name: str,
                row_fn: Callable[[Mapping[str, Any]], Mapping[str, Any] | None], note: str = "", *,
                label: Callable[[Mapping[str, Any]], dict[str, Any]] = record_label, failed: str | None = "result",
                fill: str | None = None) -> str | None:
    """A probe's report section: one table row per record that has a ``probes.NAME`` entry, the
    record's ``label`` columns first, then ``row_fn(entry)`` (None leaves the record out), and
    ``note`` under the table; None when no record has a row.

    A failed entry (status other than ok) gets ``probe <status>: <error>`` in the ``failed`` column;
    ``failed=None`` leaves every entry whose status is not ok out.  ``fill`` replaces empty cells."""
    rows = []
    for r in records:
        entry = probe(r, name)
        if not entry:
            continue
        if failed is None and entry.get("status") != "ok":
            continue
        row = label(r)
        if entry.get("status") not in (None, "ok"):
            row[failed] = f"probe {entry.get('status')}: {entry.get('error', '')}"
        else:
            cells = row_fn(entry)
            if cells is None:
                continue
            row.update(cells)
        rows.append(row)
    if not rows:
        return None
    import pandas as pd

    frame = pd.DataFrame(rows)
    if fill is not None:
        frame = frame.astype(object).fillna(fill)
    table = frame.to_markdown(index=False)
    return table + "\n\n" + note if note else table


def judged_threshold(records: Iterable[Mapping[str, Any]], name: str, key: str, default: float) -> float:
    """The threshold ``key`` that the records' ``probes.NAME`` entries were judged with (their
    ``thresholds``; a report judges the entries again with its own), else ``default``: what a
    section's note prints, so the note matches the verdicts in its table."""
    for r in records:
        e = probe(r, name)
        if isinstance(e, Mapping) and isinstance(e.get("thresholds"), Mapping) and e["thresholds"].get(key) is not None:
            return float(e["thresholds"][key])
    return default


class ProbeTable(ReportSection):
    """A probe's report section that is one :func:`probe_table`: a subclass sets ``name`` (the
    probe's), ``title``, ``order`` and ``note``, and writes ``row(entry)``."""

    note: str = ""
    failed: str | None = "result"  # the column of a failed entry's error (None: leave them out)
    fill: str | None = None

    def row(self, entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
        raise NotImplementedError

    def label(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return record_label(record)

    def note_for(self, records: Sequence[Mapping[str, Any]]) -> str:
        """The note under the table (a subclass fills in the thresholds the entries were judged with,
        :func:`judged_threshold`)."""
        return self.note

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        records = list(records)
        return probe_table(records, self.name, self.row, self.note_for(records), label=self.label,
                           failed=self.failed, fill=self.fill)
