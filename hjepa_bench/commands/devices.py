"""``hjepa-bench devices``: which backends are available here, and why not."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..format import fmt_bytes
from .common import print_json

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("devices", help="which backends are available here, and why not")
    dev.add_argument("--json", action="store_true")
    dev.set_defaults(func=cmd_devices)


def cmd_devices(args: argparse.Namespace, plugins: Plugins) -> int:
    from tabulate import tabulate

    from ..plugin.manager import auto_order

    rows = []
    for name, backend in sorted(plugins.backends().items()):
        av = backend.availability()
        row: dict[str, Any] = {"name": name, "available": av.available, "reason": av.reason}
        if av.available:
            fp = backend.fingerprint()
            mem = backend.memory()
            row.update({"device_name": fp.get("device_name"), "total_bytes": mem.total_bytes,
                        "precisions": {k: (v or "ok") for k, v in backend.supported_precisions().items()},
                        "device_events": backend.has_device_events(), "memory_source": mem.source})
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    table = []
    for r in rows:
        prec = ", ".join(k for k, v in (r.get("precisions") or {}).items() if v == "ok") or "-"
        table.append([r["name"], "yes" if r["available"] else "no", r.get("device_name") or "-",
                      fmt_bytes(r.get("total_bytes")) if r["available"] else "-", prec, r["reason"] or ""])
    print(tabulate(table, headers=["device", "available", "name", "memory", "precisions", "why not"]))
    auto = next(iter(auto_order(r["name"] for r in rows if r["available"])), None)
    print(f"--device auto picks: {auto}")
    return 0
