"""Markdown rendering of result records (report sections come from plugins)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..plugin.api import ReportSection


def render_report(records: Sequence[Mapping[str, Any]], sections: Sequence[ReportSection],
                  title: str = "hjepa-bench report") -> str:
    parts = [f"# {title}", ""]
    for section in sections:
        body = section.render(records)
        if body:
            parts += [f"## {section.title or section.name}", "", body.rstrip(), ""]
    return "\n".join(parts)
