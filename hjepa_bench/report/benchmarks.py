"""Render pytest-benchmark JSON (``--benchmark-json`` / ``--benchmark-save``) as markdown:
median times of this run against a baseline (pure functions over the parsed JSON)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..errors import JSON_MAX_BYTES, UserError, read_text
from ..record import RecordError, check_json

IDENTITY_KEYS = ("devices", "torch", "timm", "size", "precision")


def _benchmark_problem(data: Any) -> str | None:
    """What keeps ``data`` from being a pytest-benchmark run this command can read, or None."""
    try:
        check_json(data, "the file")
    except RecordError as exc:
        return str(exc)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        return "no 'benchmarks' list"
    for i, b in enumerate(data["benchmarks"]):
        where = f"benchmarks[{i}]"
        if not isinstance(b, dict):
            return f"{where} is not an object"
        if not any(k in b for k in ("fullname", "name")) or any(
                k in b and not (isinstance(b[k], str) and b[k]) for k in ("fullname", "name")):
            return f"{where} has no name (name or fullname, text)"
        stats = b.get("stats")
        median = stats.get("median") if isinstance(stats, dict) else None
        if not isinstance(stats, dict):
            return f"{where}.stats is not an object"
        if isinstance(median, bool) or not isinstance(median, (int, float)) or not median > 0:
            return f"{where}.stats.median must be a time in seconds above 0, not {median!r:.40}"
    if "datetime" in data and not isinstance(data["datetime"], str):
        return "datetime is not text"
    info = data.get("machine_info", {})
    if not isinstance(info, dict):
        return "machine_info is not an object"
    ours = info.get("hjepa_bench", {})
    if not isinstance(ours, dict):
        return "machine_info.hjepa_bench is not an object"
    for key in IDENTITY_KEYS:
        value = ours.get(key)
        if key == "devices":
            if value is not None and not (isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())):
                return "machine_info.hjepa_bench.devices is not an object of devices"
        elif value is not None and not isinstance(value, str):
            return f"machine_info.hjepa_bench.{key} is not text"
    return None


def load_benchmark_json(path: str | Path) -> dict[str, Any]:
    """A pytest-benchmark run: a list of benchmarks, each named with a median time above zero, and
    the machine it ran on; anything else is a UserError naming what is wrong."""
    p = Path(path)
    text = read_text(p, "benchmark file", JSON_MAX_BYTES)
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{p} is not a pytest-benchmark JSON file (it nests too deep).") from None
    except ValueError:
        raise UserError(f"{p} is not a pytest-benchmark JSON file (it does not parse as JSON).") from None
    problem = _benchmark_problem(data)
    if problem:
        raise UserError(f"{p} is not a pytest-benchmark JSON file this command reads: {problem}.")
    return data


def identity_differences(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Which of device/chip, torch, timm, size, precision differ between two runs."""
    a = current.get("machine_info", {}).get("hjepa_bench", {})
    b = baseline.get("machine_info", {}).get("hjepa_bench", {})
    return [f"{k}: {a.get(k)!r} vs baseline {b.get(k)!r}" for k in IDENTITY_KEYS if a.get(k) != b.get(k)]


def _medians(data: Mapping[str, Any]) -> dict[str, float]:
    """Median seconds per benchmark (checked above zero by :func:`load_benchmark_json`)."""
    return {b["fullname"] if "fullname" in b else b["name"]: float(b["stats"]["median"]) for b in data["benchmarks"]}


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
