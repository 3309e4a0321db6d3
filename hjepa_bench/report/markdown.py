"""The full report: decision matrix, projections, recommendations, success criteria,
checklist, lessons learned, charts, reference baselines and the plugins' sections.

``write_report`` takes the analysis (:func:`hjepa_bench.analysis.report_data.build_analysis`) and
renders it to ``report.md`` with tabulate tables, writes the charts
(:mod:`hjepa_bench.report.charts`) into ``charts/`` and one ready-to-run upstream-format
YAML per option into ``configs/``, all next to the report and linked with
relative paths.  ``hjepa-bench sweep``, ``report``, ``analyze`` and ``validate``
all come through here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..analysis.criteria import Facts
from ..analysis.projection import MIN_STEPS_BAND, PERIODIC_COLUMNS
from ..analysis.report_data import ReportSettings, apply_worker_advice, build_analysis
from ..analysis.verdicts import rejudge_records
from ..format import fmt_finite
from ..options import option_yaml
from ..plugin.api import ReportSection
from ..record import dumps
from ..status import FAIL, NOT_MEASURED, PASS
from ..thresholds import MEANINGS
from .charts import render_charts
from .export import export_note
from .sections import render_report

#: The validation guide's reference table, with what each number is.
REFERENCE_BASELINES: tuple[tuple[str, str, str, str, str], ...] = (
    ("SimCLR", "ResNet-50", "1000", "90.6%", "published (BYOL paper, Table 3)"),
    ("MoCo v2", "ResNet-50", "800", "89.0% (the guide); ~89-92% depending on protocol", "published (protocols differ)"),
    ("BYOL", "ResNet-50", "1000", "91.3%", "published (BYOL paper, Table 3)"),
    ("I-JEPA", "ViT-B", "300", "~85% (the guide's figure)", "not published: I-JEPA reports no CIFAR-10 linear probe "
     "(CIFAR-100: 87.5% for ViT-H/14)"),
    ("H-JEPA", "ViT-Tiny", "100", "80-85%", "target (the guide's), not a result"),
    ("H-JEPA", "ViT-Small", "100", "85-88%", "target (the guide's), not a result"),
)

MARK = {PASS: "[x] pass", FAIL: "[ ] **FAIL**", NOT_MEASURED: "[ ] not measured"}


def _f(x: Any, spec: str = ".2f") -> str:
    return fmt_finite(x, spec, signed_zero=False)  # no "-0.0"


def _band(low: Any, high: Any, spec: str, note: str | None) -> str:
    """`` [low-high]``, or `` [no band (n < 5)]`` (the projection's ``band_note``) when there is none."""
    if low is not None and high is not None:
        return f" [{_f(low, spec)}-{_f(high, spec)}]"
    return f" [{note or '-'}]"


def _limit(row: Mapping[str, Any]) -> str:
    """The matrix's "limit h": the budget or the option's window; "none (projection only)" for the measured
    run's own config, which has no window (never "inf")."""
    limit = row.get("limit_hours")
    if limit is None or limit == float("inf"):
        return "none (projection only)"
    return f"{limit:g}"


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _header(analysis: Mapping[str, Any], title: str, intro: Sequence[str]) -> list[str]:
    """The title, what the report was generated from, the skipped lines and the caller's intro."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(analysis["status_counts"].items())) or "none"
    parts = [f"# {title}", "",
             f"_Generated {analysis['generated_at']} by hjepa-bench from {analysis['records']} result record(s) "
             f"({counts})" + (f" in {', '.join(analysis['sources'])}" if analysis["sources"] else "") + ". "
             "Every number below was measured in these runs, except where labelled as the validation guide's "
             "expectation, a published figure or a target._", ""]
    if analysis.get("skipped"):
        parts += [f"**{len(analysis['skipped'])} line(s) of the results were skipped** (not valid records):", ""]
        parts += [f"- {s}" for s in analysis["skipped"]] + [""]
    parts += [*intro, ""] if intro else []
    return parts


def _recommendation(analysis: Mapping[str, Any]) -> list[str]:
    """## Recommendation: the option to run on each machine, and the budget it was judged against."""
    parts = ["## Recommendation", ""]
    decision = analysis["decision"]
    short = [r for r in analysis["matrix"] if r.get("not_measured")]
    if short:  # before any hours: what was measured too briefly to project or judge
        parts += ["**Measured too briefly to project:** " + "; ".join(
            f"option {r['option']} on {r['machine']}: {r['not_measured']}" for r in short)
            + ". No hours are shown for it and no verdict uses it.", ""]
    if not decision["per_machine"]:
        parts += ["**No option can be judged:** none of the options' model configs was measured"
                  + (" (not measured: " + ", ".join(decision["unmeasured"]) + ")" if decision["unmeasured"] else "")
                  + ". `hjepa-bench sweep --device DEVICE` measures each option's own model config on that machine; "
                  "`hjepa-bench report DIR...` then merges it with these results.", ""]
    for d in decision["per_machine"]:
        ranks = d.get("world_size") or 1
        head = (f"**Run option {d['recommended']}** on {d['machine']}"
                + (f", as a data-parallel job of {ranks} processes." if ranks > 1 else ".") if d["recommended"]
                else f"**No option is recommended** on {d['machine']}.")
        parts += [head, ""] + [f"- {r}" for r in d["reasons"]] + [""]
    if analysis["budget_hours"] is not None:
        parts += [f"Budget: {analysis['budget_hours']:g} h (`--budget-hours`).", ""]
    else:
        parts += ["No `--budget-hours` given: each option is judged against its own time window from the guide "
                  "(A 2-3 h, C 6-7 h, B 12-14 h).", ""]
    return parts


def _matrix_verdict(r: Mapping[str, Any], decision: Mapping[str, Any]) -> str:
    """The matrix's verdict cell of a measured, ok row."""
    if not r.get("candidate", True):
        verdict = "projection only"
    elif any(d["recommended"] == r["option"] and d["machine"] == r["machine"]
             and d.get("world_size") == r.get("world_size") for d in decision["per_machine"]):
        verdict = "**recommended**"
    else:
        verdict = "fits" if r["eligible"] and r["fits"] else "does not fit" if r["eligible"] else "not eligible"
    if r.get("few_steps"):
        verdict += f" (warning: {r['few_steps']})"
    return verdict


def _matrix_row(r: Mapping[str, Any], decision: Mapping[str, Any], th: Mapping[str, Any]) -> list[Any]:
    """One row of the decision matrix: an option on a machine (or not measured, or not ok)."""
    if not r.get("measured"):
        return [r["option"], r["describe"], NOT_MEASURED, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                "not measured: no number"]
    if r.get("status") != "ok":
        return [r["option"], r["describe"], r["machine"], r.get("world_size") or 1, "-", "-", "-", "-", "-",
                "-", "-", "-", "-", "; ".join(r["reasons"])]
    band = _band(r.get("hours_low"), r.get("hours_high"), ".1f", (r.get("projection") or {}).get("band_note"))
    collapse = (r["collapse_note"] if r.get("collapse_note") else NOT_MEASURED if r.get("collapsed") is None
                else "**yes**" if r["collapsed"] else "no")
    verdict = _matrix_verdict(r, decision)
    ips = r.get("it_per_s")
    loss = _f(r.get("loss_decrease_pct"), ".1f")
    if r.get("loss_note") and loss != "-":
        loss += f" ({r['loss_note']})"
    diverged = ("yes" if r.get("diverged") else "-" if r.get("diverged") is None else
                "not measured (preliminary)" if r.get("loss_preliminary") else "no")
    return [
        r["option"], r["describe"], f"{r['machine']} b{r['batch']} w{r['workers']}", r.get("world_size") or 1,
        f"{_f(ips)} ({'>=' if ips and ips >= th['min_it_per_s'] else '<'} {th['min_it_per_s']:g}; "
        f"{'>=' if ips and ips >= th['expected_it_per_s'] else '<'} ~{th['expected_it_per_s']:g})",
        _f(r.get("step_cv_pct"), ".1f"), loss, diverged, collapse,
        "-" if r.get("headroom_frac") is None else f"{r['headroom_frac']:.0%}",
        f"{_f(r.get('hours'), '.1f')}{band}", _limit(r), str(r.get("steps_measured") or "-"), verdict]


def _decision_matrix(analysis: Mapping[str, Any], config_files: Mapping[str, str] | None) -> list[str]:
    """## Decision matrix: one row per option and machine, then the options as the guide describes them."""
    th = analysis["thresholds"]
    mrows = [_matrix_row(r, analysis["decision"], th) for r in analysis["matrix"]]
    parts = ["## Decision matrix", ""]
    parts += [_table(mrows, ["option", "config", "measured on", "processes", "it/s (min; expected)", "CV %",
                             "loss down %",
                             "diverged", "collapse", "mem headroom", "projected h [band]", "limit h",
                             "measured steps", "verdict"]), ""]
    parts += ["Options (the validation guide's conditions and expectations, not measurements):", ""]
    seen = set()
    for r in analysis["matrix"]:
        if r["option"] in seen:
            continue
        seen.add(r["option"])
        cfg = (config_files or {}).get(r["option"])
        parts.append(f"- **{r['option']}: {r['title']}**: {r['describe']}. Choose if: "
                     f"{'; '.join(r['choose_if']) or '-'}. "
                     f"Expected: {r['expected'] or '-'}." + (f" Config: [{cfg}]({cfg})" if cfg else ""))
    parts.append("")
    return parts


def _machines_compared(analysis: Mapping[str, Any]) -> list[str]:
    """## Machines compared: it/s of each config on each machine (or why they are not compared)."""
    parts: list[str] = []
    machines = analysis.get("machines") or {}
    if machines.get("refused"):
        parts += ["## Machines compared", "", f"Not compared: {machines['refused']}", ""]
    if machines.get("machines"):
        names = machines["machines"]
        parts += ["## Machines compared", "",
                  _table([[row["config"], *(_f(row["it_per_s"].get(n)) for n in names), row["fastest"],
                           "-" if row["fastest_vs_slowest"] is None else f"{row['fastest_vs_slowest']:.2f}x"]
                          for row in machines["rows"]],
                         ["config", *(f"it/s {n}" for n in names), "fastest", "fastest vs slowest"]),
                  "", "it/s of each config on each machine that measured it (ok records; a cluster node is its own "
                  "machine, labelled with its node); `-`: not measured there.", ""]
    return parts


def _hours(seconds: float | None) -> str:
    """Seconds as hours for the projection table; "not measured" for None."""
    return NOT_MEASURED if seconds is None else f"{seconds / 3600:.2f}"


def _projection_row(r: Mapping[str, Any]) -> list[Any]:
    """One row of the projection table: an option's steps, per-step time, overheads and total hours."""
    p = r["projection"]
    sps = p["seconds_per_step"]
    ov = p["overheads_s"]
    ranks = p.get("world_size") or 1
    return [r["option"], r["machine"], f"b{p['batch_size']}" + (f" x {ranks} processes" if ranks > 1 else ""),
            p["epochs"], f"{p['steps_per_epoch']:,}",
            f"{p['total_steps']:,}",
            f"{sps['mid']:.3f}" + _band(sps.get("low"), sps.get("high"), ".3f", p.get("band_note")),
            f"{p['train_s']['mid'] / 3600:.2f}", _hours(ov.get("worker_startup")), _hours(ov.get("validation")),
            _hours(ov.get("checkpoints")), *(_hours(ov.get(k)) for k in PERIODIC_COLUMNS), _hours(ov.get("one_time")),
            f"**{p['hours']['mid']:.2f}**" + _band(p["hours"].get("low"), p["hours"].get("high"), ".2f",
                                                   p.get("band_note"))]


def _projection_method(analysis: Mapping[str, Any]) -> list[str]:
    """How the projections are made, each projected option's assumptions and the lower bounds."""
    th = analysis["thresholds"]
    projected = [r for r in analysis["matrix"] if r.get("projection") and r["projection"].get("hours") is not None]
    parts = ["How: training steps = epochs x (images // (processes x batch)); each step takes the measured "
             "1 / it/s; the band is the "
             f"{th['confidence']:.0%} Student t interval of the mean step time (measurement uncertainty only: "
             f"drift over hours is in the stability section; no band from fewer than {MIN_STEPS_BAND} measured "
             "steps). Per-epoch costs are measured by the `epoch_costs` "
             "probe of the same record, and so is the upstream trainer's periodic work, counted as each "
             "option's `logging` section asks (read-backs of the loss terms every step and the progress-bar "
             "postfix every log_frequency steps; TensorBoard scalars every 5 x log_frequency and gradient "
             "histograms of every parameter every 20 x log_frequency when a logger is on; the collapse "
             "metrics with their SVD every 10 x log_frequency; empty_cache every 50 steps on cuda/mps; the "
             "first batch of every epoch does all of them). Checkpoints: one write per epoch at most (a "
             "scheduled epoch, or a better validation loss: an upper bound). Once: the warm-up steps' "
             "excess over steady ones, and the model build. Assumptions of each option's row:", ""]
    parts += [f"- {r['option']} ({r['machine']}): " + "; ".join(r["projection"]["assumptions"]) + "."
              + (f" Warning: {r['few_steps']}." if r.get("few_steps") else "") for r in projected] + [""]
    lb = [r["option"] for r in analysis["matrix"] if (r.get("projection") or {}).get("lower_bound")]
    if lb:
        parts += [f"Options {', '.join(lb)}: some per-epoch costs were not measured, so their totals are lower "
                  "bounds.", ""]
    return parts


def _projections(analysis: Mapping[str, Any]) -> list[str]:
    """## Time-to-train projections: the table, how it is made, or that nothing is projected."""
    parts = ["## Time-to-train projections", ""]
    prow = [_projection_row(r) for r in analysis["matrix"]
            if r.get("projection") and r["projection"].get("hours") is not None]
    if prow:
        parts += [_table(prow, ["option", "machine", "batch", "epochs", "steps/epoch", "training steps",
                                "s/step [95% band]", "steps h", "worker start-up h", "validation h", "checkpoints h",
                                "read-backs h", "TB scalars h", "grad histograms h", "collapse SVD h", "empty_cache h",
                                "once h", "total h [band]"]), ""]
        parts += _projection_method(analysis)
    else:
        parts += ["No option was measured, so nothing is projected.", ""]
    return parts


def _memory_room(k: str, v: Mapping[str, Any]) -> str:
    """One model's memory line: can the batch grow, is there room for a larger model."""
    grow = v.get("can_increase_batch")
    grow_s = NOT_MEASURED if grow is None else ("yes" if grow else "no")
    pred = v.get("predicted_max_batch")
    return (f"- {k}: can the batch grow? {grow_s}"
            + (f" (predicted to fit up to batch {pred} with a {v.get('margin', 0):.0%} margin"
               + (", an extrapolation beyond 4x the largest measured batch" if v.get("extrapolated") else "")
               + ")" if pred else "")
            + f"; room for a larger model? {(v.get('room_for_larger_model') or {}).get('answer', NOT_MEASURED)}"
            + (f" ({v['note']})" if v.get("note") else ""))


def _batch_and_workers(analysis: Mapping[str, Any]) -> list[str]:
    """### Batch size and workers: the choice per model config, and the memory room per model."""
    parts = ["### Batch size and workers", ""]
    grows = []
    for g in analysis["group_choices"]:
        grows.append([g["group"], g["batch"].get("batch") or "-", g["batch"]["reason"],
                      g["workers"].get("workers") if g["workers"].get("workers") is not None else "-",
                      g["workers"]["reason"]])
    parts += [_table(grows, ["model config", "batch", "why", "workers", "why"]) if grows else "nothing measured", ""]
    room = [_memory_room(k, v) for k, v in analysis["memory_fit"].items()]
    if room:
        parts += ["Memory (peak memory fitted against batch size per model; see the memory section and chart):",
                  ""] + room + [""]
    return parts


def _learning_rate(analysis: Mapping[str, Any]) -> list[str]:
    """### Learning rate and warm-up, per option."""
    parts = ["### Learning rate and warm-up", ""]
    lrows = []
    for r in analysis["matrix"]:
        lrows.append([r["option"], r.get("machine") or "-", f"{r['lr']['lr']:.2e}", r["lr"]["reason"],
                      f"{r['warmup']['warmup_epochs']:g}", r["warmup"]["reason"]])
    parts += [_table(lrows, ["option", "machine", "lr", "why", "warm-up epochs", "why"]), ""]
    return parts


def _model_size(analysis: Mapping[str, Any]) -> list[str]:
    """### Model size: each model config's time per sample against the fastest."""
    parts = ["### Model size", ""]
    if analysis["model_speed_ratios"]:
        parts += [_table([[x["machine"], f"b{x['batch']} w{x['workers']}", x["model"], _f(x["samples_per_s"], ".1f"),
                           f"{x['slowdown_vs_fastest']:.2f}x",
                           ("; ".join(filter(None, [("differs from " + x["fastest"] + " in " + ", ".join(x["differs"]))
                                                    if x.get("differs") else "",
                                                    f"warning: {x['warning']}" if x.get("warning") else ""])) or "-")]
                          for x in analysis["model_speed_ratios"]],
                         ["machine", "best at", "model", "samples/s", "time per sample vs fastest", "note"]),
                  "", "Each model config at its best measured batch and workers; time per sample sets the length "
                  "of an epoch. The guide guessed ViT-Small ~2x and ViT-Base ~4x slower than ViT-Tiny (the encoder "
                  "alone); a row that differs in more than the encoder is a whole-config ratio, not that one. "
                  "Measured.", ""]
    else:
        parts += ["Not measured: only one model config was measured (sweep `--models vit_tiny,vit_small,vit_base`).",
                  ""]
    return parts


def _efficient_variant(analysis: Mapping[str, Any]) -> list[str]:
    """### The efficient step variant: its saving against the reference step, per config."""
    parts = ["### The efficient step variant", ""]
    if analysis["efficient_savings"]:
        parts += [_table([[s["machine"], s["model"], f"b{s['batch']} w{s['workers']}", _f(s["reference_it_per_s"]),
                           _f(s["efficient_it_per_s"]), f"{s['time_ratio']:.2f}", f"{s['saving_frac']:.0%}"]
                          for s in analysis["efficient_savings"]],
                         ["machine", "model", "config", "reference it/s", "efficient it/s", "time ratio", "saved"]), ""]
    else:
        parts += ["Not measured: no config was measured in both variants (sweep `--variants reference,efficient`).", ""]
    return parts


def _recommendations(analysis: Mapping[str, Any]) -> list[str]:
    """## Recommendations: batch and workers, learning rate, model size, the efficient variant."""
    return (["## Recommendations", ""] + _batch_and_workers(analysis) + _learning_rate(analysis)
            + _model_size(analysis) + _efficient_variant(analysis))


def _success_criteria(analysis: Mapping[str, Any]) -> list[str]:
    """## Success criteria: the guide's five criteria, judged, and their count."""
    parts = ["## Success criteria", "", f"Judged on: {analysis['validation_subject']}.", ""]
    parts += [_table([[i + 1, c["name"], MARK[c["status"]], c["evidence"]] for i, c in enumerate(analysis["criteria"])],
                     ["#", "criterion", "verdict", "evidence"]), ""]
    verdicts = [c["status"] for c in analysis["criteria"]]
    if all(v == PASS for v in verdicts):
        parts += ["All five criteria pass: the guide says proceed to full training.", ""]
    else:
        parts += [f"{verdicts.count(PASS)} pass, {verdicts.count(FAIL)} fail, {verdicts.count(NOT_MEASURED)} not "
                  "measured.", ""]
    return parts


def _checklist(analysis: Mapping[str, Any]) -> list[str]:
    """## Post-validation checklist, section by section."""
    parts = ["## Post-validation checklist", ""]
    for sec in analysis["checklist"]:
        parts += [f"### {sec['section']}", ""]
        parts += [f"- {MARK[i['status']]}: {i['name']} ({i['evidence']})" for i in sec["items"]] + [""]
    return parts


def _lessons(analysis: Mapping[str, Any]) -> list[str]:
    """## Lessons learned, by heading."""
    parts = ["## Lessons learned", ""]
    for head, items in analysis["lessons"].items():
        parts += [f"### {head}", ""] + [f"- {x}" for x in items] + [""]
    return parts


def _charts(charts: Sequence[Any]) -> list[str]:
    """## Charts: each chart's title, image link and caption (nothing without charts)."""
    if not charts:
        return []
    parts = ["## Charts", ""]
    for c in charts:
        parts += [f"### {c.title}", "", f"![{c.title}]({c.rel})", "", c.caption, ""]
    return parts


def _extra_sections(extra: Sequence[tuple[str, str]]) -> list[str]:
    """The caller's own sections, each as ``## heading`` and its body."""
    parts: list[str] = []
    for head, body in extra:
        parts += [f"## {head}", "", body.rstrip(), ""]
    return parts


def _reference_baselines() -> list[str]:
    """## Reference baselines: the guide's CIFAR-10 linear-probe table (none of it measured here)."""
    return ["## Reference baselines (CIFAR-10 linear probe)", "",
            _table([list(r) for r in REFERENCE_BASELINES], ["method", "architecture", "epochs", "accuracy",
                                                            "what it is"]),
            "", "None of these was measured here; H-JEPA rows are the guide's targets, not results.", ""]


def _thresholds(th: Mapping[str, Any]) -> list[str]:
    """## Thresholds: every value the verdicts used, with its meaning."""
    parts = ["## Thresholds", "", "All verdicts above use these values (change them with `--thresholds FILE.yaml`):",
             ""]
    parts += [_table([[k, v, MEANINGS.get(k, "")] for k, v in th.items()], ["name", "value", "meaning"]), ""]
    return parts


def _measurements(records: Sequence[Mapping[str, Any]], sections: Sequence[ReportSection]) -> list[str]:
    """## Measurements: the plugins' sections of the records, one heading level down."""
    if not (sections and records):
        return []
    body = render_report(records, sections, title="Measurements")
    return ["## Measurements", ""] + [line.replace("## ", "### ", 1) if line.startswith("## ") else line
                                      for line in body.splitlines()[2:]]


def render_markdown(analysis: Mapping[str, Any], records: Sequence[Mapping[str, Any]], *,
                    title: str, sections: Sequence[ReportSection] = (), charts: Sequence[Any] = (),
                    config_files: Mapping[str, str] | None = None, intro: Sequence[str] = (),
                    extra: Sequence[tuple[str, str]] = ()) -> str:
    """The report's markdown: its sections in order, from the analysis and the records."""
    parts = [*_header(analysis, title, intro),
             *_recommendation(analysis),
             *_decision_matrix(analysis, config_files),
             *_machines_compared(analysis),
             *_projections(analysis),
             *_recommendations(analysis),
             *_success_criteria(analysis),
             *_checklist(analysis),
             *_lessons(analysis),
             *_charts(charts),
             *_extra_sections(extra),
             *_reference_baselines(),
             *_thresholds(analysis["thresholds"]),
             *_measurements(records, sections)]
    return "\n".join(parts).rstrip() + "\n"


@dataclass
class ChartLink:
    title: str
    rel: str
    caption: str


def write_report(records: Sequence[Mapping[str, Any]], out_path: str | Path, settings: ReportSettings, *,
                 sections: Sequence[ReportSection] = (), facts: Facts | None = None, intro: Sequence[str] = (),
                 extra: Sequence[tuple[str, str]] = (), chart_records: Sequence[Mapping[str, Any]] | None = None,
                 charts_extra: Any = None) -> dict[str, Any]:
    """Write ``report.md`` (at ``out_path``), ``charts/*.png``, ``configs/option_*.yaml`` and
    ``report.json`` (the analysis) next to it.  Returns the analysis with the paths."""
    out_path = Path(out_path)
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    replaced = replaced_report(out_path, settings)
    records = rejudge_records(records, settings.thresholds, settings.probes)  # the sections show the report's verdicts
    if chart_records is not None:
        chart_records = rejudge_records(chart_records, settings.thresholds, settings.probes)
    analysis = build_analysis(records, settings, facts)
    charts: list[ChartLink] = []
    if settings.charts:
        for c in render_charts(list(chart_records if chart_records is not None else records), out_dir / "charts"):
            charts.append(ChartLink(c.title, Path(c.path).relative_to(out_dir).as_posix(), c.caption))
        for c in (charts_extra(out_dir / "charts") if charts_extra else []):
            charts.append(ChartLink(c.title, Path(c.path).relative_to(out_dir).as_posix(), c.caption))
    config_files: dict[str, str] = {}
    (out_dir / "configs").mkdir(exist_ok=True)
    by_name = {o.name: o for o in settings.options}
    recommended = {(d["machine"], d["recommended"], d.get("world_size")) for d in analysis["decision"]["per_machine"]}
    for row in analysis["matrix"]:
        opt = by_name[row["option"]]
        name = row["config_file"]
        (out_dir / name).write_text(option_yaml(row, opt))
        config_files.setdefault(row["option"], name)
        row["recommended"] = (row.get("machine"), row["option"], row.get("world_size")) in recommended
    records = apply_worker_advice(records, analysis, settings.probes)
    analysis.pop("_worker_advice", None)
    note = export_note(settings.sources, out_dir)
    md = render_markdown(analysis, records, title=settings.title, sections=sections, charts=charts,
                         config_files=config_files, intro=[*intro, note] if note else intro, extra=extra)
    out_path.write_text(md)
    analysis["charts"] = [c.rel for c in charts]
    analysis["report"] = out_path.name
    analysis["rendered_with"] = {**settings.rendered_with(), "command": settings.command}
    (out_dir / "report.json").write_text(dumps(analysis) + "\n")
    analysis["replaced"] = replaced
    return analysis


def replaced_report(out_path: Path, settings: ReportSettings) -> str | None:
    """A sentence when ``out_path`` holds a report rendered with other settings (budget, thresholds,
    options, title) than ``settings``, which writing would replace; None otherwise."""
    import json

    meta = out_path.parent / "report.json"
    if not out_path.exists() or not meta.exists():
        return None
    try:
        before = json.loads(meta.read_text()).get("rendered_with")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(before, dict):
        return None
    now = settings.rendered_with()
    changed = [k for k in now if before.get(k) != now[k]]
    if not changed:
        return None
    how = f"`{before['command']}`" if before.get("command") else "other settings"
    return (f"replaced {out_path}, which was rendered by {how} (different "
            f"{', '.join(k.replace('_', ' ') for k in changed)}); "
            "run that command again to get it back")
