"""The validation guide's success criteria, post-validation checklist and "Lessons
Learned", judged from measured facts (pure: plain data in, plain data out).

Facts come from three places that share this module: a sweep's result records
(:func:`facts_from_records`), an upstream training log (``hjepa-bench analyze``)
and a validation run (``hjepa-bench validate``).  Every verdict is ``pass``,
``fail`` or ``not measured``, and carries the number behind it; the thresholds
are :class:`hjepa_bench.thresholds.Thresholds`.  One rule, :func:`fact_verdicts`,
judges each fact once; the criteria combine those verdicts and the checklist shows
them, so the two lists cannot disagree.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

from ..config import DEFAULTS as CONFIG_DEFAULTS
from ..format import finite, fmt_finite, fmt_gib, fmt_or_dash
from ..options import model_key
from ..plugin.api import Probe
from ..record import device_name, label, machine, samples_per_s, short_model_name, world_size
from ..status import FAIL, NOT_MEASURED, PASS
from ..thresholds import DEFAULTS as DEFAULT_THRESHOLDS
from ..thresholds import Thresholds
from .policy import shortfall
from .verdicts import probe_facts, probe_verdicts

CRASH_STATUSES = ("error", "crashed", "timeout")


@dataclass
class Facts:
    """What was measured about one training setup (None: not measured)."""

    source: str  # sweep | log | validate
    subject: str  # what was judged, in words
    #: every way the judged run differs from the guide's validation run (quick_val); criteria about
    #: that run's speed, variance, memory and bottleneck are "not measured" unless it is empty
    guide_differences: list[str] | None = None
    device: str | None = None
    backend: str | None = None
    # stability
    crashed: bool | None = None  # a validation run (or a logged training run) crashed
    crash_detail: str | None = None
    #: configs of a sweep that failed (timed out, crashed, errored): benchmark runs, not the validation
    #: run, so they are listed and never fail the guide's "no crashes" criterion
    benchmark_failures: list[str] = field(default_factory=list)
    epochs_planned: int | None = None
    epochs_completed: int | None = None
    non_finite: bool | None = None
    # performance
    it_per_s: float | None = None
    step_cv_pct: float | None = None
    #: the stability probe's slow-down over the run, as text, when it judged one significant (the
    #: variance criterion is the CV; a drift is shown beside it so the two sections read alike)
    step_drift: str | None = None
    speed_method: str | None = None
    # learning
    loss_start: float | None = None
    loss_end: float | None = None
    loss_decrease_pct: float | None = None
    loss_trend: str | None = None
    loss_noisy: bool | None = None
    diverged: bool | None = None
    warmup_spikes: int | None = None
    loss_points: int | None = None
    loss_epoch_values: list[float] | None = None  # per-epoch losses a log's summaries print (shown, not judged)
    loss_preliminary: bool = False
    lr: float | None = None
    lr_advice: str | None = None
    lr_advice_detail: dict[str, Any] | None = None  # {"action", "suggested_lr", "trigger"} (the guide's LR rules)
    # quality
    collapse: dict[str, Any] | None = None  # flags + rankme_ratio, effective_rank, d
    # memory
    oom: bool | None = None
    leak: bool | None = None  # None: not judged (too few settled steps), see leak_detail
    leak_detail: str | None = None
    memory_pressure: bool | None = None
    peak_bytes: int | None = None
    headroom_frac: float | None = None
    # compatibility
    backend_errors: list[str] = field(default_factory=list)
    fallbacks: list[str] | None = None
    # bottlenecks
    bottleneck: str | None = None
    data_wait_frac: float | None = None
    bottleneck_advice: str | None = None
    cpu_saturated: bool | None = None
    workers_more_needed: bool | None = None  # still data-bound with the most workers measured
    # system optimisation
    workers_tuned: dict[str, Any] | None = None  # {"value", "evidence"}
    batch_tuned: dict[str, Any] | None = None
    logging_stall: dict[str, Any] | None = None  # {"period_steps", "cost_pct", "log_frequency"}
    notes: list[str] = field(default_factory=list)
    #: the verdicts probes judged themselves (:func:`hjepa_bench.analysis.verdicts.probe_verdicts`): each
    #: a checklist item that feeds the success criterion it names
    probe_verdicts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["probe_verdicts"]:
            del out["probe_verdicts"]  # (a report without any reads as it always did)
        return out


#: facts a probe may give (:meth:`hjepa_bench.plugin.api.Probe.facts`) besides the fields of
#: :class:`Facts`: what the decision matrix reads of each record
RECORD_FACTS: dict[str, str] = {
    "lr_applied": "the learning rate the run applied at its last analysed step",
    "lr_in_warmup": "whether the learning-rate schedule was still in its warm-up then",
    "cpu_cores": "the logical CPU cores the run had",
    "own_cpu_pct": "the CPU time of the run's own processes, % of all cores",
    "epoch_costs": "what an epoch costs besides its steps (analysis.projection.costs_from_entry)",
}
FACT_NAMES = frozenset(f.name for f in fields(Facts)) | frozenset(RECORD_FACTS)


def verdict(vid: str, name: str, status: str, value: Any, evidence: str) -> dict[str, Any]:
    return {"id": vid, "name": name, "status": status, "value": value, "evidence": evidence}


#: error messages that come from the device backend (an operator the device lacks, a driver or
#: runtime error), as opposed to any other crash; a crash is a stability failure either way
BACKEND_ERROR_RE = re.compile(r"\b(?:mps|cuda|cudnn|cublas|cufft|nccl|metal|hip|rocm|xpu)\b|"
                              r"not (?:currently )?implemented for|NotImplementedError", re.IGNORECASE)
PRELIMINARY = ("not measured (preliminary): a benchmark covers only the first steps of training "
               "(hjepa-bench validate runs the validation run)")


def is_backend_error(message: Any) -> bool:
    """Whether an error message comes from the device backend (:data:`BACKEND_ERROR_RE`)."""
    return bool(message) and bool(BACKEND_ERROR_RE.search(str(message)))


def combine(statuses: Iterable[str]) -> str:
    """A criterion over several facts: fail if any fails, pass if all pass, else not measured."""
    statuses = list(statuses)
    return FAIL if FAIL in statuses else PASS if statuses and all(x == PASS for x in statuses) else NOT_MEASURED


# --------------------------------------------------------------------------- the one rule
def fact_verdicts(f: Facts, th: Thresholds) -> dict[str, dict[str, Any]]:
    """Every fact judged once: ``{fact: {"status", "evidence", "value"}}``.

    The success criteria (:func:`success_criteria`) and the checklist (:func:`checklist`) are
    both built from these verdicts and nothing else, so a checklist item and the criterion
    that covers the same fact cannot disagree:

    * ``crash`` (criterion 1, "No crashes"): a crash, NaN/Inf or missing epochs fail;
    * ``speed``, ``variance`` (criterion 2, "Training speed", "Speed variance");
    * ``loss_drop``, ``divergence``, ``warmup`` (criterion 3, "Loss improved", "No
      divergence", "Warmup schedule"): a preliminary loss (a benchmark's first steps) is not
      judged, except that a divergence fails;
    * ``collapse`` (criterion 4): flags of a model trained fewer than ``min_quality_steps``
      steps are shown, not judged;
    * ``compatibility`` (criterion 5, and "MPS compatibility" on MPS): backend errors fail,
      CPU fallbacks are listed; a crash that is not a backend error is criterion 1's;
    * ``memory``, ``bottleneck``, ``loss_steady``, ``workers``, ``batch``, ``logging``: the
      checklist's own items.  ``bottleneck`` fails when the report advises changing the worker
      count (data-bound, CPU saturated, or still data-bound at the most workers measured);
    * ``PROBE.fact``: the verdicts a probe judged itself (``Facts.probe_verdicts``), each with
      the criterion it feeds (``criterion``) and its checklist line (``name``).
    """
    out: dict[str, dict[str, Any]] = {}
    for judge in (_crash_verdicts, _speed_verdicts, _loss_verdicts, _collapse_verdicts, _compatibility_verdicts,
                  _memory_verdicts, _bottleneck_verdicts, _tuning_verdicts):
        out.update(judge(f, th))
    for v in f.probe_verdicts:
        out[v["fact"]] = {"status": v["status"], "evidence": v["evidence"], "value": v.get("value"),
                          "criterion": v["criterion"], "name": v["name"]}
    return out


Verdicts = dict[str, dict[str, Any]]


def _v(status: str, evidence: str, value: Any = None) -> dict[str, Any]:
    return {"status": status, "evidence": evidence, "value": value}


EPOCHS_NOT_MEASURED = "all epochs: not measured (a benchmark runs steps; hjepa-bench validate runs the epochs)"


def _crash_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``crash`` and ``epochs``: a sweep's failed configs are benchmark failures, listed, not crashes."""
    failed = ("benchmark failures, not crashes of a validation run (hjepa-bench validate runs one): "
              + "; ".join(f.benchmark_failures)) if f.benchmark_failures else ""
    out: Verdicts = {}
    if f.crashed is None and f.non_finite is None:
        out["crash"] = _v(NOT_MEASURED, failed or "nothing ran")
    elif f.benchmark_failures and not f.crashed and not f.non_finite:
        out["crash"] = _v(NOT_MEASURED, failed)
    else:
        problems = []
        if f.crashed:
            problems.append(f"crashed ({f.crash_detail or 'error'})")
        if f.non_finite:
            problems.append("NaN/Inf in the loss or gradients")
        if f.epochs_planned is not None and f.epochs_completed is not None and f.epochs_completed < f.epochs_planned:
            problems.append(f"{f.epochs_completed} of {f.epochs_planned} epochs completed")
        epochs = (f"{f.epochs_completed}/{f.epochs_planned} epochs" if f.epochs_planned is not None
                  else EPOCHS_NOT_MEASURED)
        out["crash"] = _v(FAIL if problems else PASS,
                          "; ".join(problems + ([failed] if failed else [])) if problems else
                          f"no crash, losses and gradients finite; {epochs}", f.epochs_completed)
    if f.epochs_planned is None or f.epochs_completed is None:
        out["epochs"] = _v(NOT_MEASURED, EPOCHS_NOT_MEASURED)
    else:
        out["epochs"] = _v(PASS if f.epochs_completed >= f.epochs_planned else FAIL,
                           f"{f.epochs_completed}/{f.epochs_planned} epochs", f.epochs_completed)
    return out


def _not_guide(f: Facts) -> str:
    """Why a fact about the guide's validation run is not judged on another run."""
    return ("not judged: the judged run is not the guide's quick_val (it differs in "
            f"{', '.join(d.split(' (')[0] for d in f.guide_differences or [])}; see 'Judged on')")


def _speed_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``speed`` and ``variance``, judged only on the guide's validation run."""
    other_run = bool(f.guide_differences)
    out: Verdicts = {}
    if f.it_per_s is None:
        out["speed"] = _v(NOT_MEASURED, "no speed measured")
    elif other_run:
        out["speed"] = _v(NOT_MEASURED, f"{f.it_per_s:.2f} it/s, {_not_guide(f)}", round(f.it_per_s, 3))
    else:
        fast = f.it_per_s >= th.min_it_per_s
        out["speed"] = _v(PASS if fast else FAIL, f"{f.it_per_s:.2f} it/s ({'>=' if fast else '<'} "
                          f"{th.min_it_per_s:g}; the guide expects ~{th.expected_it_per_s:g})", round(f.it_per_s, 3))
    if f.step_cv_pct is None:
        out["variance"] = _v(NOT_MEASURED, "CV -: not measured (too few measured steps; measure longer)")
    elif other_run:
        out["variance"] = _v(NOT_MEASURED, f"CV {f.step_cv_pct:.1f}%, {_not_guide(f)}", f.step_cv_pct)
    else:
        steady = f.step_cv_pct < th.max_step_cv_pct
        drift = f"; the step time also slows down {f.step_drift} (see the stability section)" if f.step_drift else ""
        out["variance"] = _v(PASS if steady else FAIL, f"CV {f.step_cv_pct:.1f}% ({'<' if steady else '>='} "
                             f"{th.max_step_cv_pct:g}%){drift}", f.step_cv_pct)
    return out


def _too_few_losses(f: Facts) -> str:
    """Why the loss is not judged: too few values for the smoothed windows."""
    too_few = (f"{f.loss_points} loss value(s)" if f.loss_points is not None else "no loss series")
    too_few += ": too few for the smoothed start and end windows"
    if f.loss_epoch_values:
        vals = f.loss_epoch_values
        too_few += (f" (the epoch summaries' losses {' -> '.join(f'{v:.4g}' for v in vals)}, {len(vals)} value(s), "
                    "are shown, not judged)")
    return too_few


def _loss_drop_verdict(f: Facts, th: Thresholds) -> dict[str, Any]:
    if f.loss_decrease_pct is None:
        return _v(NOT_MEASURED, _too_few_losses(f))
    down = f"down {fmt_or_dash(f.loss_decrease_pct, suffix='%')}"
    numbers = (f"{f.loss_start:.4g} -> {f.loss_end:.4g}, {down} over {f.loss_points} points"
               if f.loss_start is not None and f.loss_end is not None else down)
    if f.loss_preliminary:
        return _v(NOT_MEASURED, f"{numbers}; {PRELIMINARY}", f.loss_decrease_pct)
    ok_drop = f.loss_decrease_pct >= th.min_loss_decrease_pct
    return _v(PASS if ok_drop else FAIL, numbers + ("" if ok_drop else f" (< {th.min_loss_decrease_pct:g}%)"),
              f.loss_decrease_pct)


def _warmup_verdict(f: Facts) -> dict[str, Any]:
    if f.warmup_spikes is None:
        return _v(NOT_MEASURED, "warm-up spikes not measured")
    spikes = f"{f.warmup_spikes} loss spike(s) during warm-up"
    if f.loss_decrease_pct is None and not f.loss_preliminary:
        # the same loss series the learning criterion needs: a warm-up is not judged from fewer values
        return _v(NOT_MEASURED, f"{spikes}; {_too_few_losses(f)}", f.warmup_spikes)
    if f.loss_preliminary:
        return _v(NOT_MEASURED, f"{spikes}; {PRELIMINARY}", f.warmup_spikes)
    return _v(FAIL if f.warmup_spikes else PASS, spikes, f.warmup_spikes)


def _loss_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``loss_drop``, ``divergence``, ``warmup`` and ``loss_steady``."""
    if f.diverged is None:
        divergence = _v(NOT_MEASURED, NOT_MEASURED)
    elif f.diverged:
        divergence = _v(FAIL, "diverged", True)
    else:
        divergence = _v(NOT_MEASURED if f.loss_preliminary else PASS,
                        PRELIMINARY if f.loss_preliminary else "no divergence", False)
    steady = _v(NOT_MEASURED if f.loss_trend is None or f.loss_preliminary else
                PASS if f.loss_trend == "decreasing" and not f.loss_noisy else FAIL,
                NOT_MEASURED if f.loss_trend is None else f"trend {f.loss_trend}"
                + (", noisy" if f.loss_noisy else ", not noisy" if f.loss_noisy is False else "")
                + (" (preliminary)" if f.loss_preliminary else ""))
    return {"loss_drop": _loss_drop_verdict(f, th), "divergence": divergence, "warmup": _warmup_verdict(f),
            "loss_steady": steady}


def _collapse_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``collapse``: the flags, judged only from a model trained long enough."""
    if not f.collapse:
        return {"collapse": _v(NOT_MEASURED, "feature quality not measured (run with --probes features, or "
                                             "validate/eval)")}
    c = f.collapse
    flags = [k for k in ("low_rank", "low_variance", "all_alike") if c.get(k)]
    ev = (f"effective rank {fmt_finite(c.get('effective_rank'), '.1f')} of D={c.get('d')}, RankMe/D "
          f"{fmt_finite(c.get('rankme_ratio'))}, mean cosine {fmt_finite(c.get('mean_cosine'))}"
          + (f"; flags: {', '.join(flags)}" if flags else "; no collapse flags"))
    if c.get("note"):
        ev += f"; {c['note']}"
    if c.get("quality_judged", True):
        return {"collapse": _v(FAIL if flags or c.get("collapsed") else PASS, ev, c.get("rankme_ratio"))}
    return {"collapse": _v(NOT_MEASURED, f"{ev}; {c.get('quality_note') or 'untrained: not judged'}",
                           c.get("rankme_ratio"))}


def _compatibility_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``compatibility`` (backend errors fail, CPU fallbacks are listed) and ``mps``: the same on MPS."""
    if f.crashed is None and not f.backend_errors and f.fallbacks is None:
        comp = _v(NOT_MEASURED, "nothing ran")
    else:
        fb = ("CPU fallbacks: " + "; ".join(f.fallbacks)) if f.fallbacks else (
            "no CPU fallback seen" if f.fallbacks is not None else "CPU fallbacks not measured (--probes svd)")
        errors = ("backend errors: " + "; ".join(f.backend_errors) + "; " if f.backend_errors
                  else "no backend errors; ")
        comp = _v(FAIL if f.backend_errors else PASS if f.fallbacks is not None else NOT_MEASURED, errors + fb,
                  len(f.backend_errors))
    if f.backend == "mps":
        mps = _v(comp["status"], "ran on MPS: " + comp["evidence"])
    else:
        mps = _v(NOT_MEASURED, f"ran on {f.backend or 'an unknown device'}, not MPS")
    return {"compatibility": comp, "mps": mps}


def _memory_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``memory``: no OOM, no leak, no pressure (judged only on the guide's validation run)."""
    if f.oom is None and f.leak is None and f.memory_pressure is None:
        return {"memory": _v(NOT_MEASURED, "memory probe not run")}
    bad = [w for w, flag in (("out of memory", f.oom), ("leak suspected", f.leak),
                             ("memory pressure", f.memory_pressure)) if flag]
    peak = f"peak {fmt_gib(f.peak_bytes)}" + (
        f", headroom {f.headroom_frac:.0%}" if f.headroom_frac is not None else "")
    if bad:
        return {"memory": _v(FAIL, "; ".join(bad) + (f" ({f.leak_detail})" if f.leak and f.leak_detail else ""))}
    if f.guide_differences:
        return {"memory": _v(NOT_MEASURED, f"no OOM, {peak}; {_not_guide(f)}")}
    if f.leak is None:
        return {"memory": _v(NOT_MEASURED, f"no OOM, {peak}; leak not judged: "
                             + (f.leak_detail or "memory probe not run"))}
    return {"memory": _v(PASS, f"no OOM, no leak, {peak}")}


def _bottleneck_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``bottleneck``: fails when the report advises changing the worker count."""
    if f.bottleneck is None:
        return {"bottleneck": _v(NOT_MEASURED, "bottleneck not measured (the bottleneck probe did not run)")}
    other_run = bool(f.guide_differences)
    problems = [w for w, flag in (("data-bound", f.bottleneck == "data-bound"), ("CPU saturated", f.cpu_saturated),
                                  ("still data-bound with the most workers measured", f.workers_more_needed))
                if flag]
    ev = (f"{f.bottleneck}" + (f", data wait {f.data_wait_frac:.0%}" if f.data_wait_frac is not None else "")
          + (f"; {f.bottleneck_advice}" if f.bottleneck_advice else ""))
    return {"bottleneck": _v(NOT_MEASURED if other_run else FAIL if problems else PASS,
                             (f"{', '.join(problems)}: " if problems else "") + ev
                             + (f"; {_not_guide(f)}" if other_run else ""), f.bottleneck)}


def _tuning_verdicts(f: Facts, th: Thresholds) -> Verdicts:
    """``workers``, ``batch`` (tuned when two or more values were measured) and ``logging`` (no costly stalls)."""
    out: Verdicts = {}
    if not f.workers_tuned:
        out["workers"] = _v(NOT_MEASURED, "only one worker count measured; sweep --workers 2,4,6,8")
    else:
        out["workers"] = _v(PASS, f.workers_tuned["evidence"], f.workers_tuned["value"])
    if not f.batch_tuned:
        out["batch"] = _v(NOT_MEASURED, "only one batch size measured; sweep --batch-sizes 24,32,48,64")
    else:
        out["batch"] = _v(PASS, f.batch_tuned["evidence"], f.batch_tuned["value"])
    if f.logging_stall is None:
        out["logging"] = _v(NOT_MEASURED, "needs a training log (hjepa-bench analyze) or a long run with periodic "
                                          "stalls")
    else:
        cost = f.logging_stall.get("cost_pct")
        period = f.logging_stall.get("period_steps")
        bad = cost is not None and cost > th.logging_stall_max_pct
        out["logging"] = _v(FAIL if bad else PASS,
                            (f"periodic stalls every {period} steps cost {cost:.1f}% of the time (limit "
                             f"{th.logging_stall_max_pct:g}%)" if period and cost is not None else
                             f.logging_stall.get("evidence", "no periodic stalls")), cost)
    return out


# --------------------------------------------------------------------------- the five criteria
def success_criteria(f: Facts, th: Thresholds) -> list[dict[str, Any]]:
    """The guide's five criteria, each the combination (:func:`combine`) of its facts' verdicts."""
    v = fact_verdicts(f, th)
    crash, epochs = v["crash"], v["epochs"]
    out = [verdict("stability", "Stability: no crash, all epochs, no NaN/Inf",
                   FAIL if crash["status"] == FAIL else combine([crash["status"], epochs["status"]]),
                   crash["value"], crash["evidence"])]
    name = f"Performance: >= {th.min_it_per_s:g} it/s, step-time CV < {th.max_step_cv_pct:g}%"
    speed, var = v["speed"], v["variance"]
    if speed["value"] is None:
        out.append(verdict("performance", name, combine([speed["status"], var["status"]]), None, speed["evidence"]))
    elif f.guide_differences:  # both facts not judged for the same reason: said once
        cv = "-" if f.step_cv_pct is None else f"{f.step_cv_pct:.1f}%"
        out.append(verdict("performance", name, NOT_MEASURED, speed["value"],
                           f"{f.it_per_s:.2f} it/s, CV {cv}: " + speed["evidence"].split(", ", 1)[1]
                           + (f"; {f.speed_method}" if f.speed_method else "")))
    else:
        ev = f"{speed['evidence']}, {var['evidence']}" + (f"; {f.speed_method}" if f.speed_method else "")
        if var["status"] == NOT_MEASURED and speed["status"] == PASS:
            ev += "; the variance was not measured, so the criterion is not complete"
        out.append(verdict("performance", name, combine([speed["status"], var["status"]]), speed["value"], ev))
    name = f"Learning: loss down >= {th.min_loss_decrease_pct:g}% (smoothed), no divergence, warm-up without spikes"
    parts = [v["loss_drop"], v["divergence"], v["warmup"]]
    ev = v["loss_drop"]["evidence"]
    ev += "".join(f"; {p['evidence']}" for p in parts[1:] if p["status"] == FAIL)
    if not f.loss_preliminary:
        ev += "".join(f"; {p['evidence']}" for p in parts[1:] if p["status"] == NOT_MEASURED)
    dec = f.loss_decrease_pct
    out.append(verdict("learning", name, combine(p["status"] for p in parts),
                       None if dec is None else round(dec, 2), ev))
    out.append(verdict("quality",
                       f"Quality: no representation collapse (effective rank >= {th.low_rank_frac:.0%} of D, "
                       "variance, cosine)", v["collapse"]["status"], v["collapse"]["value"],
                       v["collapse"]["evidence"]))
    out.append(verdict("compatibility", "Compatibility: no backend errors; CPU fallbacks listed",
                       v["compatibility"]["status"], v["compatibility"]["value"], v["compatibility"]["evidence"]))
    return [_with_probe_verdicts(c, f.probe_verdicts) for c in out]


def _with_probe_verdicts(criterion: dict[str, Any], probe_verdicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``criterion`` combined (:func:`combine`) with the probes' verdicts that feed it, whose evidence it adds."""
    feeding = [p for p in probe_verdicts if p["criterion"] == criterion["id"]]
    if not feeding:
        return criterion
    return {**criterion, "status": combine([criterion["status"], *(p["status"] for p in feeding)]),
            "evidence": criterion["evidence"] + "".join(f"; {p['name']}: {p['evidence']}" for p in feeding)}


# --------------------------------------------------------------------------- the checklist
#: The guide's post-validation checklist: (section, [(item, fact)]); names with {} take thresholds.
CHECKLIST: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Training Stability", (("No crashes or errors during validation", "crash"),
                            ("Loss decreased steadily", "loss_steady"),
                            ("No memory issues", "memory"), ("MPS compatibility confirmed", "mps"))),
    ("Performance Acceptable", (("Training speed >= {min_it_per_s:g} it/s (minimum)", "speed"),
                                ("Speed variance < {max_step_cv_pct:g}%", "variance"),
                                ("No major bottlenecks identified", "bottleneck"))),
    ("Model Learning", (("Loss improved by >= {min_loss_decrease_pct:g}% from initial", "loss_drop"),
                        ("No divergence observed", "divergence"), ("Warmup schedule working properly", "warmup"))),
    ("System Optimization", (("num_workers tuned", "workers"), ("batch_size optimized", "batch"),
                             ("No unnecessary logging slowing things down", "logging"))),
)


#: the checklist section of the verdicts probes judged themselves (shown when a probe gave one)
PROBE_SECTION = "Probes' own checks"


def checklist(f: Facts, th: Thresholds) -> list[dict[str, Any]]:
    """The guide's post-validation checklist, in its four sections; each item is its fact's verdict.
    The verdicts probes judged themselves follow in a fifth section, :data:`PROBE_SECTION`."""
    v = fact_verdicts(f, th)
    names = th.as_dict()
    out = [{"section": section, "items": [{"name": name.format(**names), "fact": fact, **v[fact]}
                                          for name, fact in items]}
           for section, items in CHECKLIST]
    if f.probe_verdicts:
        out.append({"section": PROBE_SECTION, "items": [
            {"name": p["name"], "fact": p["fact"], "status": p["status"], "evidence": p["evidence"],
             "value": p.get("value"), "criterion": p["criterion"]} for p in f.probe_verdicts]})
    return out


# --------------------------------------------------------------------------- lessons learned
def lessons_learned(f: Facts, criteria: Sequence[Mapping[str, Any]], findings: Sequence[str] = (),
                    recommendations: Sequence[str] = ()) -> dict[str, list[str]]:
    """The guide's "Lessons Learned" template, filled from verdicts and findings."""
    worked = [f"{c['name'].split(':')[0]}: {c['evidence']}" for c in criteria if c["status"] == PASS]
    improve = [f"{c['name'].split(':')[0]}: {c['evidence']}" for c in criteria if c["status"] == FAIL]
    not_measured = [c["name"].split(":")[0] for c in criteria if c["status"] == NOT_MEASURED]
    if not_measured:
        improve.append("not measured yet: " + ", ".join(not_measured))
    return {"What Worked Well": worked or ["nothing passed yet"],
            "What Needs Improvement": improve or ["nothing failed"],
            "Unexpected Findings": list(findings) or ["none"],
            "Recommendations for Full Training": list(recommendations) or ["none"]}


# --------------------------------------------------------------------------- facts from sweep records
def validation_model_key() -> tuple[Any, ...]:
    return model_key(CONFIG_DEFAULTS)


def guide_differences(record: Mapping[str, Any]) -> list[str]:
    """Every way ``record``'s run differs from the validation run the guide's criteria are about
    (quick_val: the config defaults, one process, the reference step), e.g. ``"2 encoder blocks
    (quick_val: 12)"``; empty when it is that run."""
    c, q = record.get("config") or {}, CONFIG_DEFAULTS
    m, qm = c.get("model") or {}, q["model"]
    p, qp = m.get("predictor") or {}, qm["predictor"]
    d, qd = c.get("data") or {}, q["data"]
    q_workers = d.get("num_workers") if has_guide_workers(record) else q["data"]["num_workers"]
    checks = (
        ("encoder", short_model_name(m.get("encoder_type")), short_model_name(qm["encoder_type"]), "{}"),
        ("encoder blocks", m.get("encoder_depth", 12), qm["encoder_depth"], "{} encoder blocks"),
        ("levels", m.get("num_hierarchies"), qm["num_hierarchies"], "{} levels"),
        ("predictor depth", p.get("depth"), qp["depth"], "predictor depth {}"),
        ("predictor heads", p.get("num_heads"), qp["num_heads"], "{} predictor heads"),
        ("predictor mlp ratio", p.get("mlp_ratio"), qp["mlp_ratio"], "predictor mlp ratio {}"),
        ("image size", d.get("image_size"), qd["image_size"], "{} px"),
        ("batch", d.get("batch_size"), qd["batch_size"], "batch {}"),
        ("workers", d.get("num_workers"), q_workers, "{} workers"),
        ("processes", world_size(record), 1, "{} processes"),
        ("step", (c.get("bench") or {}).get("variant", "reference"), "reference", "the {} step"),
    )
    out = []
    for _, got, want, fmt in checks:
        if got is not None and str(got) != str(want) and not (_num_eq(got, want)):
            out.append(f"{fmt.format(got)} (quick_val: {fmt.format(want)})")
    return out


def has_guide_workers(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` ran quick_val's DataLoader workers: its 4, or as many as the machine has
    cores where that is fewer (the default worker count is capped there: more workers than cores
    only compete with the step)."""
    want = int(CONFIG_DEFAULTS["data"]["num_workers"])
    got = ((record.get("config") or {}).get("data") or {}).get("num_workers")
    cores = (record.get("env") or {}).get("cpu_count_logical")
    return got == want or (isinstance(cores, int) and 0 < cores < want and got == cores)


def _num_eq(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


GUIDE_RUN = ("a run of quick_val itself (ViT-Tiny, 12 blocks, 2 levels, predictor depth 2, 224 px, batch 32, "
             "4 workers, one process; `hjepa-bench sweep` measures it, or `hjepa-bench validate`)")


def pick_validation_record(records: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, str]:
    """The record the criteria judge: the validation run's config (quick_val: ViT-Tiny,
    2 levels, predictor depth 2, 224 px, batch 32, 4 workers, reference step) when
    measured, else the closest measured one (said in the note)."""
    ok = [r for r in records
          if r.get("status") == "ok" and (r.get("config") or {}).get("bench", {}).get("variant") == "reference"]
    ok = ok or [r for r in records if r.get("status") == "ok"]
    short = [r for r in ok if shortfall(r) is not None]
    ok = [r for r in ok if shortfall(r) is None]  # nothing is judged from fewer than the minimum steps
    if not ok and short:
        why = cast(dict[str, Any], shortfall(short[0]))  # (short: the records with a shortfall)
        return None, f"no configuration measured its minimum steps ({label(short[0])}: {why['text']})"
    if not ok:
        return None, "no configuration ran to completion"
    vkey = validation_model_key()

    def key(r: Mapping[str, Any]) -> tuple[bool, bool, bool, bool, float]:
        c = r["config"]
        try:
            same_model = model_key(c) == vkey
        except (KeyError, TypeError):
            same_model = False
        d = c.get("data", {})
        return (same_model, d.get("batch_size") == 32, has_guide_workers(r),
                world_size(r) == 1,  # the validation run is one process: a data-parallel job only if nothing else
                samples_per_s(r) or 0.0)

    best = max(ok, key=key)
    k = key(best)
    if k[0] and k[1] and k[2]:
        workers = best["config"]["data"]["num_workers"]
        return best, ("the validation run's config (quick_val: ViT-Tiny, batch 32, 4 workers, 224 px)"
                      + (f" with {workers} workers, one per core of this machine" if workers != 4 else ""))
    if k[0]:
        return best, ("the validation run's model (quick_val) at the closest measured batch/workers; "
                      "batch 32 with 4 workers was not measured")
    return best, ("the validation run's config (quick_val at 224 px) was not measured; judged on the "
                  "fastest measured config instead")


def facts_from_records(records: Sequence[Mapping[str, Any]], *, workers_choice: Mapping[str, Any] | None = None,
                       batch_choice: Mapping[str, Any] | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                       probes: Mapping[str, Probe] | None = None) -> Facts:
    """Facts of a sweep: the validation record's own (speed, crashes, memory peak), what its probes
    measured (:meth:`~hjepa_bench.plugin.api.Probe.facts`) and judged themselves (their verdicts,
    with ``thresholds``), plus sweep-wide errors and the report's batch and worker choices.
    ``probes``: the probes asked (None: the registered probes)."""
    r, why = pick_validation_record(records)
    if r is None:
        f = Facts(source="sweep", subject=why)
        _benchmark_failures(f, [x for x in records if x.get("status") in CRASH_STATUSES])
        return f
    f = _sweep_subject(r, why)
    _record_facts(f, r, records)
    set_probe_facts(f, probe_facts(r, probes))
    f.probe_verdicts = probe_verdicts(r, thresholds, probes)
    if any(g is None for g in (r.get("series") or {}).get("grad_norm") or []):
        f.non_finite = True
    if workers_choice:
        _worker_choice_facts(f, r, workers_choice)
    if workers_choice and workers_choice.get("measured_counts", 0) >= 2:
        f.workers_tuned = {"value": workers_choice.get("workers"), "evidence": workers_choice.get("reason")}
    if batch_choice and batch_choice.get("measured_counts", 0) >= 2:
        f.batch_tuned = {"value": batch_choice.get("batch"), "evidence": batch_choice.get("reason")}
    return f


def _sweep_subject(r: Mapping[str, Any], why: str) -> Facts:
    """The facts' subject: the judged record, why it was picked and how it differs from the guide's run."""
    diffs = guide_differences(r)
    subject = f"{label(r)}: {why}"
    if diffs:
        subject += ("; it differs from the guide's validation run (quick_val) in " + "; ".join(diffs)
                    + ", so the criteria about that run's speed, variance, memory and bottleneck are not measured "
                    f"here (they need {GUIDE_RUN})")
    f = Facts(source="sweep", subject=subject, device=device_name(r), backend=(r.get("env") or {}).get("backend"),
              guide_differences=diffs)
    f.notes.append(why)
    return f


def _record_facts(f: Facts, r: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    """What the record itself measured (speed, the step-time CV of its metrics, non-finite losses, the
    peak) and the sweep's failures and OOMs on its machine; a probe's facts come on top."""
    from .decision_matrix import measured_cv_pct

    m = r.get("metrics") or {}
    same_device = [x for x in records if machine(x) == machine(r)]  # a cluster node is its own machine
    f.crashed = False  # a sweep runs benchmarks: no validation run to crash
    _benchmark_failures(f, [x for x in same_device if x.get("status") in CRASH_STATUSES])
    f.it_per_s = finite(m.get("it_per_s"))
    f.step_cv_pct = measured_cv_pct(r)
    f.speed_method = (f"{(m.get('step_time_s') or {}).get('n')} measured steps, synced windows "
                      f"({m.get('timing_method')})")
    f.non_finite = any(x is None for x in ((r.get("series") or {}).get("loss") or []))
    f.oom = any(x.get("status") == "oom" and _same_model(x, r) for x in same_device)
    f.peak_bytes = m.get("peak_device_bytes")


def set_probe_facts(f: Facts, facts: Mapping[str, Any]) -> None:
    """Set the :class:`Facts` fields a probe measured (``RECORD_FACTS`` are the decision matrix's);
    a name that is neither is a probe's mistake."""
    unknown = sorted(set(facts) - FACT_NAMES)
    if unknown:
        raise ValueError(f"a probe gave unknown facts {', '.join(unknown)}; facts are the fields of Facts "
                         f"or {', '.join(RECORD_FACTS)}")
    for name, value in facts.items():
        if name not in RECORD_FACTS:
            setattr(f, name, value)


def _worker_choice_facts(f: Facts, r: Mapping[str, Any], workers_choice: Mapping[str, Any]) -> None:
    """One advice per fact: the report's worker advice (measured counts first, then this run's
    bottleneck) is the advice every line shows, the probe's rule of thumb included."""
    f.workers_more_needed = workers_choice.get("more_needed")
    judged = finite((r.get("config") or {}).get("data", {}).get("num_workers"))
    advised = finite(workers_choice.get("workers"))
    if f.bottleneck_advice is not None and workers_choice.get("reason"):
        f.bottleneck_advice = f"num_workers {workers_choice.get('workers')}: {workers_choice.get('reason')}"
    if f.cpu_saturated and judged is not None and advised is not None and advised >= judged:
        f.cpu_saturated = False  # measured: fewer workers are no faster


def failure_words(record: Mapping[str, Any]) -> str:
    """What happened to a failed benchmark config, in words: a timeout is "timed out (benchmark)"."""
    status, error = record.get("status"), str(record.get("error") or "")
    if status == "timeout":
        detail = error.removeprefix("timed out (benchmark): ").strip()
        return "timed out (benchmark)" + (f": {detail}" if detail else "")
    return f"{status}" + (f" ({error})" if error else "")


def _benchmark_failures(f: Facts, failed: Sequence[Mapping[str, Any]]) -> None:
    """Sweep configs that failed: listed by what happened; those whose error comes from the device
    backend are compatibility failures (``backend_errors``)."""
    f.benchmark_failures = [f"{label(x)}: {failure_words(x)}" for x in failed]
    f.backend_errors = [f"{label(x)}: {x['error']}" for x in failed if is_backend_error(x.get("error"))]


def _same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return model_key(a["config"]) == model_key(b["config"])


def status_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.get("status", "?")] = out.get(r.get("status", "?"), 0) + 1
    return out
