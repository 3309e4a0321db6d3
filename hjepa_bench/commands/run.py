"""``hjepa-bench run``: measure one configuration and print a summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import resolve_precision
from ..errors import UserError, output_path
from ..format import fmt_ms
from ..thresholds import DEFAULTS as THRESHOLDS
from .common import (
    add_config_args,
    add_data_args,
    add_measuring_args,
    add_probe_args,
    config_flag,
    config_label,
    fill_dataset_sizes,
    int_flag,
    load_config,
    positive_number,
)

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="measure one configuration and print a summary",
                         description="Run the real H-JEPA training step and measure it.")
    add_config_args(run)
    run.add_argument("--device", default="auto", help="cpu | cuda | mps | auto (default: cuda, then mps, then cpu)")
    run.add_argument("--workload", help="registered workload to time (default hjepa)")
    add_data_args(run)
    s = run.add_argument_group("measurement")
    add_measuring_args(s)
    s.add_argument("--target-precision", type=config_flag("bench.target_rel_precision"), metavar="FRAC",
                   help="stop when the median step time is known to +-FRAC (95%% CI), default 0.02")
    add_probe_args(run)
    d = run.add_argument_group("data parallel (DDP through torchrun; docs/distributed.md)")
    d.add_argument("--nproc-per-node", type=config_flag("bench.nproc_per_node"), metavar="N",
                   help="run the step as a data-parallel job of N processes on this node (default 1: one process, "
                        "no torchrun)")
    d.add_argument("--nnodes", type=int_flag(1, 4096), default=1, metavar="M",
                   help="nodes of the job (default 1); run the same command on each node with its --node-rank")
    d.add_argument("--node-rank", type=int_flag(0, 4095), default=0, metavar="R", help="this node (0 hosts rank 0)")
    d.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address, for jobs over several nodes")
    d.add_argument("--timeout", type=positive_number(), metavar="SECONDS",
                   help="wall-clock limit of a data-parallel job, start-up included (default 120 + 6 x max-time); "
                        "torchrun and every rank are stopped at it")
    run.add_argument("--trace-dir", metavar="DIR", default="hjepa-bench-traces",
                     help="where the profiler writes traces (default ./hjepa-bench-traces)")
    run.add_argument("--json", metavar="PATH", help="write the result record (JSON) here")
    run.add_argument("--report", metavar="PATH", help="write a markdown report here")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="show the output third-party libraries write while probes run (e.g. the profiler's "
                          "kineto lines) in full, instead of a one-line count")
    run.set_defaults(func=cmd_run)


class _Console:
    """What ``run`` prints on stderr before the measurement: lines held back until the workload is ready
    (so that a setup error stays one sentence), then the live progress line.  ``quiet``: nothing."""

    def __init__(self, pending: list[str], quiet: bool) -> None:
        self.pending = pending
        self.quiet = quiet

    def flush(self) -> None:
        while self.pending and not self.quiet:
            print(self.pending.pop(0), file=sys.stderr)

    def progress(self, p: dict[str, Any]) -> None:
        if not self.quiet:
            self.flush()
            med = p["median_step_s"]
            print(f"\r  measured {p['steps']} steps in {p['elapsed_s']:.1f} s, median step {fmt_ms(med)}"
                  f" (caps: {p['max_steps']} steps, {p['max_time_s']:.0f} s)   ", end="", file=sys.stderr, flush=True)


def _run_data_parallel(args: argparse.Namespace, values: dict[str, Any], env: dict[str, Any], backend: Any,
                       warnings: list[str], launch: Any, console: _Console) -> dict[str, Any] | None:
    """The run as a data-parallel job through torchrun: the job's record, or None on a node other than 0."""
    from ..measure.ddp import ddp_unsupported, default_timeout, run_job
    from ..plugin.manager import probe_names

    why = ddp_unsupported(backend, launch.nproc_per_node)
    if why:
        raise UserError(f"--nproc-per-node {launch.nproc_per_node} on {backend.name}: {why}.")
    console.pending[-1] += (f", a data-parallel job of {launch.world_size} ranks"
                            + (f" ({launch.nproc_per_node} on node {launch.node_rank} of {launch.nnodes})"
                               if launch.nnodes > 1 else "") + " through torchrun")
    console.flush()
    record = run_job(values, env, device=backend.name, plugin_args=args.plugins,
                     probes=probe_names(args.probes, args.profile), warnings=warnings, launch=launch,
                     timeout_s=args.timeout or default_timeout(values["bench"]["max_time_s"]),
                     artifacts_dir=args.trace_dir)
    if record is None and not args.quiet:
        print(f"node {launch.node_rank} of {launch.nnodes}: its {launch.nproc_per_node} rank(s) finished; "
              "the job's record is written by node 0 (rank 0)")
    return record


def _write_outputs(args: argparse.Namespace, record: dict[str, Any], plugins: Plugins) -> None:
    """The record as JSON (``--json``) and as a markdown report (``--report``)."""
    from ..record import write_json
    from ..report.sections import render_report

    if args.json:
        write_json(record, args.json)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(render_report([record], plugins.report_sections()))


def _print_outcome(args: argparse.Namespace, record: dict[str, Any], plugins: Plugins) -> None:
    """The libraries' output, the summary, the own-config projection and where the files went."""
    from ..analysis.projection import own_config_line, own_config_projection
    from ..measure.quiet import report_library_output
    from ..report.run_text import summary_text

    if args.verbose or not args.quiet:
        report_library_output(record.get("probes") or {}, verbose=args.verbose)
    if not args.quiet:
        print(summary_text(record, plugins.probes()))
        if record["status"] == "ok":
            print(own_config_line(own_config_projection(
                record, default_train=THRESHOLDS.dataset_size, default_val=THRESHOLDS.val_size,
                val_every_epochs=THRESHOLDS.val_every_epochs, confidence=THRESHOLDS.confidence)))
        if args.json:
            print(f"record written to {args.json}")
        if args.report:
            print(f"report written to {args.report}")


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..measure.ddp import Launch, check_launch
    from ..measure.env import environment_fingerprint
    from ..measure.runner import run_benchmark
    from ..plugin.manager import probe_names, select_backend

    for path, what in ((args.json, "--json"), (args.report, "--report")):
        if path:
            output_path(path, what)
    backend = select_backend(plugins, args.device)
    rc = load_config(args, quiet=True)  # warnings are printed once the run has started
    values = rc.values
    fill_dataset_sizes(values)
    workload = plugins.workload(values["bench"]["workload"])
    values["bench"]["precision"] = resolve_precision(values, backend.name)
    values["bench"]["device"] = backend.name
    probes = plugins.select_probes(probe_names(args.probes, args.profile))
    if probes:  # probes keep their files (profiler traces, checkpoint timings) there
        output_path(args.trace_dir, "--trace-dir", folder=True)
    env = environment_fingerprint(backend)

    # Printed once the workload is ready, so that a setup error stays one sentence.
    console = _Console([f"warning: {w}" for w in rc.warnings()]
                       + [f"hjepa-bench run: {config_label(values)} on {backend.name}"], args.quiet)
    launch = Launch(int(values["bench"]["nproc_per_node"]), args.nnodes, args.node_rank, args.rdzv_endpoint)
    check_launch(launch)
    if launch.world_size > 1:
        record = _run_data_parallel(args, values, env, backend, rc.warnings(), launch, console)
        if record is None:
            return 0
    else:
        record = run_benchmark(values, backend, workload, probes, env, warnings=rc.warnings(),
                               progress=console.progress, artifacts_dir=args.trace_dir)
    console.flush()
    if not args.quiet:
        print(file=sys.stderr)
    _write_outputs(args, record, plugins)
    _print_outcome(args, record, plugins)
    if record["status"] != "ok":  # on stderr even with -q: exit 1 never goes without a word
        print(f"hjepa-bench run: status {record['status']}: {record.get('error') or 'no error message'}",
              file=sys.stderr)
    return 0 if record["status"] == "ok" else 1
