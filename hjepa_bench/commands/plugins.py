"""``hjepa-bench plugins``: loaded plugins, where they came from, and their hooks."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import print_json

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    plg = sub.add_parser("plugins", help="loaded plugins, where they came from, and their hooks")
    plg.add_argument("--json", action="store_true")
    plg.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace, plugins: Plugins) -> int:
    from tabulate import tabulate

    infos = plugins.describe()
    if args.json:
        print_json([vars(i) for i in infos])
        return 0
    rows = [[i.name, i.module, i.origin, ", ".join(h.replace("hjepa_bench_", "") for h in i.hooks),
             "; ".join(f"{k}: {', '.join(v)}" for k, v in i.provides.items()),
             "ok" if i.error is None else f"disabled ({i.error})"] for i in infos]
    print(tabulate(rows, headers=["plugin", "module", "from", "hooks", "provides", "status"]))
    return 0
