"""``hjepa-bench analyze``: a log of the upstream trainer judged like a sweep (speed, loss, criteria, projections)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LOG_MAX_BYTES, UserError, input_file, output_path
from .common import (
    CONFIG_FLAGS,
    add_decision_args,
    config_flag,
    config_overrides,
    int_flag,
    positive_number,
    report_settings,
)

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    an = sub.add_parser("analyze",
                        help="analyse a log of the upstream H-JEPA trainer: speed, loss, criteria, projections",
                        description="Parse a training log written by the upstream trainer (tqdm bars joined by "
                                    "carriage returns, it/s or s/it, logging lines) and judge it like a sweep.")
    src = an.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", metavar="FILE", help="the training log")
    src.add_argument("--follow", metavar="FILE",
                     help="follow a log the trainer is still writing: progress, ETA with its band, stalls, drift and "
                          "loss, updated at most every --interval seconds, with a one-line warning when the guide "
                          "flags something; at the trainer's completion line, --stop-after-idle or Ctrl-C, the same "
                          "report as --log")
    f = an.add_argument_group("following a log (--follow)")
    f.add_argument("--interval", type=positive_number(3600), default=5.0, metavar="SECONDS",
                   help="update the status at most this often (default 5)")
    f.add_argument("--stop-after-idle", type=positive_number(), metavar="SECONDS",
                   help="end when the log has not grown for this long (default: wait for the trainer's completion "
                        "line or Ctrl-C)")
    an.add_argument("--out", metavar="DIR", help="write report.md and analysis.json here")
    an.add_argument("--config", metavar="YAML|PRESET",
                    help="the run's config (file or preset), for what the log does not print")
    an.add_argument("--model", help="encoder, if the log does not print it")
    an.add_argument("--batch-size", type=config_flag("data.batch_size"))
    an.add_argument("--workers", type=config_flag("data.num_workers"))
    an.add_argument("--hierarchies", type=config_flag("model.num_hierarchies"))
    an.add_argument("--predictor-depth", type=config_flag("model.predictor.depth"))
    an.add_argument("--img-size", type=config_flag("data.image_size"))
    an.add_argument("--epochs", type=config_flag("training.epochs"),
                    help="planned epochs, if the log does not print them")
    an.add_argument("--dataset-size", type=int_flag(1, 10**9),
                    help="training images per epoch (default: the log's, else 50,000)")
    add_decision_args(an)
    an.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace, plugins: Plugins) -> int:
    if args.out:
        output_path(args.out, "--out", folder=True)
    if args.follow:
        return _follow(args, plugins)
    return _analyze(args, plugins)


def _follow(args: argparse.Namespace, plugins: Plugins) -> int:
    """Follow the log until it ends, then write what ``analyze --log`` writes for it."""
    from ..analysis.log_parse import LogParseError
    from ..measure.log_follow import follow

    input_file(args.follow, "log file", LOG_MAX_BYTES)
    try:
        end = follow(args.follow, interval=args.interval, stop_after_idle=args.stop_after_idle,
                     budget_hours=args.budget_hours)
    except LogParseError as exc:
        raise UserError(f"{args.follow}: {exc}") from None
    print(f"follow: stopped: {end.reason}; the report of {args.follow} as it is now:")
    if end.rotated:
        print(f"note: the log was {' then '.join(end.rotated)} while it was followed; the report covers the file "
              f"{args.follow} holds now", file=sys.stderr)
    args.log = args.follow
    return _analyze(args, plugins)


def _analyze(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..analysis.report_data import build_analysis
    from ..measure.log_record import analyze_log_file
    from ..options import config_option
    from ..record import write_json
    from ..report.charts import log_charts
    from ..report.markdown import write_report
    from ..report.run_text import log_section, verdict_lines

    log = analyze_log_file(args.log, args.config, config_overrides(args), args.dataset_size)
    flag_of = {key: "--" + dest.replace("_", "-") for dest, key in CONFIG_FLAGS.items()}
    for key, (given, logged) in log.overridden.items():
        print(f"warning: {flag_of.get(key, '--dataset-size')} {given} is not used: the log shows the run used "
              f"{logged}", file=sys.stderr)
    settings = report_settings(args, plugins, title=f"hjepa-bench analysis of {Path(args.log).name}")
    if log.dataset_size:
        settings.thresholds = settings.thresholds.model_copy(update={"dataset_size": log.dataset_size})
    val_size = (log.result.get("info") or {}).get("val_dataset_size")
    if val_size:  # the run the log shows: its own validation set, not CIFAR-10's 10,000
        settings.thresholds = settings.thresholds.model_copy(update={"val_size": int(val_size)})
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
