"""Markdown rendering of result records (report sections come from plugins)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..plugin.api import ReportSection


def record_label(record: Mapping[str, Any]) -> dict[str, Any]:
    """The columns that identify a record in a probe's report table."""
    c, env = record.get("config", {}) or {}, record.get("env", {}) or {}
    return {
        "device": env.get("device_name") or env.get("backend"),
        "model": str((c.get("model") or {}).get("encoder_type") or "").replace("_patch16_224", ""),
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
            "device": env.get("device_name") or env.get("backend"),
            "backend": env.get("backend"),
            "model": c.get("model", {}).get("encoder_type", "").replace("_patch16_224", ""),
            "levels": c.get("model", {}).get("num_hierarchies"),
            "pred_depth": c.get("model", {}).get("predictor", {}).get("depth"),
            "variant": c.get("bench", {}).get("variant"),
            "precision": c.get("bench", {}).get("precision"),
            "img": c.get("data", {}).get("image_size"),
            "batch": c.get("data", {}).get("batch_size"),
            "workers": c.get("data", {}).get("num_workers"),
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


def render_report(records: Sequence[Mapping[str, Any]], sections: Sequence[ReportSection],
                  title: str = "hjepa-bench report") -> str:
    parts = [f"# {title}", ""]
    for section in sections:
        body = section.render(records)
        if body:
            parts += [f"## {section.title or section.name}", "", body.rstrip(), ""]
    return "\n".join(parts)
