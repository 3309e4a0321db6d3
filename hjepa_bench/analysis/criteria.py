"""The validation guide's success criteria, post-validation checklist and "Lessons
Learned", judged from measured facts (pure: plain data in, plain data out).

Facts come from three places that share this module: a sweep's result records
(:func:`facts_from_records`), an upstream training log (``hjepa-bench analyze``)
and a validation run (``hjepa-bench validate``).  Every verdict is ``pass``,
``fail`` or ``not measured``, and carries the number behind it; the thresholds
are :class:`hjepa_bench.thresholds.Thresholds`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..config import DEFAULTS as CONFIG_DEFAULTS
from ..options import model_key
from ..thresholds import Thresholds
from ..format import finite, fmt_gib, fmt_or_dash
from ..record import device_name, label, machine, samples_per_s, world_size

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"
CRASH_STATUSES = ("error", "crashed", "timeout")


@dataclass
class Facts:
    """What was measured about one training setup (None: not measured)."""

    source: str  # sweep | log | validate
    subject: str  # what was judged, in words
    device: str | None = None
    backend: str | None = None
    # stability
    crashed: bool | None = None
    crash_detail: str | None = None
    epochs_planned: int | None = None
    epochs_completed: int | None = None
    non_finite: bool | None = None
    # performance
    it_per_s: float | None = None
    step_cv_pct: float | None = None
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
    loss_preliminary: bool = False
    lr: float | None = None
    lr_advice: str | None = None
    lr_advice_detail: dict[str, Any] | None = None  # {"action", "suggested_lr", "trigger"} (the guide's LR rules)
    # quality
    collapse: dict[str, Any] | None = None  # flags + rankme_ratio, effective_rank, d
    # memory
    oom: bool | None = None
    leak: bool | None = None
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
    # system optimisation
    workers_tuned: dict[str, Any] | None = None  # {"value", "evidence"}
    batch_tuned: dict[str, Any] | None = None
    logging_stall: dict[str, Any] | None = None  # {"period_steps", "cost_pct", "log_frequency"}
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(vid: str, name: str, status: str, value: Any, evidence: str) -> dict[str, Any]:
    return {"id": vid, "name": name, "status": status, "value": value, "evidence": evidence}


# --------------------------------------------------------------------------- the five criteria
def success_criteria(f: Facts, th: Thresholds) -> list[dict[str, Any]]:
    out = []
    # 1. stability
    if f.crashed is None and f.non_finite is None:
        out.append(verdict("stability", "Stability: no crash, all epochs, no NaN/Inf", NOT_MEASURED, None,
                           "nothing ran"))
    else:
        problems = []
        if f.crashed:
            problems.append(f"crashed ({f.crash_detail or 'error'})")
        if f.non_finite:
            problems.append("NaN/Inf in the loss or gradients")
        if f.epochs_planned is not None and f.epochs_completed is not None and f.epochs_completed < f.epochs_planned:
            problems.append(f"{f.epochs_completed} of {f.epochs_planned} epochs completed")
        epochs = (f"{f.epochs_completed}/{f.epochs_planned} epochs" if f.epochs_planned is not None
                  else "epochs: not applicable (a benchmark runs steps)")
        ev = "; ".join(problems) if problems else f"no crash, losses and gradients finite; {epochs}"
        out.append(verdict("stability", "Stability: no crash, all epochs, no NaN/Inf", FAIL if problems else PASS,
                           f.epochs_completed, ev))
    # 2. performance
    if f.it_per_s is None:
        out.append(verdict("performance", f"Performance: >= {th.min_it_per_s:g} it/s, step-time CV < {th.max_step_cv_pct:g}%",
                           NOT_MEASURED, None, "no speed measured"))
    else:
        fast = f.it_per_s >= th.min_it_per_s
        steady = None if f.step_cv_pct is None else f.step_cv_pct < th.max_step_cv_pct
        status = FAIL if (not fast or steady is False) else (PASS if steady else NOT_MEASURED)
        ev = (f"{f.it_per_s:.2f} it/s ({'>=' if fast else '<'} {th.min_it_per_s:g}; the guide expects "
              f"~{th.expected_it_per_s:g}), CV {fmt_or_dash(f.step_cv_pct, suffix='%')}"
              + ("" if f.step_cv_pct is None else f" ({'<' if steady else '>='} {th.max_step_cv_pct:g}%)")
              + (f"; {f.speed_method}" if f.speed_method else ""))
        if steady is None and fast:
            ev += "; the variance was not measured, so the criterion is not complete"
        out.append(verdict("performance", f"Performance: >= {th.min_it_per_s:g} it/s, step-time CV < {th.max_step_cv_pct:g}%",
                           status, round(f.it_per_s, 3), ev))
    # 3. learning
    name = f"Learning: loss down >= {th.min_loss_decrease_pct:g}% (smoothed), no divergence, warm-up without spikes"
    if f.loss_decrease_pct is None:
        out.append(verdict("learning", name, NOT_MEASURED, None, "no loss series long enough"))
    else:
        ok_drop = f.loss_decrease_pct >= th.min_loss_decrease_pct
        problems = []
        if not ok_drop:
            problems.append(f"down {fmt_or_dash(f.loss_decrease_pct, suffix='%')} (< {th.min_loss_decrease_pct:g}%)")
        if f.diverged:
            problems.append("diverged")
        if f.warmup_spikes:
            problems.append(f"{f.warmup_spikes} warm-up spike(s)")
        ev = (f"{f.loss_start:.4g} -> {f.loss_end:.4g}, down {fmt_or_dash(f.loss_decrease_pct, suffix='%')} over {f.loss_points} points"
              if f.loss_start is not None and f.loss_end is not None else f"down {fmt_or_dash(f.loss_decrease_pct, suffix='%')}")
        if problems:
            ev += "; " + ", ".join(problems)
        status = FAIL if problems else PASS
        if f.loss_preliminary:
            ev += ("; preliminary: a benchmark covers only the first steps of training, so this is not judged "
                   "(hjepa-bench validate runs the validation run)")
            status = FAIL if f.diverged else NOT_MEASURED
        out.append(verdict("learning", name, status, round(f.loss_decrease_pct, 2), ev))
    # 4. quality
    name = f"Quality: no representation collapse (effective rank >= {th.low_rank_frac:.0%} of D, variance, cosine)"
    if not f.collapse:
        out.append(verdict("quality", name, NOT_MEASURED, None,
                           "feature quality not measured (run with --probes features, or validate/eval)"))
    else:
        c = f.collapse
        flags = [k for k in ("low_rank", "low_variance", "all_alike") if c.get(k)]
        ev = (f"effective rank {c.get('effective_rank', 0):.1f} of D={c.get('d')}, RankMe/D {c.get('rankme_ratio', 0):.2f}, "
              f"mean cosine {c.get('mean_cosine', 0):.2f}" + (f"; flags: {', '.join(flags)}" if flags else "; no collapse flags"))
        if c.get("note"):
            ev += f"; {c['note']}"
        out.append(verdict("quality", name, FAIL if flags or c.get("collapsed") else PASS,
                           c.get("rankme_ratio"), ev))
    # 5. compatibility
    name = "Compatibility: no backend errors; CPU fallbacks listed"
    if f.crashed is None and not f.backend_errors and f.fallbacks is None:
        out.append(verdict("compatibility", name, NOT_MEASURED, None, "nothing ran"))
    else:
        fb = ("CPU fallbacks: " + "; ".join(f.fallbacks)) if f.fallbacks else (
            "no CPU fallback seen" if f.fallbacks is not None else "CPU fallbacks not measured (--probes svd)")
        ev = ("backend errors: " + "; ".join(f.backend_errors) + "; " if f.backend_errors else "no backend errors; ") + fb
        out.append(verdict("compatibility", name, FAIL if f.backend_errors else PASS, len(f.backend_errors), ev))
    return out


# --------------------------------------------------------------------------- the checklist
def checklist(f: Facts, th: Thresholds, criteria: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The guide's post-validation checklist, in its four sections."""
    crit = {c["id"]: c for c in (criteria or success_criteria(f, th))}

    def item(name: str, status: str, evidence: str, value: Any = None) -> dict[str, Any]:
        return {"name": name, "status": status, "value": value, "evidence": evidence}

    stab = crit["stability"]
    loss_steady = (NOT_MEASURED if f.loss_trend is None or f.loss_preliminary else
                   PASS if f.loss_trend == "decreasing" and not f.loss_noisy else FAIL)
    mem_known = f.oom is not None or f.leak is not None or f.memory_pressure is not None
    mem_bad = [w for w, flag in (("out of memory", f.oom), ("leak suspected", f.leak),
                                 ("memory pressure", f.memory_pressure)) if flag]
    mem_ev = ("; ".join(mem_bad) if mem_bad else
              f"no OOM, no leak, peak {fmt_gib(f.peak_bytes)}" + (f", headroom {f.headroom_frac:.0%}" if f.headroom_frac is not None else ""))
    if f.backend == "mps":
        mps = item("MPS compatibility confirmed", FAIL if f.backend_errors or f.crashed else PASS,
                   "ran on MPS" + (": " + "; ".join(f.backend_errors) if f.backend_errors else " without backend errors"))
    else:
        mps = item("MPS compatibility confirmed", NOT_MEASURED, f"ran on {f.backend or 'an unknown device'}, not MPS")
    speed_status = (NOT_MEASURED if f.it_per_s is None else PASS if f.it_per_s >= th.min_it_per_s else FAIL)
    cv_status = (NOT_MEASURED if f.step_cv_pct is None else PASS if f.step_cv_pct < th.max_step_cv_pct else FAIL)
    bott = (item("No major bottlenecks identified", NOT_MEASURED, "bottleneck probe not run") if f.bottleneck is None else
            item("No major bottlenecks identified", FAIL if f.bottleneck == "data-bound" else PASS,
                 f"{f.bottleneck}" + (f", data wait {f.data_wait_frac:.0%}" if f.data_wait_frac is not None else "")
                 + (f"; {f.bottleneck_advice}" if f.bottleneck_advice else ""), f.bottleneck))
    learn = crit["learning"]
    drop_status = (NOT_MEASURED if f.loss_decrease_pct is None or f.loss_preliminary else
                   PASS if f.loss_decrease_pct >= th.min_loss_decrease_pct else FAIL)
    div_status = NOT_MEASURED if f.diverged is None else (FAIL if f.diverged else PASS)
    warm_status = NOT_MEASURED if f.warmup_spikes is None else (FAIL if f.warmup_spikes else PASS)
    workers = (item("num_workers tuned", NOT_MEASURED, "only one worker count measured; sweep --workers 2,4,6,8")
               if not f.workers_tuned else item("num_workers tuned", PASS, f.workers_tuned["evidence"], f.workers_tuned["value"]))
    batch = (item("batch_size optimized", NOT_MEASURED, "only one batch size measured; sweep --batch-sizes 24,32,48,64")
             if not f.batch_tuned else item("batch_size optimized", PASS, f.batch_tuned["evidence"], f.batch_tuned["value"]))
    if f.logging_stall is None:
        logging = item("No unnecessary logging slowing things down", NOT_MEASURED,
                       "needs a training log (hjepa-bench analyze) or a long run with periodic stalls")
    else:
        cost = f.logging_stall.get("cost_pct")
        period = f.logging_stall.get("period_steps")
        bad = cost is not None and cost > th.logging_stall_max_pct
        logging = item("No unnecessary logging slowing things down", FAIL if bad else PASS,
                       (f"periodic stalls every {period} steps cost {cost:.1f}% of the time (limit {th.logging_stall_max_pct:g}%)"
                        if period and cost is not None else f.logging_stall.get("evidence", "no periodic stalls")), cost)
    return [
        {"section": "Training Stability", "items": [
            item("No crashes or errors during validation", stab["status"], stab["evidence"]),
            item("Loss decreased steadily", loss_steady,
                 "not measured" if f.loss_trend is None else f"trend {f.loss_trend}"
                 + (", noisy" if f.loss_noisy else ", not noisy" if f.loss_noisy is False else "")
                 + (" (preliminary)" if f.loss_preliminary else "")),
            item("No memory issues", (FAIL if mem_bad else PASS) if mem_known else NOT_MEASURED,
                 mem_ev if mem_known else "memory probe not run"),
            mps]},
        {"section": "Performance Acceptable", "items": [
            item(f"Training speed >= {th.min_it_per_s:g} it/s (minimum)", speed_status,
                 "not measured" if f.it_per_s is None else f"{f.it_per_s:.2f} it/s", f.it_per_s),
            item(f"Speed variance < {th.max_step_cv_pct:g}%", cv_status,
                 "not measured" if f.step_cv_pct is None else f"CV {f.step_cv_pct:.1f}%", f.step_cv_pct),
            bott]},
        {"section": "Model Learning", "items": [
            item(f"Loss improved by >= {th.min_loss_decrease_pct:g}% from initial", drop_status,
                 learn["evidence"], f.loss_decrease_pct),
            item("No divergence observed", div_status, "not measured" if f.diverged is None else
                 ("diverged" if f.diverged else "no divergence")),
            item("Warmup schedule working properly", warm_status, "not measured" if f.warmup_spikes is None else
                 f"{f.warmup_spikes} loss spike(s) during warm-up")]},
        {"section": "System Optimization", "items": [workers, batch, logging]},
    ]


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
def validation_model_key() -> tuple:
    return model_key(CONFIG_DEFAULTS)


def pick_validation_record(records: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, str]:
    """The record the criteria judge: the validation run's config (quick_val: ViT-Tiny,
    2 levels, predictor depth 2, 224 px, batch 32, 4 workers, reference step) when
    measured, else the closest measured one (said in the note)."""
    ok = [r for r in records if r.get("status") == "ok" and (r.get("config") or {}).get("bench", {}).get("variant") == "reference"]
    ok = ok or [r for r in records if r.get("status") == "ok"]
    if not ok:
        return None, "no configuration ran to completion"
    vkey = validation_model_key()

    def key(r):
        c = r["config"]
        try:
            same_model = model_key(c) == vkey
        except (KeyError, TypeError):
            same_model = False
        d = c.get("data", {})
        return (same_model, d.get("batch_size") == 32, d.get("num_workers") == 4,
                world_size(r) == 1,  # the validation run is one process: a data-parallel job only if nothing else
                samples_per_s(r) or 0.0)

    best = max(ok, key=key)
    k = key(best)
    if k[0] and k[1] and k[2]:
        return best, "the validation run's config (quick_val: ViT-Tiny, batch 32, 4 workers, 224 px)"
    if k[0]:
        return best, ("the validation run's model (quick_val) at the closest measured batch/workers; "
                      "batch 32 with 4 workers was not measured")
    return best, ("the validation run's config (quick_val at 224 px) was not measured; judged on the "
                  "fastest measured config instead")


def facts_from_records(records: Sequence[Mapping[str, Any]], *, workers_choice: Mapping[str, Any] | None = None,
                       batch_choice: Mapping[str, Any] | None = None) -> Facts:
    """Facts of a sweep: the validation record's probes, plus sweep-wide errors."""
    r, why = pick_validation_record(records)
    if r is None:
        f = Facts(source="sweep", subject=why)
        f.crashed = bool([x for x in records if x.get("status") in CRASH_STATUSES]) or None
        f.backend_errors = [f"{label(x)}: {x.get('status')} ({x.get('error') or ''})" for x in records
                            if x.get("status") in CRASH_STATUSES]
        return f
    env = r.get("env") or {}
    m = r.get("metrics") or {}
    p = r.get("probes") or {}
    f = Facts(source="sweep", subject=f"{label(r)}: {why}", device=device_name(r),
              backend=env.get("backend"))
    f.notes.append(why)
    same_device = [x for x in records if machine(x) == machine(r)]  # a cluster node is its own machine
    crashes = [x for x in same_device if x.get("status") in CRASH_STATUSES]
    f.crashed = False
    f.backend_errors = [f"{label(x)}: {x.get('status')}: {x.get('error') or ''}".rstrip(": ") for x in crashes]
    from .decisions import step_cv_pct

    f.it_per_s = finite(m.get("it_per_s"))
    f.step_cv_pct = step_cv_pct(r)
    f.speed_method = (f"{(m.get('step_time_s') or {}).get('n')} measured steps, synced windows "
                      f"({m.get('timing_method')})")
    loss = p.get("loss") or {}
    if loss.get("status") == "ok":
        f.loss_start, f.loss_end = finite(loss.get("start_loss")), finite(loss.get("end_loss"))
        f.loss_decrease_pct = finite(loss.get("decrease_pct"))
        f.loss_trend, f.loss_noisy = loss.get("trend"), loss.get("noisy")
        f.diverged = bool(loss.get("diverged"))
        f.warmup_spikes = (loss.get("warmup_spikes") or {}).get("count")
        f.loss_points = loss.get("n")
        f.loss_preliminary = bool(loss.get("preliminary", True))
        f.lr = finite(loss.get("lr"))
        f.lr_advice = (loss.get("lr_advice") or {}).get("text")
        f.lr_advice_detail = loss.get("lr_advice")
        f.non_finite = bool(loss.get("non_finite_count"))
    else:
        f.non_finite = any(x is None for x in ((r.get("series") or {}).get("loss") or []))
    grads = (r.get("series") or {}).get("grad_norm") or []
    if any(g is None for g in grads):
        f.non_finite = True
    feats = p.get("features") or {}
    if feats.get("status") == "ok" and feats.get("measured", True):
        col = feats.get("collapse") or {}
        f.collapse = {**col, "rankme_ratio": finite(feats.get("rankme_ratio")),
                      "effective_rank": finite(feats.get("effective_rank")), "d": feats.get("d"),
                      "mean_cosine": finite(feats.get("mean_cosine")), "note": "features of a barely trained model"}
    mem = p.get("memory") or {}
    f.oom = any(x.get("status") == "oom" and _same_model(x, r) for x in same_device)
    if mem.get("status") == "ok":
        f.leak = bool((mem.get("leak") or {}).get("suspected"))
        f.memory_pressure = bool(mem.get("memory_pressure"))
        f.headroom_frac = finite(mem.get("headroom_frac"))
    f.peak_bytes = m.get("peak_device_bytes")
    svd = p.get("svd") or {}
    if svd.get("status") == "ok" and svd.get("measured", True):
        paths = [f"torch.linalg.svd {t.get('dtype')} on {t.get('device')}: {t.get('path')}"
                 for t in svd.get("timings") or [] if t.get("path") in ("cpu-fallback", "not-implemented")]
        f.fallbacks = paths
    bott = p.get("bottleneck") or {}
    if bott.get("status") == "ok":
        f.bottleneck = bott.get("verdict")
        f.data_wait_frac = finite((bott.get("shares") or {}).get("data_wait"))
        f.bottleneck_advice = bott.get("worker_advice")
    if workers_choice and workers_choice.get("measured_counts", 0) >= 2:
        f.workers_tuned = {"value": workers_choice.get("workers"), "evidence": workers_choice.get("reason")}
    if batch_choice and batch_choice.get("measured_counts", 0) >= 2:
        f.batch_tuned = {"value": batch_choice.get("batch"), "evidence": batch_choice.get("reason")}
    return f


def _same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return model_key(a["config"]) == model_key(b["config"])


def status_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.get("status", "?")] = out.get(r.get("status", "?"), 0) + 1
    return out
