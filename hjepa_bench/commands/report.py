"""``hjepa-bench report``: the decision report (markdown, charts, configs) from result directories."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, output_path
from .common import add_decision_args, report_settings

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    rp = sub.add_parser("report", help="decision report (markdown, charts, configs) from result directories",
                        description="Render report.md from one or more sweep directories (merged): decision matrix "
                                    "with projections, recommendations, success criteria, checklist, charts.")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="sweep directories (or results.jsonl files)")
    rp.add_argument("--out", metavar="PATH", help="report path (default DIR/report.md for one directory, "
                                                   "else ./hjepa-bench-report/report.md)")
    rp.add_argument("--title", help="report title")
    rp.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    add_decision_args(rp)
    rp.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..measure.results import entry_models, load_results
    from ..options import own_config_options
    from ..report.markdown import write_report

    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not d.exists():
            raise UserError(f"{d} does not exist; give sweep directories (with results.jsonl) or results files.")
    out = Path(args.out) if args.out else (dirs[0] / "report.md" if len(dirs) == 1 and dirs[0].is_dir()
                                           else Path("hjepa-bench-report") / "report.md")
    if out.suffix != ".md":
        out = out / "report.md"
    output_path(out, "report")
    results = load_results(dirs, entry_models(plugins))
    for skipped in results.skipped:
        print(f"warning: {skipped}", file=sys.stderr)
    records = results.records
    if not records:
        raise UserError(f"no valid result records in {', '.join(map(str, dirs))}"
                        + (f" ({len(results.skipped)} line(s) skipped, see the warnings)." if results.skipped else "."))
    settings = report_settings(args, plugins, title=args.title or "hjepa-bench report")
    settings.options = own_config_options(records) + settings.options
    settings.sources = [str(d) for d in dirs]
    settings.skipped = [str(x) for x in results.skipped]
    settings.charts = not args.no_charts
    settings.command = "hjepa-bench " + " ".join(args.argv)
    analysis = write_report(records, out, settings, sections=plugins.report_sections())
    if analysis.get("replaced"):
        print(f"note: {analysis['replaced']}", file=sys.stderr)
    rec = [f"option {d['recommended']} on {d['machine']}" if d["recommended"] else f"no option on {d['machine']}"
           for d in analysis["decision"]["per_machine"]] or ["no option measured"]
    print(f"report: {out} ({len(records)} records; recommended: {'; '.join(rec)}; "
          f"{len(analysis['charts'])} charts; configs in {out.parent / 'configs'})")
    return 0
