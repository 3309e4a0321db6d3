"""``hjepa-bench analyze``: a log of the upstream trainer judged like a sweep (speed, loss, criteria, projections)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..analysis.decision import build_analysis
from ..errors import output_path
from ..measure.loganalysis import analyze_log_file
from ..options import config_option
from ..plugin.manager import Plugins
from ..record import write_json
from ..report.charts import log_charts
from ..report.decision import write_report
from ..report.summary import log_section, verdict_lines
from .common import CONFIG_FLAGS, add_decision_args, config_flag, config_overrides, int_flag, report_settings


def add_parser(sub: Any) -> None:
    an = sub.add_parser("analyze", help="analyse a log of the upstream H-JEPA trainer: speed, loss, criteria, projections",
                        description="Parse a training log written by the upstream trainer (tqdm bars joined by "
                                    "carriage returns, it/s or s/it, logging lines) and judge it like a sweep.")
    an.add_argument("--log", required=True, metavar="FILE", help="the training log")
    an.add_argument("--out", metavar="DIR", help="write report.md and analysis.json here")
    an.add_argument("--config", metavar="YAML|PRESET", help="the run's config (file or preset), for what the log does not print")
    an.add_argument("--model", help="encoder, if the log does not print it")
    an.add_argument("--batch-size", type=config_flag("data.batch_size"))
    an.add_argument("--workers", type=config_flag("data.num_workers"))
    an.add_argument("--hierarchies", type=config_flag("model.num_hierarchies"))
    an.add_argument("--predictor-depth", type=config_flag("model.predictor.depth"))
    an.add_argument("--img-size", type=config_flag("data.image_size"))
    an.add_argument("--epochs", type=config_flag("training.epochs"), help="planned epochs, if the log does not print them")
    an.add_argument("--dataset-size", type=int_flag(1, 10**9),
                    help="training images per epoch (default: the log's, else 50,000)")
    add_decision_args(an)
    an.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace, plugins: Plugins) -> int:
    if args.out:
        output_path(args.out, "--out", folder=True)
    log = analyze_log_file(args.log, args.config, config_overrides(args), args.dataset_size)
    flag_of = {key: "--" + dest.replace("_", "-") for dest, key in CONFIG_FLAGS.items()}
    for key, (given, logged) in log.overridden.items():
        print(f"warning: {flag_of.get(key, '--dataset-size')} {given} is not used: the log shows the run used "
              f"{logged}", file=sys.stderr)
    settings = report_settings(args, title=f"hjepa-bench analysis of {Path(args.log).name}")
    if log.dataset_size:
        settings.thresholds = replace(settings.thresholds, dataset_size=log.dataset_size)
    settings.options = [config_option(log.values, "L", f"the logged config for {log.values['training']['epochs']} "
                                                       "epochs")] + settings.options
    settings.sources = [str(args.log)]
    section = log_section(log.result)
    print(section.split("\n\n")[0])
    if args.out:
        out = Path(args.out)
        analysis = write_report([log.record], out / "report.md", settings, facts=log.facts, chart_records=[],
                                intro=[f"Analysis of `{args.log}`, a log written by the upstream H-JEPA trainer."],
                                extra=[("Training log", section)],
                                charts_extra=lambda d: log_charts(log.result, d))
        write_json(log.payload(analysis), out / "analysis.json")
        print(verdict_lines(analysis))
        print(f"report: {out / 'report.md'}\nanalysis: {out / 'analysis.json'}")
    else:
        print(verdict_lines(build_analysis([log.record], settings, log.facts)))
    if log.result.get("stopped_at"):
        print(f"note: parsing stopped at {log.result['stopped_at']}", file=sys.stderr)
    return 0
