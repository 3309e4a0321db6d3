"""``hjepa-bench sweep``: a grid of configs, each in its own process, resumable; then the decision report."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_SWEEP_OUT
from ..errors import UserError, output_path
from ..plugin.api import EXECUTOR_GROUP
from .common import (
    add_data_args,
    add_decision_args,
    add_measuring_args,
    add_probe_args,
    config_flag,
    fill_dataset_sizes,
    list_flag,
    positive_number,
    report_settings,
)

if TYPE_CHECKING:
    from ..plugin.api import Executor
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    sw = sub.add_parser("sweep", help="measure a grid of configs, each in its own process (resumable)",
                        description="Measure a grid of configs. Every config runs in its own child process; "
                                    "results are appended to OUT/results.jsonl as each finishes, and running the "
                                    "same command again (or with --resume) runs only what is missing.")
    sw.add_argument("--device", type=list_flag(), help="device or list: cpu,mps,cuda,auto (default auto)")
    sw.add_argument("--models", type=list_flag(), help="e.g. vit_tiny,vit_small,vit_base (default vit_tiny)")
    sw.add_argument("--batch-sizes", type=list_flag(int), help="e.g. 24,32,48,64 (default 16,32)")
    sw.add_argument("--workers", type=list_flag(int),
                    help="DataLoader workers, e.g. 2,4,6,8 (default 2,4, none above the cores available)")
    sw.add_argument("--hierarchies", type=list_flag(int), help="hierarchy levels, e.g. 2,3")
    sw.add_argument("--predictor-depths", type=list_flag(int), help="e.g. 2,4,6")
    sw.add_argument("--variants", type=list_flag(), help="reference,efficient (default reference)")
    sw.add_argument("--precisions", type=list_flag(), help="fp32,fp16,bf16 (default: auto per device)")
    sw.add_argument("--img-size", type=list_flag(int), help="image size or list, e.g. 224 or 128,224")
    sw.add_argument("--nproc-per-node", type=list_flag(int), metavar="LIST",
                    help="processes per config, e.g. 1,2: above 1 the config runs as a data-parallel job (DDP "
                         "through torchrun) and the report gets a scaling table (default 1)")
    sw.add_argument("--encoder-depth", type=config_flag("model.encoder_depth"), help="ViT blocks (default 12)")
    sw.add_argument("--config", metavar="YAML|PRESET",
                    help="upstream YAML file or preset name: the base of every point")
    sw.add_argument("--grid", metavar="YAML",
                    help="grid file (keys as SweepSpec: devices, batch_sizes, ...); flags override it")
    sw.add_argument("--out", metavar="DIR", help=f"results directory (default ./{DEFAULT_SWEEP_OUT})")
    sw.add_argument("--resume", action="store_true", help="continue the sweep in --out (the same --out does too)")
    sw.add_argument("--retry", type=list_flag(), metavar="STATUSES",
                    help="run the configs recorded in --out with these outcomes again, in place, with the limits "
                         "given now: timeout, error, oom, crashed, diverged, skipped, unsupported, or short (measured "
                         "fewer steps than its minimum), e.g. --retry timeout,short --max-time 120")
    sw.add_argument("--workload", help="registered workload to time (default hjepa)")
    add_data_args(sw)
    b = sw.add_argument_group("per-config budgets")
    add_measuring_args(b)
    b.add_argument("--timeout", type=positive_number(), metavar="SECONDS",
                   help="a fixed wall-clock limit per config, start-up included (default: none fixed; a config "
                        "has 120 + 6 x max-time seconds to warm up, then what its step time and --min-steps need)")
    b.add_argument("--no-skip-after-oom", action="store_true",
                   help="also run larger batches of a model after it ran out of memory")
    add_probe_args(sw)
    sw.add_argument("--options", type=list_flag(), metavar="LIST",
                    help="decision-matrix options whose model config is also measured at 224 px: A,B,C, all "
                         "(default) or none")
    add_decision_args(sw)
    ex = sw.add_argument_group(EXECUTOR_GROUP)  # an executor's plugin adds its own flags here
    ex.add_argument("--executor", default="local", metavar="NAME",
                    help="local (default: one config at a time in a child process on this machine), ray (each "
                         "config a Ray task, on every node of a Ray cluster), or one a plugin registers")
    sw.add_argument("--progress", choices=["bar", "quiet", "jsonl"], default="bar",
                    help="bar (default), quiet, or jsonl (one JSON event per line on stdout)")
    sw.add_argument("-q", "--quiet", action="store_true", help="same as --progress quiet")
    sw.set_defaults(func=cmd_sweep)


def _executor_options(args: argparse.Namespace, executor: Executor, plugins: Plugins) -> dict[str, Any]:
    """The values of ``executor``'s own flags (``Executor.options``: dests of flags its plugin added);
    one sentence for a flag of another executor."""
    flags: dict[str, str] = getattr(args, "plugin_flags", None) or {}
    of_executors = {o for e in plugins.executors().values() for o in e.options if o in flags}
    for dest in sorted(of_executors, key=list(flags).index):
        if getattr(args, dest, None) is not None and dest not in executor.options:
            takes = ", ".join(flags[o] for o in executor.options if o in flags) or "none"
            raise UserError(f"{flags[dest]} is not an option of the {executor.name} executor (it takes: {takes}).")
    return {dest: getattr(args, dest, None) for dest in executor.options}


def _fill_folder_sizes(spec: Any) -> None:
    """For CIFAR-10 from a folder without ``--dataset-size``: project on the folder's images."""
    if spec.data == "cifar10" and spec.data_path and spec.dataset_size is None:
        sizes = {"data": {}, "bench": {"data": "cifar10", "data_path": spec.data_path, "dataset_size": None,
                                       "val_size": spec.val_size}}
        fill_dataset_sizes(sizes)  # the projected run trains on the folder's images
        spec.dataset_size, spec.val_size = sizes["bench"]["dataset_size"], sizes["bench"]["val_size"]


def _sweep_report(args: argparse.Namespace, spec: Any, out: Path, summary: Mapping[str, Any], settings: Any,
                  plugins: Plugins) -> tuple[list[dict[str, Any]], dict[str, Any], set[str], bool]:
    """The decision report of everything in ``out``: (records, analysis, own-config option names, whether
    the report on disk was kept because nothing new was measured)."""
    from ..analysis.report_data import build_analysis
    from ..measure.results import entry_models, load_results
    from ..options import own_config_options
    from ..report.markdown import write_report

    results = load_results([out], entry_models(plugins))
    records = results.records
    report = out / "report.md"
    settings.sources = [str(out)]
    settings.skipped = [str(x) for x in results.skipped]
    own_options = own_config_options(records)
    own = {o.name for o in own_options}
    settings.options = own_options + settings.options
    settings.command = "hjepa-bench " + " ".join(args.argv)
    # a run that measured nothing new (everything recorded, or a retry that failed again) leaves the
    # report as it is: it may be one the user rendered with other settings
    measured_new = summary["ran"] > 0 and (not spec.retry or summary["counts"].get("ok", 0) > 0)
    kept = report.exists() and not measured_new
    if kept:
        analysis = build_analysis(records, settings)
    else:
        analysis = write_report(records, report, settings, sections=plugins.report_sections())
        if analysis.get("replaced"):
            print(f"note: {analysis['replaced']}", file=sys.stderr)
    return records, analysis, own, kept


def _print_sweep_summary(args: argparse.Namespace, spec: Any, out: Path, summary: Mapping[str, Any],
                         records: list[dict[str, Any]], analysis: Mapping[str, Any], own: set[str],
                         kept: bool) -> None:
    """The table, the counts, the verdicts, the own-config projections and where the files are."""
    from ..analysis.projection import own_config_line
    from ..measure.sweep import resume_command
    from ..report.run_text import sweep_table, verdict_lines

    report = out / "report.md"
    print(sweep_table(records))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) or "nothing new"
    print(f"\n{summary['ran']} configs run this time ({counts}), {summary['recorded_before']} already recorded; "
          f"{summary['elapsed_s']:.0f} s")
    if summary["not_run"]:
        print(f"{summary['not_run']} configs were not run (their node left the cluster); resume with:\n"
              f"  {resume_command(args.argv)}")
    if spec.retry and not summary["retried"]:
        print(f"nothing to retry: no config in {out} is recorded as {' or '.join(spec.retry)}")
    print(verdict_lines(analysis))
    for row in analysis["matrix"]:
        if row["option"] in own and row.get("projection"):
            print(f"{row['machine']} b{row['batch']} w{row['workers']}: {own_config_line(row['projection'])}")
    for line in more_time_lines(records, args.argv):
        print(line)
    print(f"results: {out / 'results.jsonl'}\nreport:  {report}"
          + (" (left as it was: nothing new was measured)" if kept else ""))


def cmd_sweep(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..measure.sweep import SweepSpec, install_sigterm_handler, resume_command, run_sweep, selected_options

    out = Path(args.out or DEFAULT_SWEEP_OUT)
    output_path(out, "--out", folder=True)
    spec = SweepSpec.from_flags(args)
    plugins.select_probes(spec.probes)  # an unknown probe name is an error before anything runs
    executor = plugins.executor(args.executor)
    options = _executor_options(args, executor, plugins)
    settings = report_settings(args, plugins, options_file=spec.options_file,
                               title="hjepa-bench sweep")  # bad files fail now
    _fill_folder_sizes(spec)
    selected_options(spec)
    if args.resume and not (out / "results.jsonl").exists():
        print(f"note: nothing to resume in {out}; starting a new sweep there", file=sys.stderr)
    mode = "quiet" if args.quiet else args.progress
    bar = SweepProgress(mode)
    install_sigterm_handler()
    try:
        summary = run_sweep(spec, out, plugins, args.plugins, on_event=bar, executor=executor.name,
                            executor_options=options)
    except KeyboardInterrupt:
        bar.close()
        print(f"\nhjepa-bench: sweep interrupted; every finished config is in {out / 'results.jsonl'} "
              f"and what was in flight was discarded. Resume with:\n  {resume_command(args.argv)}", file=sys.stderr)
        return 130
    bar.close()
    records, analysis, own, kept = _sweep_report(args, spec, out, summary, settings, plugins)
    if mode == "jsonl":
        print(json.dumps({"event": "end", **{k: v for k, v in summary.items() if k != "truncated_tail"},
                          "report": str(out / "report.md")}), flush=True)
    elif mode != "quiet":
        _print_sweep_summary(args, spec, out, summary, records, analysis, own, kept)
    return 0


def with_flags(argv: list[str], flags: dict[str, str]) -> str:
    """``argv`` as a command line with ``flags`` set (an earlier value of each is dropped)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in flags or name == "--resume":
            skip = "=" not in a and name != "--resume"
            continue
        out.append(a)
    for name, value in flags.items():
        out += [name, value]
    return "hjepa-bench " + " ".join(out)


def more_time_lines(records: list[dict[str, Any]], argv: list[str]) -> list[str]:
    """What the sweep still needs, plainly: the configs below their minimum steps and the time
    measuring them takes here (from their own step and start-up times), and the timed-out ones."""
    import re

    from ..analysis.policy import shortfall

    lines = []
    short = [(r, shortfall(r)) for r in records]
    short = [(r, s) for r, s in short if s is not None and s["max_time_s"]]
    if short:
        x = max(s["max_time_s"] for _, s in short)
        need = 0.0
        for r, _ in short:
            m = r.get("metrics") or {}
            startup = max(0.0, float(r.get("duration_s") or 0) - float(m.get("measured_time_s") or 0)
                          - float((m.get("warmup") or {}).get("time_s") or 0))
            need += startup + float((m.get("warmup") or {}).get("time_s") or 0) + x
        lines.append(f"{len(short)} config(s) measured fewer steps than their minimum, so nothing is projected or "
                     "judged from them "
                     f"({'; '.join(str((r.get('sweep') or {}).get('label')) + ': ' + s['text'] for r, s in short)}). "
                     f"Measuring them needs about {need / 60:.0f} more minute(s) here:\n"
                     f"  {with_flags(argv, {'--retry': 'short', '--max-time': str(x)})}")
    timed_out = [r for r in records if r.get("status") == "timeout"]
    if timed_out:
        limits = [float(m.group(1)) for r in timed_out for m in [re.search(r"after (\d+) s", str(r.get("error")))]
                  if m and "fixed --timeout" in str(r.get("error"))]  # (else the deadline follows the config)
        flags = {"--retry": "timeout"}
        if limits:
            flags["--timeout"] = str(int(2 * max(limits)))
        lines.append(f"{len(timed_out)} config(s) timed out (benchmark); run them again in place with:\n"
                     f"  {with_flags(argv, flags)}")
    return lines


class SweepProgress:
    """Sweep events -> a tqdm bar (bar), JSON lines on stdout (jsonl) or nothing (quiet)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.mode == "jsonl":
            print(json.dumps(event, default=str), flush=True)
            return
        if self.mode == "quiet":
            return
        kind = event["event"]
        if kind == "plan":
            if event["truncated_tail"]:
                print(f"warning: the last line of {event['out']}/results.jsonl was incomplete (the sweep was "
                      "killed while writing it); it was moved to results.jsonl.partial and its config runs again",
                      file=sys.stderr)
            where = f" on Ray nodes {', '.join(event['nodes'])}" if event.get("nodes") else ""
            print(f"sweep: {event['total']} configs{where}, {event['recorded']} already recorded in {event['out']}, "
                  f"{event['to_run']} to run" + (f" ({event['retry']} again, --retry)" if event.get("retry") else "")
                  + (f"; the {event['first']} that measure the options' own configs first"
                     if event.get("first") else "")
                  + "; the expected duration is printed once the first config is measured", file=sys.stderr)
            from tqdm import tqdm

            self.bar = tqdm(total=event["to_run"], file=sys.stderr, unit="config", dynamic_ncols=True,
                            bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} configs, {elapsed} elapsed {postfix}")
            self.bar.set_description_str("sweep")
        elif kind == "start" and self.bar is not None:
            eta = "ETA after the first config" if event["eta_s"] is None else f"ETA {event['eta_s'] / 60:.1f} min"
            self.bar.set_description_str(f"config {event['k']}/{event['n']}")
            self.bar.set_postfix_str(f"({eta}) now: {event['label']}")
        elif kind == "estimate" and self.bar is not None:
            import datetime as dt

            end = dt.datetime.now() + dt.timedelta(seconds=event["expected_s"])
            self.bar.write(f"  expected: about {event['expected_s'] / 60:.1f} min more for the {event['configs_left']} "
                           f"config(s) left (ETA {end:%H:%M}), scaled from {event['from']} (steps of "
                           f"{event['step_s']:.2f} s, start-up {event['startup_s']:.0f} s)")
        elif kind in ("dropped", "lost") and self.bar is not None:
            what = f"{event['label']}: not run" if kind == "dropped" else \
                f"node {event['node']} left: {event['not_run']} of its configs not run"
            self.bar.write(f"  {what} ({event['why']}); a resume runs them")
        elif kind == "done" and self.bar is not None:
            speed = "" if event["it_per_s"] is None else f" {event['it_per_s']:.2f} it/s"
            said = event["status"] if event["status"] != "timeout" else "timed out (benchmark)"
            error = str(event["error"] or "").removeprefix("timed out (benchmark): ")
            self.bar.write(f"  [{event['k']}/{event['n']}] {event['label']}: {said}{speed}"
                           + (f" ({error})" if error else ""))
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
