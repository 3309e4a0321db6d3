"""``hjepa-bench benchmark-report``: pytest-benchmark JSON as a markdown table against a baseline."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, output_path
from .common import positive_number

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    br = sub.add_parser("benchmark-report", help="render pytest-benchmark JSON as a markdown table against a baseline")
    br.add_argument("current", metavar="RUN.json", help="pytest-benchmark JSON (--benchmark-json or a saved run)")
    br.add_argument("--baseline", metavar="BASE.json", help="saved baseline to compare against")
    br.add_argument("--threshold", type=positive_number(), default=10.0, metavar="PERCENT",
                    help="change that counts as slower/faster (default 10)")
    br.add_argument("--allow-other-machine", action="store_true",
                    help="compare even if device, torch, timm, size or precision differ")
    br.add_argument("--out", metavar="PATH", help="write the markdown here instead of printing it")
    br.set_defaults(func=cmd_benchmark_report)


def cmd_benchmark_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..report.benchmarks import benchmark_table, identity_differences, load_benchmark_json

    if args.out:
        output_path(args.out, "--out")
    current = load_benchmark_json(args.current)
    baseline = load_benchmark_json(args.baseline) if args.baseline else None
    if baseline is not None:
        diff = identity_differences(current, baseline)
        if diff and not args.allow_other_machine:
            raise UserError(f"the baseline was measured on another machine or software stack ({'; '.join(diff)}); "
                            "pass --allow-other-machine to compare anyway.")
    text = "# Step benchmarks\n\n" + benchmark_table(current, baseline, args.threshold / 100.0) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")
    else:
        print(text)
    return 0
