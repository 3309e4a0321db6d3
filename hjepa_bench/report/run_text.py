"""Text for people about one run, a validation run, a training log or an evaluation: the run summary,
the criteria and recommendation lines, the validation-run and training-log sections of a report, and
the evaluation's markdown."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..errors import PLUGIN_FAILURES
from ..format import finite, fmt_bytes, fmt_finite, fmt_ms, fmt_or_dash, fmt_pct
from ..record import records_frame
from .sections import frame_markdown


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
        cv = fmt_or_dash(None if st.get("cv") is None else st["cv"] * 100, ".1f", suffix="%")
        lines.append(f"step time: median {fmt_ms(st['median'])}, IQR {fmt_ms(st['iqr'])}, CV {cv}, "
                     f"p10 {fmt_ms(st['p10'])}, p90 {fmt_ms(st['p90'])} ({m['timing_method']})")
        lines.append(time_split_line(record))
        source = (m.get("memory_source") or "").split(";")[0]
        lines.append(f"memory: peak {fmt_bytes(m['peak_device_bytes'])} ({source}), "
                     f"device total {fmt_bytes(m['device_total_bytes'])}")
        if m.get("loss_first") is not None:
            lines.append(f"loss: {m['loss_first']:.4g} (first measured step) -> {m['loss_last']:.4g} (last)")
        lines += distributed_lines(record)
        for w in m.get("warnings", []):
            lines.append(f"warning: {w}")
    for name, entry in (record.get("probes") or {}).items():
        probe = (probes or {}).get(name)
        if entry.get("status") == "failed":
            text = f"failed ({entry.get('error')})"
        else:
            try:
                text = probe.summarize(entry) if probe is not None else None
            except PLUGIN_FAILURES:  # a summary line never hides the record
                text = None
            text = text or "ok (details in the JSON record)"
        lines.append(f"probe {name}: {text}")
    return "\n".join(lines)


def time_split_line(record: Mapping[str, Any]) -> str:
    """The run's time split in the bottleneck probe's terms (:func:`~hjepa_bench.analysis.bottleneck.metrics_shares`,
    the one definition: on CPU the forward/backward compute is device time), so this line and the probe's
    line under it never disagree about the same split."""
    from ..analysis.bottleneck import metrics_shares

    m = record.get("metrics") or {}
    backend = str((record.get("env") or {}).get("backend") or "")
    sh = metrics_shares(m, backend)
    if not sh:
        return "time split: not measured"
    if sh.get("host") is None:
        return f"time split: data wait {fmt_pct(sh['data_wait'])} (host/device not measured)"
    return (f"time split: data wait {fmt_pct(sh['data_wait'])}, host {fmt_pct(sh['host'])}, device "
            f"{fmt_pct(sh['device'])}" + (" (on cpu the forward/backward compute is device time)"
                                          if backend not in ("cuda", "mps") else ""))


def distributed_lines(record: Mapping[str, Any]) -> list[str]:
    """The data-parallel part of a run summary (nothing for a one-process run)."""
    d = record.get("distributed")
    if not isinstance(d, Mapping) or not d.get("ranks") or record.get("status") != "ok":
        return []
    ranks = d["ranks"]
    steps = " / ".join(fmt_ms((r.get("step_time_s") or {}).get("median")) for r in ranks)
    shares = " / ".join(fmt_finite((r.get("allreduce") or {}).get("share")) for r in ranks)
    single = (d.get("single_process") or {}).get("samples_per_s")
    return [f"data parallel: {d['world_size']} ranks ({d.get('backend')}), {d.get('torch_threads_per_rank')} torch "
            f"thread(s) each; median step per rank {steps}",
            f"all-reduce share of the step: {fmt_finite(d.get('allreduce_share'))} (per rank {shares}; exposed "
            "communication, including the wait for the slower rank)",
            f"job {fmt_finite(d.get('job_samples_per_s'), '.1f')} samples/s; one process alone in the same run "
            f"{fmt_finite(single, '.1f')} samples/s; scaling efficiency {fmt_finite(d.get('scaling_efficiency'))}",
            "replicas identical after the synced steps: " + (
                "yes" if (d.get("replicas_max_abs_diff") or {}).get("after_synced_steps") == 0 else
                "no (max |diff| "
                f"{fmt_finite((d.get('replicas_max_abs_diff') or {}).get('after_synced_steps'), '.3g')})")]


def validation_section(result: dict[str, Any]) -> str:
    rows = [[e["epoch"], e["steps"], f"{e['elapsed_s']:.1f}", f"{e['it_per_s']:.2f}",
             "-" if e.get("train_loss_mean") is None else f"{e['train_loss_mean']:.4g}",
             "-" if e.get("val_loss") is None else f"{e['val_loss']:.4g}", f"{e['lr_end']:.2e}",
             fmt_finite(None if finite(e.get("data_wait_frac")) is None else 100 * e["data_wait_frac"], ".1f")]
            for e in result.get("epochs") or []]
    parts = [tabulate(rows, headers=["epoch", "steps", "elapsed s", "it/s", "train loss (mean)", "val loss",
                                     "lr at end", "data wait %"], tablefmt="github", disable_numparse=True), ""]
    feats = result.get("features") or []
    if feats:
        parts += ["Feature quality of the EMA target encoder over the run (held-out images):", "",
                  tabulate([[f["epoch"], f.get("n_images"), fmt_finite(f.get("rankme_centred_ratio"), ".3f"),
                             fmt_finite(f.get("mean_cosine"), ".3f"), fmt_finite(f.get("std_mean"), ".4f"),
                             ", ".join(k for k, v in (f.get("collapse") or {}).items() if v) or "none"]
                            for f in feats], headers=["epoch", "N", "RankMe/D (centred)", "mean cosine",
                                                      "std (mean)", "collapse flags"], tablefmt="github",
                           disable_numparse=True), ""]
    ck = result.get("checkpoints") or []
    if ck:
        parts.append("Checkpoints: " + "; ".join(f"{Path(c['path']).name} ({c['kind']}, epoch {c['epoch']}, "
                                                  f"{c['save_s']:.2f} s)" for c in ck[-4:]))
    parts += ["", self_check_markdown((result.get("self_check") or {}).get("check"))]
    return "\n".join(parts)


def self_check_markdown(check: Mapping[str, Any] | None) -> str:
    """The validation run's projection self-check: projected vs measured per epoch and for the run."""
    if not check:
        return "Projection self-check: not made (no costs were measured before training, or no epoch completed)."
    if not check.get("epochs"):
        return f"Projection self-check: {check.get('note')}."
    p = check["projection"]
    rows = [[r["epoch"], f"{r['projected_s']:.1f}", f"{r['measured_s']:.1f}", fmt_finite(r["error_pct"], "+.1f"),
             fmt_finite(r.get("loadavg_1m"), ".2f")] for r in check["epochs"]]
    run = check.get("run")
    if run:
        band = (f" [{run['low_s']:.1f}-{run['high_s']:.1f}]"
                if run.get("low_s") is not None and run.get("high_s") is not None else "")
        rows.append(["whole run", f"{run['projected_s']:.1f}{band}", f"{run['measured_s']:.1f}",
                     fmt_finite(run["error_pct"], "+.1f"), "-"])
    out = [f"Projection self-check: the projection made before the first epoch (the `epoch_costs` measurements on "
           f"this run's trainer and loader) and from the first {check['first_steps']} measured steps "
           f"({check['step_s'] * 1000:.0f} ms each), next to what each epoch and the whole run took (set-up and "
           "feature quality left out, as the upstream trainer has neither):", "",
           tabulate(rows, headers=["epoch", "projected s", "measured s", "error %", "load avg (1 min, at end)"],
                    tablefmt="github", disable_numparse=True), "",
           tabulate([[r["part"], f"{r['projected_s']:.1f}", f"{r['measured_s']:.1f}"] for r in check["parts"]],
                    headers=["part of the run", "projected s", "measured s"], tablefmt="github",
                    disable_numparse=True), ""]
    if check.get("unforeseen"):
        out.append(f"Above {check['unforeseen_pct']:g}% error: {check['unforeseen']['text']}.")
    else:
        out.append(f"Every error within {check['unforeseen_pct']:g}%.")
    if p.get("missing"):
        out.append("Not measured, so not projected: " + ", ".join(p["missing"]) + ".")
    return "\n".join(out)


def verdict_lines(analysis: dict[str, Any]) -> str:
    lines = [f"{c['name'].split(':')[0]:<14} {c['status']:<13} {c['evidence']}" for c in analysis["criteria"]]
    for d in analysis["decision"]["per_machine"]:
        lines.append(f"recommended on {d['machine']}: " + (f"option {d['recommended']}" if d["recommended"] else "none")
                     + (f" ({d['reasons'][0]})" if d["reasons"] else ""))
    return "\n".join(lines)


def log_section(result: Mapping[str, Any]) -> str:
    """Markdown: per-epoch speed from counters, loss trend, where parsing stopped."""
    rows = []
    for e in result["epochs"]:
        rows.append([e["epoch"], f"{e['steps']}/{e.get('total_steps') or '?'}", "yes" if e.get("complete") else "no",
                     fmt_finite(e.get("elapsed_s"), ".0f"), fmt_finite(e.get("it_per_s"), ".3f"),
                     fmt_finite(e.get("bar_it_per_s")),
                     fmt_finite(e.get("steady_it_per_s")),
                     f"{e.get('warmup_steps') or 0} / {e.get('warmup_s') or 0:.0f} s",
                     f"{len(e.get('stalls') or [])} / {sum(s['seconds'] for s in e.get('stalls') or []):.0f} s"])
    o = result["overall"]
    parts = [tabulate(rows, headers=["epoch", "steps", "complete", "elapsed s", "it/s (counters)",
                                     "it/s (bar, smoothed)",
                                     "steady it/s", "warm-up steps / s", "stalls / s"], tablefmt="github",
                      disable_numparse=True), "",
             f"Overall: {o['steps']} steps in {fmt_finite(o.get('elapsed_s'), '.0f')} s = "
             f"{fmt_finite(o.get('it_per_s'), '.3f', dash='not measured')} it/s by the wall clock "
             "(epoch start-up and stalls included: the speed criterion and the projection of option L use it); "
             f"steady {fmt_finite(o.get('steady_it_per_s'), '.3f')} it/s (warm-up and stalls excluded); "
             f"{o.get('stall_count') or 0} stall(s), {o.get('stall_time_s') or 0:.0f} s"
             + (f", every {o['stall_period_steps']} steps" if o.get("stall_period_steps") else "")
             + f"; step-time CV over steady intervals "
             f"{fmt_finite(None if o.get('step_time_cv') is None else 100 * o['step_time_cv'], '.1f')}%. "
             "Speeds come from the bars' step counters and elapsed times; tqdm's smoothed rate is shown only for "
             "comparison.", ""]
    loss = result.get("loss") or {}
    if loss.get("points"):
        parts.append(f"Loss: {len(loss['points'])} distinct postfix values (stale repeats dropped); smoothed over "
                     f"{loss.get('window')} points: {fmt_finite(loss.get('start'), '.4g')} -> "
                     f"{fmt_finite(loss.get('end'), '.4g')} "
                     f"({fmt_finite(loss.get('decrease_pct'), '.1f')}% down), trend {loss.get('trend')}.")
    if result.get("val_loss"):
        parts.append("Validation loss by epoch: " + ", ".join(f"{e}: {v:.4g}" for e,
                                                              v in result["val_loss"] if v is not None) + ".")
    parts.append("")
    parts.append(f"Parsing: {result.get('lines_total')} lines, {result.get('bar_refreshes')} bar refreshes, "
                 f"{result.get('logging_lines')} logging lines; "
                 + (f"stopped at {result['stopped_at']}." if result.get("stopped_at") else "the whole file was read."))
    for w in result.get("warnings") or []:
        parts.append(f"- warning: {w}")
    return "\n".join(parts)


def render_eval_markdown(result: Mapping[str, Any]) -> str:
    """A markdown section: what was evaluated, one table per hierarchy level
    (trained vs random init vs gain), the protocol lines, notes and timings."""
    m, dat = result["model"], result["data"]
    epoch = result.get("epoch")
    lines = [
        "## Encoder evaluation",
        "",
        f"- Checkpoint: `{result['checkpoint']}` ({result.get('checkpoint_format', '?')}"
        + (f", epoch {epoch}" if epoch is not None else "") + f"); config: {result['config_source']}.",
        f"- Model: {m['encoder_type']} (D={m['embed_dim']}, depth {m['encoder_depth']}, {m['image_size']} px, "
        f"{m['num_hierarchies']} hierarchy levels, predictor depth {m['predictor_depth']}); evaluated: "
        f"{m['evaluated_encoder']} vs the same architecture at random init (seed {m['random_init_seed']}); "
        f"device {result.get('device', '?')}.",
        f"- Data: {dat['kind']}" + (f" ({dat['path']})" if dat.get("path") else "")
        + f", {dat['n_train']} train / {dat['n_test']} test images at {dat['image_size']} px, "
        f"{dat['num_classes']} classes (chance {fmt_pct(dat['chance_top1'], dash='-')}).",
        "",
    ]
    if result.get("caveats"):
        lines += ["**The comparison below may say nothing:**", ""] + [f"- {c}" for c in result["caveats"]] + [""]
    for entry in result["levels"]:
        tr, rn, gain = entry["trained"], entry["random_init"], entry["gain"]
        rows = []
        for label, s in (("trained (EMA target)", tr), ("random init", rn)):
            q = s["feature_quality"]
            rows.append([label, fmt_or_dash(q.get("rankme_centred_ratio"), ".3f"), fmt_or_dash(q.get("mean_cosine"),
                                                                                               ".3f"),
                         fmt_pct(s["knn_top1"], dash="-"), fmt_pct(s["linear_top1"], dash="-"),
                         "yes" if (q.get("collapse") or {}).get("collapsed") else "no"])
        ratio = gain.get("rankme_ratio")
        rows.append(["gain", "-" if ratio is None else f"x{ratio:.2f}", "",
                     f"{100.0 * gain['knn_top1']:+.1f} pp", f"{100.0 * gain['linear_top1']:+.1f} pp", ""])
        lines += [f"### Level {entry['level']} (D={entry['dim']}; {entry.get('features', '')})", "",
                  tabulate(rows, headers=["features", "RankMe/D (centred)", "mean cosine", "kNN top-1",
                                          "linear top-1", "collapsed"], tablefmt="github",
                                 disable_numparse=True), ""]
    p = result["protocol"]
    lines += ["Protocol:", "",
              f"- Features: {p['features']}.",
              f"- Quality: {p['feature_quality']}.",
              f"- kNN: {p['knn']}.",
              f"- Linear: {p['linear']}.",
              f"- Gain: {p['gain']}.", ""]
    if result.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    t = result.get("timings_s") or {}
    if t:
        lines.append("Timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()) + ".")
        lines.append("")
    return "\n".join(lines)


def sweep_table(records: list[dict[str, Any]]) -> str:
    """The sweep's closing table: one row per record."""
    df = records_frame(records)
    cols = ["device", *(["node"] if df["node"].notna().any() else []), "model", "variant", "precision", "img",
            "batch", "workers", "status", "it_per_s", "samples_per_s", "step_median_ms", "data_wait_pct",
            "peak_mem_mib"]
    if "ranks" in df and (df["ranks"] > 1).any():
        cols.insert(cols.index("workers") + 1, "ranks")
    return frame_markdown(df[cols])
