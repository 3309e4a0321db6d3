"""Command line: ``hjepa-bench {run,inspect,devices,plugins}``.

Bad input ends with one sentence on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .plugin.api import Backend
from .config import ResolvedConfig, resolve_config
from .errors import UserError
from .plugin.manager import Plugins, build_plugins
from .record import dumps, write_json
from .format import fmt_bytes, fmt_ms, fmt_pct
from .report.sections import render_report

AUTO_ORDER = ("cuda", "mps", "cpu")


# --------------------------------------------------------------------------- helpers
def select_backend(plugins: Plugins, name: str) -> Backend:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a UserError."""
    backends = plugins.backends()
    available = [n for n, b in backends.items() if b.availability().available]
    if name == "auto":
        for candidate in AUTO_ORDER + tuple(sorted(backends)):
            if candidate in available:
                return backends[candidate]
        raise UserError("no device is available (not even cpu).")
    if name not in backends:
        raise UserError(f"unknown device {name!r}; known devices: {', '.join(sorted(backends))} (or auto).")
    why = backends[name].availability()
    if not why.available:
        raise UserError(f"device {name} is not available ({why.reason.rstrip('.')}); available: {', '.join(available) or 'none'}.")
    return backends[name]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flags override the YAML file)")
    g.add_argument("--config", metavar="YAML", help="upstream H-JEPA YAML config (default: built-in quick_val)")
    g.add_argument("--model", help="vit_tiny | vit_small | vit_base | vit_large (or full timm names)")
    g.add_argument("--batch-size", type=_positive_int)
    g.add_argument("--workers", type=_positive_int, help="DataLoader worker processes")
    g.add_argument("--hierarchies", type=_positive_int, help="hierarchy levels (1-4)")
    g.add_argument("--predictor-depth", type=_positive_int)
    g.add_argument("--encoder-depth", type=_positive_int, help="ViT blocks (default 12; fewer for quick tests)")
    g.add_argument("--img-size", type=_positive_int, help="image size in pixels (multiple of 16)")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    g.add_argument("--variant", choices=["reference", "efficient"])
    g.add_argument("--seed", type=int)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model.encoder_type": args.model,
        "data.batch_size": args.batch_size,
        "data.num_workers": getattr(args, "workers", None),
        "model.num_hierarchies": args.hierarchies,
        "model.predictor.depth": args.predictor_depth,
        "model.encoder_depth": args.encoder_depth,
        "data.image_size": args.img_size,
        "bench.precision": args.precision,
        "bench.variant": args.variant,
        "seed": args.seed,
        "bench.workload": getattr(args, "workload", None),
        "bench.data": getattr(args, "data", None),
        "bench.data_path": getattr(args, "data_path", None),
        "bench.limit_samples": getattr(args, "limit_samples", None),
        "bench.persistent_workers": getattr(args, "persistent_workers", None),
        "bench.warmup_steps": getattr(args, "warmup_steps", None),
        "bench.min_steps": getattr(args, "min_steps", None),
        "bench.max_steps": getattr(args, "max_steps", None),
        "bench.max_time_s": getattr(args, "max_time", None),
        "bench.target_rel_precision": getattr(args, "target_precision", None),
    }


def load_config(args: argparse.Namespace, *, quiet: bool = False) -> ResolvedConfig:
    rc = resolve_config(args.config, config_overrides(args))
    if not quiet:
        for line in rc.warnings():
            print(f"warning: {line}", file=sys.stderr)
    return rc


def _print_json(data: Any) -> None:
    print(dumps(data))


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from .measure.env import environment_fingerprint
    from .measure.runner import run_benchmark

    backend = select_backend(plugins, args.device)
    rc = load_config(args, quiet=True)  # warnings are printed once the run has started
    values = rc.values
    workloads = plugins.workloads()
    wname = values["bench"]["workload"]
    if wname not in workloads:
        raise UserError(f"unknown workload {wname!r}; registered workloads: {', '.join(sorted(workloads))}.")
    from .config import resolve_precision

    values["bench"]["precision"] = resolve_precision(values, backend.name)
    values["bench"]["device"] = backend.name
    probes = plugins.select_probes(probe_names(args))
    env = environment_fingerprint(backend)

    # Printed once the workload is ready, so that a setup error stays one sentence.
    pending = [f"warning: {w}" for w in rc.warnings()] + [f"hjepa-bench run: {_label(values)} on {backend.name}"]

    def flush_pending() -> None:
        while pending and not args.quiet:
            print(pending.pop(0), file=sys.stderr)

    def progress(p: dict[str, Any]) -> None:
        if not args.quiet:
            flush_pending()
            med = p["median_step_s"]
            print(f"\r  measured {p['steps']} steps in {p['elapsed_s']:.1f} s, median step {fmt_ms(med)}"
                  f" (caps: {p['max_steps']} steps, {p['max_time_s']:.0f} s)   ", end="", file=sys.stderr, flush=True)

    record = run_benchmark(values, backend, workloads[wname], probes, env, warnings=rc.warnings(), progress=progress,
                           artifacts_dir=args.trace_dir)
    flush_pending()
    if not args.quiet:
        print(file=sys.stderr)
    if args.json:
        write_json(record, args.json)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(render_report([record], plugins.report_sections()))
    if not args.quiet:
        print(summary_text(record, plugins.probes()))
        if args.json:
            print(f"record written to {args.json}")
    return 0 if record["status"] == "ok" else 1


def probe_names(args: argparse.Namespace) -> list[str] | None:
    """--probes NAME,... | all | none, plus --profile (adds the profiler)."""
    names = None if args.probes is None else [n.strip() for n in args.probes.split(",") if n.strip()]
    if getattr(args, "profile", False):
        names = (names or ["cheap"]) + ["profiler"]
    return names


def _label(values: dict[str, Any]) -> str:
    m, d, b = values["model"], values["data"], values["bench"]
    return (f"{b['workload']} {b['variant']} | {m['encoder_type']} D={m['embed_dim']} depth {m['encoder_depth']} | "
            f"{m['num_hierarchies']} levels, predictor depth {m['predictor']['depth']} | batch {d['batch_size']} | "
            f"{d['image_size']} px | {d['num_workers']} workers | {b['precision']}")


def summary_text(record: dict[str, Any], probes: dict[str, Any] | None = None) -> str:
    m = record.get("metrics") or {}
    lines = [f"status: {record['status']}" + (f" ({record['error']})" if record.get("error") else "")]
    p = record.get("params") or {}
    if p.get("total"):
        lines.append(f"params: {p['total']:,} total / {p['trainable']:,} trainable")
    st = m.get("step_time_s") or {}
    if st.get("n"):
        warm = m.get("warmup", {})
        lines.append(f"measured: {st['n']} steps in {m['measured_time_s']:.1f} s (stopped: {m['stop_reason']}), "
                     f"after {warm.get('steps', 0)} warm-up steps in {warm.get('time_s', 0):.1f} s")
        lines.append(f"speed: {m['it_per_s']:.2f} it/s, {m['samples_per_s']:.1f} samples/s")
        cv = "n/a" if st.get("cv") is None else f"{st['cv'] * 100:.1f}%"
        lines.append(f"step time: median {fmt_ms(st['median'])}, IQR {fmt_ms(st['iqr'])}, CV {cv}, "
                     f"p10 {fmt_ms(st['p10'])}, p90 {fmt_ms(st['p90'])} ({m['timing_method']})")
        compute = "host work (includes the compute on cpu)" if record["env"].get("backend") == "cpu" else "host work"
        lines.append(f"time split: data wait {fmt_pct(m['data_wait_frac'])}, {compute} {fmt_pct(m['host_frac'])}")
        source = (m.get("memory_source") or "").split(";")[0]
        lines.append(f"memory: peak {fmt_bytes(m['peak_device_bytes'])} ({source}), "
                     f"device total {fmt_bytes(m['device_total_bytes'])}")
        if m.get("loss_first") is not None:
            lines.append(f"loss: {m['loss_first']:.4g} (first measured step) -> {m['loss_last']:.4g} (last)")
        for w in m.get("warnings", []):
            lines.append(f"warning: {w}")
    for name, entry in (record.get("probes") or {}).items():
        probe = (probes or {}).get(name)
        if entry.get("status") == "failed":
            text = f"failed ({entry.get('error')})"
        else:
            try:
                text = probe.summarize(entry) if probe is not None else None
            except Exception:  # noqa: BLE001 - a summary line never hides the record
                text = None
            text = text or "ok (details in the JSON record)"
        lines.append(f"probe {name}: {text}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace, plugins: Plugins) -> int:
    from .hjepa.inspection import inspect_config

    rc = load_config(args, quiet=args.json)
    info = inspect_config(rc.values, batch_size=args.batch_size)
    if args.json:
        _print_json(info)
        return 0
    p = info["params"]
    print(f"{info['model']} at {info['image_size']} px, batch {info['batch_size']}")
    print(f"params: {p['total']:,} total (incl. target encoder) / {p['trainable']:,} trainable")
    t = info["tokens_per_sample"]
    print(f"masked patches: {t['masked_frac_mean']:.0%} of {t['patches']} on average")
    from tabulate import tabulate

    rows = []
    for v in ("reference", "efficient"):
        f = info["flops_per_step"][v]
        tok = t[v]
        rows.append([v, f"{f['total'] / 1e9:.1f}", f"{f['by_module']['context_encoder_fwd_bwd'] / 1e9:.1f}",
                     f"{f['by_module']['target_encoder_fwd'] / 1e9:.1f}", f"{f['by_module']['predictor_fwd_bwd'] / 1e9:.1f}",
                     tok["context_encoder"], tok["target_encoder"], tok["predictor"]])
    print(tabulate(rows, headers=["variant", "GFLOP/step", "context enc", "target enc", "predictor",
                                  "ctx tokens", "tgt tokens", "pred tokens"]))
    print(f"efficient / reference FLOPs: {info['efficient_vs_reference_flops']:.2f}"
          f"  (attention counted: {'yes' if info['attention_counted'] else 'NO'})")
    return 0


def cmd_devices(args: argparse.Namespace, plugins: Plugins) -> int:
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
        _print_json(rows)
        return 0
    from tabulate import tabulate

    table = []
    for r in rows:
        prec = ", ".join(k for k, v in (r.get("precisions") or {}).items() if v == "ok") or "-"
        table.append([r["name"], "yes" if r["available"] else "no", r.get("device_name") or "-",
                      fmt_bytes(r.get("total_bytes")) if r["available"] else "-", prec, r["reason"] or ""])
    print(tabulate(table, headers=["device", "available", "name", "memory", "precisions", "why not"]))
    auto = next((r["name"] for n in AUTO_ORDER for r in rows if r["name"] == n and r["available"]), None)
    print(f"--device auto picks: {auto}")
    return 0


def cmd_plugins(args: argparse.Namespace, plugins: Plugins) -> int:
    infos = plugins.describe()
    if args.json:
        _print_json([vars(i) for i in infos])
        return 0
    from tabulate import tabulate

    rows = [[i.name, i.module, i.origin, ", ".join(h.replace("hjepa_bench_", "") for h in i.hooks),
             "; ".join(f"{k}: {', '.join(v)}" for k, v in i.provides.items())] for i in infos]
    print(tabulate(rows, headers=["plugin", "module", "from", "hooks", "provides"]))
    return 0


def cmd_sweep(args: argparse.Namespace, plugins: Plugins) -> int:
    from .measure.sweep import (DEFAULT_OUT, SweepSpec, install_sigterm_handler, parse_list, resume_command, run_sweep,
                        selected_options)

    spec = SweepSpec.from_yaml(args.grid) if args.grid else SweepSpec()
    lists = {
        "devices": parse_list(args.device), "models": parse_list(args.models),
        "batch_sizes": parse_list(args.batch_sizes, int), "workers": parse_list(args.workers, int),
        "hierarchies": parse_list(args.hierarchies, int), "predictor_depths": parse_list(args.predictor_depths, int),
        "variants": parse_list(args.variants), "precisions": parse_list(args.precisions),
        "img_sizes": parse_list(args.img_size, int),
    }
    for name, value in lists.items():
        if value is not None:
            setattr(spec, name, value)
    for name in ("config", "workload", "data", "data_path", "limit_samples", "persistent_workers", "encoder_depth",
                 "warmup_steps", "min_steps", "max_steps"):
        if getattr(args, name, None) is not None:
            setattr(spec, name, getattr(args, name))
    if args.max_time is not None:
        spec.max_time_s = args.max_time
    if args.timeout is not None:
        spec.timeout_s = args.timeout
    if args.no_skip_after_oom:
        spec.skip_after_oom = False
    if args.probes is not None or args.profile:
        spec.probes = probe_names(args)
    if args.options is not None:
        spec.options = parse_list(args.options) or ["none"]
    if args.options_file is not None:
        spec.options_file = args.options_file
    plugins.select_probes(spec.probes)  # an unknown probe name is an error before anything runs
    settings = report_settings(args, options_file=spec.options_file, title="hjepa-bench sweep")  # bad files fail now
    selected_options(spec)
    out = Path(args.out or DEFAULT_OUT)
    if args.resume and not (out / "results.jsonl").exists():
        print(f"note: nothing to resume in {out}; starting a new sweep there", file=sys.stderr)
    mode = "quiet" if args.quiet else args.progress
    bar = _SweepProgress(mode)
    install_sigterm_handler()
    try:
        summary = run_sweep(spec, out, plugins, args.plugins, on_event=bar)
    except KeyboardInterrupt:
        bar.close()
        print(f"\nhjepa-bench: sweep interrupted; every finished config is in {out / 'results.jsonl'} "
              f"and the one in flight was discarded. Resume with:\n  {resume_command(args.argv)}", file=sys.stderr)
        return 130
    bar.close()
    from .measure.results import load_results

    from .report.decision import write_report

    records = load_results([out])
    report = out / "report.md"
    settings.sources = [str(out)]
    analysis = write_report(records, report, settings, sections=plugins.report_sections())
    if mode == "jsonl":
        print(json.dumps({"event": "end", **{k: v for k, v in summary.items() if k != "truncated_tail"},
                          "report": str(report)}), flush=True)
    elif mode != "quiet":
        from .record import records_frame

        df = records_frame(records)
        cols = ["device", "model", "variant", "precision", "img", "batch", "workers", "status", "it_per_s",
                "samples_per_s", "step_median_ms", "data_wait_pct", "peak_mem_mib"]
        print(df[cols].to_markdown(index=False, floatfmt=".2f"))
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) or "nothing new"
        print(f"\n{summary['ran']} configs run this time ({counts}), {summary['recorded_before']} already recorded; "
              f"{summary['elapsed_s']:.0f} s")
        print(_verdict_lines(analysis))
        print(f"results: {out / 'results.jsonl'}\nreport:  {report}")
    return 0


def report_settings(args: argparse.Namespace, *, options_file: str | None = None, title: str = "hjepa-bench report"):
    """Thresholds, options and budget for a decision report, from the common flags."""
    from .report.decision import ReportSettings
    from .options import load_options
    from .thresholds import load_thresholds

    return ReportSettings(thresholds=load_thresholds(getattr(args, "thresholds", None)),
                          options=load_options(options_file or getattr(args, "options_file", None)),
                          budget_hours=getattr(args, "budget_hours", None), title=title)


def cmd_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from .report.decision import write_report
    from .measure.results import load_results

    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not d.exists():
            raise UserError(f"{d} does not exist; give sweep directories (with results.jsonl) or results files.")
    records = load_results(dirs)
    if not records:
        raise UserError(f"no result records in {', '.join(map(str, dirs))}.")
    out = Path(args.out) if args.out else (dirs[0] / "report.md" if len(dirs) == 1 and dirs[0].is_dir()
                                           else Path("hjepa-bench-report") / "report.md")
    if out.suffix != ".md":
        out = out / "report.md"
    settings = report_settings(args, title=args.title or "hjepa-bench report")
    settings.sources = [str(d) for d in dirs]
    settings.charts = not args.no_charts
    analysis = write_report(records, out, settings, sections=plugins.report_sections())
    rec = [f"option {d['recommended']} on {d['machine']}" if d["recommended"] else f"no option on {d['machine']}"
           for d in analysis["decision"]["per_machine"]] or ["no option measured"]
    print(f"report: {out} ({len(records)} records; recommended: {'; '.join(rec)}; "
          f"{len(analysis['charts'])} charts; configs in {out.parent / 'configs'})")
    return 0


def cmd_validate(args: argparse.Namespace, plugins: Plugins) -> int:
    from .report.decision import write_report
    from .measure.env import environment_fingerprint
    from .options import config_option
    from .measure.validate import ValidationSettings, run_validation, validation_facts, validation_record

    rc = load_config(args)
    backend = select_backend(plugins, args.device)
    values = rc.values
    epochs = int(args.epochs or values["training"]["epochs"])
    out = Path(args.out)
    settings = report_settings(args, title="hjepa-bench validation run")  # bad files fail before training
    vs = ValidationSettings(epochs=epochs, out_dir=out, feature_every_epochs=args.feature_every,
                            feature_n=args.features_n, checkpoint_every_epochs=args.checkpoint_every,
                            max_steps_per_epoch=args.max_steps_per_epoch)
    print(f"validation run: {epochs} epoch(s) of {_label(values)} on {backend.name}; writing to {out}", file=sys.stderr)
    result = run_validation(values, backend, vs, progress=not args.quiet)
    env = environment_fingerprint(backend)
    record = validation_record(result, env)
    facts = validation_facts(result, record)
    v = dict(result["config"])
    settings.options = [config_option(v, "V", f"this validation config for {v['training']['epochs']} epochs")] + settings.options
    settings.sources = [str(out / "validation.json")]
    status = result["status"]
    intro = [f"A real training run of {result['epochs_completed']} of {result['epochs_planned']} epoch(s) "
             f"({result['steps_per_epoch']} steps each) on {result['device']} at {result['precision']}, status "
             f"**{status}**" + (f" ({result['error']})" if result.get("error") else "") + ". Checkpoints (upstream "
             f"layout) are in `checkpoints/`; every step, epoch and feature measurement is in `validation.json`."]
    analysis = write_report([record], out / "report.md", settings, sections=plugins.report_sections(),
                            facts=facts, intro=intro, extra=[("Validation run", _validation_section(result))])
    print(_verdict_lines(analysis))
    print(f"report: {out / 'report.md'}\ncheckpoints: {out / 'checkpoints'}")
    return {"ok": 0, "interrupted": 130}.get(status, 1)


def _validation_section(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = [[e["epoch"], e["steps"], f"{e['elapsed_s']:.1f}", f"{e['it_per_s']:.2f}",
             "-" if e.get("train_loss_mean") is None else f"{e['train_loss_mean']:.4g}",
             "-" if e.get("val_loss") is None else f"{e['val_loss']:.4g}", f"{e['lr_end']:.2e}",
             f"{100 * (e.get('data_wait_frac') or 0):.1f}"] for e in result.get("epochs") or []]
    parts = [tabulate(rows, headers=["epoch", "steps", "elapsed s", "it/s", "train loss (mean)", "val loss",
                                     "lr at end", "data wait %"], tablefmt="github", disable_numparse=True), ""]
    feats = result.get("features") or []
    if feats:
        parts += ["Feature quality of the EMA target encoder over the run (held-out images):", "",
                  tabulate([[f["epoch"], f.get("n_images"), f"{f.get('rankme_centred_ratio') or 0:.3f}",
                             f"{f.get('mean_cosine') or 0:.3f}", f"{f.get('std_mean') or 0:.4f}",
                             ", ".join(k for k, v in (f.get("collapse") or {}).items() if v) or "none"]
                            for f in feats], headers=["epoch", "N", "RankMe/D (centred)", "mean cosine",
                                                      "std (mean)", "collapse flags"], tablefmt="github",
                           disable_numparse=True), ""]
    ck = result.get("checkpoints") or []
    if ck:
        parts.append("Checkpoints: " + "; ".join(f"{Path(c['path']).name} ({c['kind']}, epoch {c['epoch']}, "
                                                  f"{c['save_s']:.2f} s)" for c in ck[-4:]))
    return "\n".join(parts)


def _verdict_lines(analysis: dict[str, Any]) -> str:
    lines = [f"{c['name'].split(':')[0]:<14} {c['status']:<13} {c['evidence']}" for c in analysis["criteria"]]
    for d in analysis["decision"]["per_machine"]:
        lines.append(f"recommended on {d['machine']}: " + (f"option {d['recommended']}" if d["recommended"] else "none")
                     + (f" ({d['reasons'][0]})" if d["reasons"] else ""))
    return "\n".join(lines)


def cmd_analyze(args: argparse.Namespace, plugins: Plugins) -> int:
    from .report.decision import write_report
    from .measure.loganalysis import log_facts, log_record, log_section, log_values, read_log
    from .options import config_option

    text, result = read_log(args.log)
    overrides = {"model.encoder_type": args.model, "data.batch_size": args.batch_size, "data.num_workers": args.workers,
                 "model.num_hierarchies": args.hierarchies, "model.predictor.depth": args.predictor_depth,
                 "data.image_size": args.img_size, "training.epochs": args.epochs}
    values = log_values(result.get("info") or {}, args.config, overrides)
    record = log_record(result, values, args.log)
    facts = log_facts(result, text, args.log)
    settings = report_settings(args, title=f"hjepa-bench analysis of {Path(args.log).name}")
    ds = (result.get("info") or {}).get("dataset_size") or args.dataset_size
    if ds:
        from dataclasses import replace

        settings.thresholds = replace(settings.thresholds, dataset_size=int(ds))
    settings.options = [config_option(values, "L", f"the logged config for {values['training']['epochs']} epochs")] \
        + settings.options
    settings.sources = [str(args.log)]
    epochs = [{"epoch": e["epoch"], "steps": e["steps"], "elapsed_s": e["elapsed_s"], "it_per_s": e["it_per_s"],
               **{k: v for k, v in e.items() if k not in ("epoch", "steps", "elapsed_s", "it_per_s") and not k.startswith("_")}}
              for e in result["epochs"]]
    section = log_section(result)
    print(section.split("\n\n")[0])
    if args.out:
        out = Path(args.out)
        from .report.charts import log_charts

        analysis = write_report([record], out / "report.md", settings, facts=facts, chart_records=[],
                                intro=[f"Analysis of `{args.log}`, a log written by the upstream H-JEPA trainer."],
                                extra=[("Training log", section)],
                                charts_extra=lambda d: log_charts(result, d))
        payload = {"log": str(args.log), "epochs": epochs, **{k: v for k, v in result.items() if k != "epochs"},
                   "criteria": analysis["criteria"], "checklist": analysis["checklist"],
                   "decision": analysis["decision"], "matrix": analysis["matrix"], "config": values}
        write_json(payload, out / "analysis.json")
        print(_verdict_lines(analysis))
        print(f"report: {out / 'report.md'}\nanalysis: {out / 'analysis.json'}")
    else:
        from .report.decision import build_analysis

        print(_verdict_lines(build_analysis([record], settings, facts)))
    if result.get("stopped_at"):
        print(f"note: parsing stopped at {result['stopped_at']}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace, plugins: Plugins) -> int:
    from .measure.evaluate import evaluate_checkpoint, render_eval_markdown

    device = select_backend(plugins, args.device).name
    overrides = {"data.image_size": args.img_size, "model.encoder_depth": args.encoder_depth}
    result = evaluate_checkpoint(args.checkpoint, config_path=args.config, overrides=overrides, device=device,
                                 data=args.data or "synthetic", data_path=args.data_path, n_train=args.n_train,
                                 n_test=args.n_test, batch_size=args.batch_size, seed=args.seed,
                                 progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)),
                                 num_workers=args.workers)
    md = render_eval_markdown(result)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.md").write_text(md)
        write_json(result, out / "eval.json")
        print(f"written: {out / 'eval.md'}, {out / 'eval.json'}", file=sys.stderr)
    return 0


def add_decision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decision report")
    g.add_argument("--budget-hours", type=_positive_float, metavar="H",
                   help="time you can give the full run; default: each option's own window (A 2-3 h, C 6-7 h, B 12-14 h)")
    g.add_argument("--options-file", metavar="YAML", help="your own training options (options: [...]), added to A, B, C")
    g.add_argument("--thresholds", metavar="YAML", help="override thresholds (names as printed in the report)")


def cmd_benchmark_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from .report.benchmarks import benchmark_table, identity_differences, load_benchmark_json

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


class _SweepProgress:
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
            print(f"sweep: {event['total']} configs, {event['recorded']} already recorded in {event['out']}, "
                  f"{event['to_run']} to run", file=sys.stderr)
            from tqdm import tqdm

            self.bar = tqdm(total=event["to_run"], file=sys.stderr, unit="config", dynamic_ncols=True,
                            bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} configs, {elapsed} elapsed {postfix}")
            self.bar.set_description_str("sweep")
        elif kind == "start" and self.bar is not None:
            eta = "ETA after the first config" if event["eta_s"] is None else f"ETA {event['eta_s'] / 60:.1f} min"
            self.bar.set_description_str(f"config {event['k']}/{event['n']}")
            self.bar.set_postfix_str(f"({eta}) now: {event['label']}")
        elif kind == "done" and self.bar is not None:
            speed = "" if event["it_per_s"] is None else f" {event['it_per_s']:.2f} it/s"
            self.bar.write(f"  [{event['k']}/{event['n']}] {event['label']}: {event['status']}{speed}"
                           + (f" ({event['error']})" if event["error"] else ""))
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


def add_probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", metavar="NAME,...",
                   help="probes to run: names and the groups cheap, all, none (default: cheap; see hjepa-bench plugins)")
    p.add_argument("--profile", action="store_true", help="also run the profiler probe (torch.profiler traces)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hjepa-bench", description="Measure the real H-JEPA training step on this machine.")
    parser.add_argument("--version", action="version", version=f"hjepa-bench {__version__}")
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="load a plugin module (repeatable); -p no:NAME disables a plugin")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="measure one configuration and print a summary",
                         description="Run the real H-JEPA training step and measure it.")
    add_config_args(run)
    run.add_argument("--device", default="auto", help="cpu | cuda | mps | auto (default: cuda, then mps, then cpu)")
    run.add_argument("--workload", help="registered workload to time (default hjepa)")
    run.add_argument("--data", choices=["synthetic", "cifar10"], help="default synthetic (CIFAR-shaped, in memory)")
    run.add_argument("--data-path", metavar="DIR", help="CIFAR-10 python-format folder (never downloaded)")
    run.add_argument("--limit-samples", type=_positive_int, metavar="N", help="use only the first N samples")
    pw = run.add_mutually_exclusive_group()
    pw.add_argument("--persistent-workers", dest="persistent_workers", action="store_true", default=None,
                    help="keep DataLoader workers between epochs")
    pw.add_argument("--no-persistent-workers", dest="persistent_workers", action="store_false",
                    help="restart workers every epoch, as upstream does (default)")
    s = run.add_argument_group("measurement")
    s.add_argument("--warmup-steps", type=_positive_int)
    s.add_argument("--min-steps", type=_positive_int)
    s.add_argument("--max-steps", type=_positive_int)
    s.add_argument("--max-time", type=_positive_float, metavar="SECONDS", help="time cap for the measured loop")
    s.add_argument("--target-precision", type=_positive_float, metavar="FRAC",
                   help="stop when the median step time is known to +-FRAC (95%% CI), default 0.02")
    add_probe_args(run)
    run.add_argument("--trace-dir", metavar="DIR", default="hjepa-bench-traces",
                     help="where the profiler writes traces (default ./hjepa-bench-traces)")
    run.add_argument("--json", metavar="PATH", help="write the result record (JSON) here")
    run.add_argument("--report", metavar="PATH", help="write a markdown report here")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    run.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="measure a grid of configs, each in its own process (resumable)",
                        description="Measure a grid of configs. Every config runs in its own child process; "
                                    "results are appended to OUT/results.jsonl as each finishes, and running the "
                                    "same command again (or with --resume) runs only what is missing.")
    sw.add_argument("--device", help="device or list: cpu,mps,cuda,auto (default auto)")
    sw.add_argument("--models", help="e.g. vit_tiny,vit_small,vit_base (default vit_tiny)")
    sw.add_argument("--batch-sizes", help="e.g. 24,32,48,64 (default 16,32)")
    sw.add_argument("--workers", help="DataLoader workers, e.g. 2,4,6,8 (default 2,4)")
    sw.add_argument("--hierarchies", help="hierarchy levels, e.g. 2,3")
    sw.add_argument("--predictor-depths", help="e.g. 2,4,6")
    sw.add_argument("--variants", help="reference,efficient (default reference)")
    sw.add_argument("--precisions", help="fp32,fp16,bf16 (default: auto per device)")
    sw.add_argument("--img-size", help="image size or list, e.g. 224 or 128,224")
    sw.add_argument("--encoder-depth", type=_positive_int, help="ViT blocks (default 12)")
    sw.add_argument("--config", metavar="YAML", help="upstream YAML as the base of every point")
    sw.add_argument("--grid", metavar="YAML", help="grid file (keys as SweepSpec: devices, batch_sizes, ...); flags override it")
    sw.add_argument("--out", metavar="DIR", help=f"results directory (default ./{'hjepa-bench-sweep'})")
    sw.add_argument("--resume", action="store_true", help="continue the sweep in --out (the same --out does too)")
    sw.add_argument("--workload", help="registered workload to time (default hjepa)")
    sw.add_argument("--data", choices=["synthetic", "cifar10"])
    sw.add_argument("--data-path", metavar="DIR")
    sw.add_argument("--limit-samples", type=_positive_int, metavar="N")
    swp = sw.add_mutually_exclusive_group()
    swp.add_argument("--persistent-workers", dest="persistent_workers", action="store_true", default=None)
    swp.add_argument("--no-persistent-workers", dest="persistent_workers", action="store_false")
    b = sw.add_argument_group("per-config budgets")
    b.add_argument("--warmup-steps", type=_positive_int, help="default 2")
    b.add_argument("--min-steps", type=_positive_int, help="default 5")
    b.add_argument("--max-steps", type=_positive_int, help="default 30")
    b.add_argument("--max-time", type=_positive_float, metavar="SECONDS", help="measuring time per config (default 15)")
    b.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                   help="wall-clock limit per config, start-up included (default 120 + 6 x max-time)")
    b.add_argument("--no-skip-after-oom", action="store_true",
                   help="also run larger batches of a model after it ran out of memory")
    add_probe_args(sw)
    sw.add_argument("--options", metavar="LIST",
                    help="decision-matrix options whose model config is also measured at 224 px: A,B,C, all "
                         "(default) or none")
    add_decision_args(sw)
    sw.add_argument("--progress", choices=["bar", "quiet", "jsonl"], default="bar",
                    help="bar (default), quiet, or jsonl (one JSON event per line on stdout)")
    sw.add_argument("-q", "--quiet", action="store_true", help="same as --progress quiet")
    sw.set_defaults(func=cmd_sweep)

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

    va = sub.add_parser("validate", help="a short real training run, then criteria and the decision report",
                        description="The validation guide's validation run: real H-JEPA training (warm-up + cosine, "
                                    "EMA), upstream-layout checkpoints, feature quality per epoch, and at the end the "
                                    "success criteria and the decision report. Ctrl-C keeps what was measured.")
    add_config_args(va)
    va.add_argument("--epochs", type=_positive_int, help="epochs (default: the config's, 5 for quick_val)")
    va.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    va.add_argument("--data", choices=["synthetic", "cifar10"], help="default synthetic")
    va.add_argument("--data-path", metavar="DIR", help="CIFAR-10 python-format folder")
    va.add_argument("--limit-samples", type=_positive_int, metavar="N", help="use only the first N training samples")
    vpw = va.add_mutually_exclusive_group()
    vpw.add_argument("--persistent-workers", dest="persistent_workers", action="store_true", default=None)
    vpw.add_argument("--no-persistent-workers", dest="persistent_workers", action="store_false")
    va.add_argument("--out", metavar="DIR", default="hjepa-bench-validate",
                    help="checkpoints, validation.json and report.md (default ./hjepa-bench-validate)")
    va.add_argument("--feature-every", type=_positive_int, default=1, metavar="EPOCHS",
                    help="feature quality every N epochs (0: only at the end; default 1)")
    va.add_argument("--features-n", type=_positive_int, metavar="N", help="held-out images for feature quality")
    va.add_argument("--checkpoint-every", type=_positive_int, metavar="EPOCHS",
                    help="numbered checkpoint every N epochs (default: checkpoint.save_frequency)")
    va.add_argument("--max-steps-per-epoch", type=_positive_int, metavar="N", help="cap steps per epoch")
    va.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_decision_args(va)
    va.set_defaults(func=cmd_validate)

    an = sub.add_parser("analyze", help="analyse a log of the upstream H-JEPA trainer: speed, loss, criteria, projections",
                        description="Parse a training log written by the upstream trainer (tqdm bars joined by "
                                    "carriage returns, it/s or s/it, logging lines) and judge it like a sweep.")
    an.add_argument("--log", required=True, metavar="FILE", help="the training log")
    an.add_argument("--out", metavar="DIR", help="write report.md and analysis.json here")
    an.add_argument("--config", metavar="YAML", help="the run's config, for what the log does not print")
    an.add_argument("--model", help="encoder, if the log does not print it")
    an.add_argument("--batch-size", type=_positive_int)
    an.add_argument("--workers", type=_positive_int)
    an.add_argument("--hierarchies", type=_positive_int)
    an.add_argument("--predictor-depth", type=_positive_int)
    an.add_argument("--img-size", type=_positive_int)
    an.add_argument("--epochs", type=_positive_int, help="planned epochs, if the log does not print them")
    an.add_argument("--dataset-size", type=_positive_int, help="training images per epoch (default: the log's, else 50,000)")
    add_decision_args(an)
    an.set_defaults(func=cmd_analyze)

    ev = sub.add_parser("eval", help="quick evaluation of a checkpoint: feature quality, kNN and linear probe vs random init",
                        description="Load an upstream-format checkpoint (model_state_dict) and measure its EMA target "
                                    "encoder per hierarchy level against the same encoder at random initialisation.")
    ev.add_argument("--checkpoint", required=True, metavar="PATH", help=".pth with model_state_dict")
    ev.add_argument("--config", metavar="YAML", help="the model's config (upstream checkpoints carry none)")
    ev.add_argument("--data", choices=["synthetic", "cifar10"], help="default synthetic")
    ev.add_argument("--data-path", metavar="DIR")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--img-size", type=_positive_int)
    ev.add_argument("--encoder-depth", type=_positive_int)
    ev.add_argument("--n-train", type=_positive_int, help="training images for kNN / linear probe (default 5000)")
    ev.add_argument("--n-test", type=_positive_int, help="test images (default 1000)")
    ev.add_argument("--batch-size", type=_positive_int, default=64)
    ev.add_argument("--workers", type=_positive_int, default=0)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", metavar="DIR", help="write eval.md and eval.json here")
    ev.add_argument("-q", "--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    br = sub.add_parser("benchmark-report", help="render pytest-benchmark JSON as a markdown table against a baseline")
    br.add_argument("current", metavar="RUN.json", help="pytest-benchmark JSON (--benchmark-json or a saved run)")
    br.add_argument("--baseline", metavar="BASE.json", help="saved baseline to compare against")
    br.add_argument("--threshold", type=_positive_float, default=10.0, metavar="PERCENT",
                    help="change that counts as slower/faster (default 10)")
    br.add_argument("--allow-other-machine", action="store_true",
                    help="compare even if device, torch, timm, size or precision differ")
    br.add_argument("--out", metavar="PATH", help="write the markdown here instead of printing it")
    br.set_defaults(func=cmd_benchmark_report)

    ins = sub.add_parser("inspect", help="parameters, tokens and FLOPs of a config (no training)")
    add_config_args(ins)
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)

    dev = sub.add_parser("devices", help="which backends are available here, and why not")
    dev.add_argument("--json", action="store_true")
    dev.set_defaults(func=cmd_devices)

    plg = sub.add_parser("plugins", help="loaded plugins, where they came from, and their hooks")
    plg.add_argument("--json", action="store_true")
    plg.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the resume hint
    try:
        plugins = build_plugins(args.plugins)
        return int(args.func(args, plugins) or 0)
    except UserError as exc:
        print(f"hjepa-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nhjepa-bench: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
