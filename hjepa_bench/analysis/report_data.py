"""Everything the decision report says, as data (pure: records in, a JSON-safe dict out).

``build_analysis`` judges the records against the options (decision matrix, projections,
recommendations), the success criteria, the checklist and the lessons learned;
:mod:`hjepa_bench.report.markdown` renders it.  ``hjepa-bench sweep``, ``report``,
``analyze`` and ``validate`` all come through here.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..options import TrainingOption, guide_options, model_key
from ..plugin.api import Probe
from ..record import machine, node_label, short_model_name, world_size
from ..thresholds import DEFAULTS, Thresholds
from .criteria import (
    Facts,
    checklist,
    facts_from_records,
    lessons_learned,
    pick_validation_record,
    status_counts,
    success_criteria,
)
from .decision_matrix import (
    decide,
    efficient_savings,
    evaluate_option,
    judge,
    machine_comparison,
    model_speed_ratios,
    recommend_batch,
    recommend_lr,
    recommend_warmup,
    recommend_workers,
    run_name,
)
from .memory import fit_memory
from .policy import shortfall
from .verdicts import advise_record, rejudge_records


@dataclass
class ReportSettings:
    thresholds: Thresholds = DEFAULTS
    options: list[TrainingOption] = field(default_factory=guide_options)
    budget_hours: float | None = None
    title: str = "hjepa-bench report"
    charts: bool = True
    sources: list[str] = field(default_factory=list)
    #: lines of the results files left out because they are not valid records ("PATH line N: why; skipped")
    skipped: list[str] = field(default_factory=list)
    #: the command line that rendered the report (named when a later report replaces it)
    command: str | None = None
    #: the probes asked about the records' entries (name -> Probe); None: the registered probes
    probes: Mapping[str, Probe] | None = None

    def rendered_with(self) -> dict[str, Any]:
        """What a report's verdicts depend on besides the records (compared before a report is replaced)."""
        return {"budget_hours": self.budget_hours, "thresholds": self.thresholds.as_dict(),
                "options": [[o.name, o.source] for o in self.options], "title": self.title}


def group_key(r: Mapping[str, Any]) -> tuple[Any, ...]:
    """The model config on a machine that one batch and one worker advice are about."""
    c = r["config"]  # (a valid record: read_results checked it)
    return (machine(r), model_key(c), c["bench"]["variant"], c["bench"]["precision"], world_size(r))


def _model_groups(records: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    return groups


def worker_advice_text(choice: Mapping[str, Any]) -> str | None:
    """The one sentence of a group's worker advice, as every section and config shows it."""
    if choice.get("workers") is None:
        return None
    return f"num_workers {choice['workers']}: {choice['reason']}"


def apply_worker_advice(records: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any],
                        probes: Mapping[str, Probe] | None = None) -> list[Mapping[str, Any]]:
    """Copies of ``records`` whose probe entries show the report's one worker advice for the record's
    model config on its machine (:meth:`~hjepa_bench.plugin.api.Probe.advise`: the bottleneck
    section then says what the recommendations, the checklist and the configs say; the probe keeps
    its own rule of thumb as ``probe_worker_advice``).  ``probes``: None, the registered probes."""
    by_key = analysis.get("_worker_advice") or {}
    out = []
    for r in records:
        try:
            text = by_key.get(group_key(r))
        except (KeyError, TypeError):
            text = None
        out.append(advise_record(r, {"workers": text}, probes) if text and isinstance(r, Mapping) else r)
    return out


def _group_label(key: tuple[Any, ...], records: Sequence[Mapping[str, Any]]) -> str:
    _, mk, variant, precision, ranks = key
    env = records[0].get("env") or {}
    node = node_label(records[0])
    return (f"{env.get('backend')} {short_model_name(mk[0])} L{mk[2]} P{mk[3]} {mk[6]}px "
            f"{variant} {precision}" + (f" depth {mk[1]}" if mk[1] != 12 else "")
            + (f", {ranks} data-parallel processes" if ranks > 1 else "") + (f" on {node}" if node else ""))


def build_analysis(records: Sequence[Mapping[str, Any]], settings: ReportSettings,
                   facts: Facts | None = None) -> dict[str, Any]:
    """Everything the report says, as data.  The records' probe verdicts are judged again with
    the settings' thresholds first (:func:`~hjepa_bench.analysis.verdicts.rejudge_records`).
    ``facts`` replaces the sweep facts (a training log or a validation run supplies its own,
    built from records judged with the same thresholds)."""
    th, probes = settings.thresholds, settings.probes
    recs = rejudge_records(list(records), th, probes)
    # what measured fewer steps than its minimum feeds no finding, choice or fit (analysis/policy.py)
    judged = [r for r in recs if shortfall(r) is None]
    # batch / workers per model group
    group_choices: list[dict[str, Any]] = []
    for key, rs in _model_groups(judged).items():
        b = recommend_batch(rs, th)
        w = recommend_workers(rs, b.get("batch"), th, probes)
        group_choices.append({"group": _group_label(key, rs), "key": key, "batch": b, "workers": w})
    vrec, _ = pick_validation_record(recs)
    vchoice = None
    if vrec is not None:
        c = vrec["config"]
        vkey = (machine(vrec), model_key(c), c["bench"]["variant"], c["bench"]["precision"], world_size(vrec))
        vchoice = next((g for g in group_choices if g["key"] == vkey), None)
    if facts is None:
        facts = facts_from_records(recs, workers_choice=vchoice and vchoice["workers"],
                                   batch_choice=vchoice and vchoice["batch"], thresholds=th, probes=probes)
    criteria = success_criteria(facts, th)
    checks = checklist(facts, th)
    validation_view = {"diverged": facts.diverged, "crashed": facts.crashed,
                       "loss_decrease_pct": facts.loss_decrease_pct, "loss_preliminary": facts.loss_preliminary}
    rows: list[dict[str, Any]] = []
    for opt in settings.options:
        for row in evaluate_option(opt, recs, th, settings.budget_hours, probes):
            judge(row, th, validation_view)
            t = opt.values()["training"]
            row["warmup"] = recommend_warmup(float(t["warmup_epochs"]), int(t["epochs"]), facts.warmup_spikes)
            row["lr"] = recommend_lr(float(t["lr"]), facts.lr_advice_detail, facts.lr, facts.loss_preliminary)
            rows.append(row)
    advice = {g["key"]: worker_advice_text(g["workers"]) for g in group_choices}
    machine_advice = [f"{g['group']}: {worker_advice_text(g['workers'])}" for g in group_choices
                      if worker_advice_text(g["workers"])]
    for row in rows:
        if not row.get("measured"):
            row["machine_worker_advice"] = machine_advice
    _name_config_files(rows)
    decision = decide(rows)
    ratios = model_speed_ratios(judged)
    savings = efficient_savings(judged)
    mem_fit = fit_memory([r for r in judged if r.get("status") in ("ok", "oom")], th.memory_margin_frac)
    findings = _findings(facts, rows, ratios, savings, th)
    recs_text = _recommendation_lines(decision, rows, vchoice, facts, savings)
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sources": settings.sources, "skipped": list(settings.skipped), "records": len(recs),
        "status_counts": status_counts(recs),
        "thresholds": th.as_dict(), "budget_hours": settings.budget_hours,
        "facts": facts.as_dict(), "criteria": criteria, "checklist": checks,
        "matrix": rows, "decision": decision,
        "group_choices": [{k: v for k, v in g.items() if k != "key"} for g in group_choices],
        "model_speed_ratios": ratios, "efficient_savings": savings, "machines": machine_comparison(recs),
        "memory_fit": {f"{k[0]} {k[1]}": v for k, v in mem_fit.items()},
        "lessons": lessons_learned(facts, criteria, findings, recs_text),
        "validation_subject": facts.subject,
        "_worker_advice": advice,  # group key -> advice (for the sections; not written to report.json)
    }


def _file_part(text: str) -> str:
    """``text`` as part of a file name: letters, digits, '_' and '-' only, so a name read from a
    record (the machine's backend, a node label) cannot lead out of the report folder."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)) or "_"


def _name_config_files(rows: Sequence[dict[str, Any]]) -> None:
    """``row["config_file"]``: ``configs/option_A.yaml``, with the machine's backend (and node) and the process count
    added when the option has rows on several machines or with several process counts."""
    for row in rows:
        same = [r for r in rows if r["option"] == row["option"]]
        suffix = ""
        if len({r.get("machine") for r in same}) > 1 and row.get("machine"):  # the backend, and a cluster's node
            suffix += "_" + "_".join(_file_part(part) for part in (row["machine"].split(" ")[0], row.get("node"))
                                     if part)
        if len({r.get("world_size") or 1 for r in same}) > 1 and (row.get("world_size") or 1) > 1:
            suffix += f"_{row['world_size']}proc"
        row["config_file"] = f"configs/option_{row['option']}{suffix}.yaml"


def _findings(f: Facts, rows: Sequence[Mapping[str, Any]], ratios: Sequence[Mapping[str, Any]],
              savings: Sequence[Mapping[str, Any]], th: Thresholds) -> list[str]:
    out = []
    if f.it_per_s is not None and not f.guide_differences:  # the guide's ~3.2 is for quick_val itself
        out.append(f"measured {f.it_per_s:.2f} it/s against the ~{th.expected_it_per_s:g} it/s the guide expects "
                   f"({f.it_per_s / th.expected_it_per_s:.2f}x)")
    for r in ratios:
        if r["slowdown_vs_fastest"] > 1.0:
            differs = r.get("differs") or []
            what = ("the encoder alone differs (the guide guessed ~2x for ViT-Small, ~4x for ViT-Base)"
                    if differs == ["encoder"] else
                    f"a whole-config ratio ({', '.join(differs)} differ), not the guide's encoder-size guess"
                    if "encoder" in differs else f"the same encoder; {' and '.join(differs) or 'the config'} "
                    + ("differs" if len(differs) == 1 else "differ"))
            out.append(f"{r['model']} takes {r['slowdown_vs_fastest']:.2f}x the time per sample of {r['fastest']} on "
                       f"{r['machine']}, each at its best measured batch: {what}"
                       + (f" (warning: {r['warning']})" if r.get("warning") else ""))
    for s in savings:
        out.append(f"the efficient step variant runs {s['model']} b{s['batch']} in {s['time_ratio']:.2f}x the "
                   f"reference step time ({s['saving_frac']:.0%} saved) on {s['machine']}")
    for row in rows:
        proj = row.get("projection") or {}
        if row.get("hours") is not None:
            lo, hi = row["hours_window"]
            if row["hours"] > hi * 1.5 or row["hours"] < lo / 1.5:
                out.append(f"option {row['option']} projects to {row['hours']:.1f} h on {row['machine']}, "
                           f"against the guide's {lo:g}-{hi:g} h")
        ov = proj.get("overhead_total_s")
        tr = (proj.get("train_s") or {}).get("mid")
        if ov and tr and ov / tr > 0.02:
            out.append("costs besides the steps (worker start-up, validation, checkpoints, the trainer's logging, "
                       f"one-time costs) add {ov / tr:.0%} to option "
                       f"{row['option']}'s training steps")
    if f.bottleneck == "data-bound":
        out.append(f"the step is data-bound (data wait {f.data_wait_frac or 0:.0%})")
    if f.fallbacks:
        out.append("CPU fallbacks: " + "; ".join(f.fallbacks))
    out.extend(n for n in f.notes if n.startswith("finding: "))
    return out


def _recommendation_lines(decision: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                          vchoice: Mapping[str, Any] | None, f: Facts,
                          savings: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for d in decision["per_machine"]:
        if d["recommended"]:
            row = next(r for r in rows if r["option"] == d["recommended"] and r.get("machine") == d["machine"]
                       and (r.get("world_size") or 1) == (d.get("world_size") or 1))
            per = " per process" if (row.get("world_size") or 1) > 1 else ""
            workers = (row.get("workers_choice") or {}).get("workers", row["workers"])  # the one worker advice
            out.append(f"run option {run_name(row)} ({row['title']}) on {d['machine']}: batch {row['batch']}{per}, "
                       f"{workers} workers, lr {row['lr']['lr']:.2e}, warm-up {row['warmup']['warmup_epochs']:g} "
                       f"epochs, projected {row['hours']:.1f} h ({row['config_file']})")
        else:
            out.append(f"on {d['machine']} no option fits: {d['reasons'][0] if d['reasons'] else ''}")
    if vchoice:
        if vchoice["batch"].get("batch") is not None:
            out.append(f"batch size: {vchoice['batch']['reason']}")
        if vchoice["workers"].get("workers") is not None:
            out.append(f"workers: {vchoice['workers']['reason']}")
    if f.lr_advice and f.loss_preliminary and not f.diverged:
        # the LR table's rule: no validation run, no LR judgement (each option keeps its own base LR)
        out.append("learning rate: each option's own (no validation run to judge the LR: a benchmark's first steps "
                   "do not; hjepa-bench validate does)")
    elif f.lr_advice:
        out.append(f"learning rate: {f.lr_advice}" + (" (preliminary, from the first steps of training: not applied "
                                                      "to the configs; confirm with hjepa-bench validate)"
                                                      if f.loss_preliminary else ""))
    if savings:
        s = max(savings, key=lambda s: s["saving_frac"])
        out.append(f"the efficient step (token dropping, fused attention) would save {s['saving_frac']:.0%} "
                   "of the step time; the upstream trainer runs the reference step")
    return out
