"""Render pytest-benchmark JSON (``--benchmark-json`` / ``--benchmark-save``) as markdown:
median times of this run against a baseline (pure functions over the parsed JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from tabulate import tabulate

from ..errors import JSON_MAX_BYTES, UserError, read_text

IDENTITY_KEYS = ("devices", "torch", "timm", "size", "precision")


def load_benchmark_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = read_text(p, "benchmark file", JSON_MAX_BYTES)
    try:
        data = json.loads(text)
    except ValueError:
        raise UserError(f"{p} is not a pytest-benchmark JSON file (it does not parse as JSON).") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UserError(f"{p} is not a pytest-benchmark JSON file (no 'benchmarks' list).")
    return data


def identity_differences(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Which of device/chip, torch, timm, size, precision differ between two runs."""
    a = current.get("machine_info", {}).get("hjepa_bench", {})
    b = baseline.get("machine_info", {}).get("hjepa_bench", {})
    return [f"{k}: {a.get(k)!r} vs baseline {b.get(k)!r}" for k in IDENTITY_KEYS if a.get(k) != b.get(k)]


def _medians(data: Mapping[str, Any]) -> dict[str, float]:
    return {b["fullname"] if "fullname" in b else b["name"]: float(b["stats"]["median"])
            for b in data["benchmarks"] if b.get("stats")}


def benchmark_table(current: Mapping[str, Any], baseline: Mapping[str, Any] | None = None,
                    threshold: float = 0.10) -> str:
    """Markdown: median per benchmark, and against the baseline the change and a verdict."""
    now = _medians(current)
    base = _medians(baseline) if baseline else {}
    rows = []
    for name in sorted(now):
        short = name.split("::")[-1]
        row = [short, f"{now[name] * 1000:.2f}"]
        if baseline is not None:
            if name in base:
                change = now[name] / base[name] - 1.0
                verdict = "slower" if change > threshold else "faster" if change < -threshold else "same"
                row += [f"{base[name] * 1000:.2f}", f"{change:+.1%}", verdict]
            else:
                row += ["-", "-", "new"]
        rows.append(row)
    headers = ["benchmark", "median (ms)"]
    if baseline is not None:
        headers += ["baseline median (ms)", "change", f"verdict (±{threshold:.0%})"]
    info = current.get("machine_info", {}).get("hjepa_bench", {})
    devices = ", ".join(f"{k} ({v.get('device_name')})" for k, v in info.get("devices", {}).items()) or "?"
    head = (f"Measured by pytest-benchmark on {devices}, torch {info.get('torch', '?')}, "
            f"size {info.get('size', '?')}, {info.get('precision', '?')}"
            + (f", {current.get('datetime', '')}" if current.get("datetime") else "") + ".")
    if baseline is not None:
        head += f" Baseline: {baseline.get('datetime', '?')}."
    return head + "\n\n" + tabulate(rows, headers=headers, tablefmt="github")
