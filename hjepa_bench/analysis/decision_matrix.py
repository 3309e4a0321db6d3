"""The decision matrix and the recommendations (pure: records in, plain data out).

For each full-training option (the guide's A, B, C and user-defined ones) and
each measured machine:

1. **Measured or not.**  Only records of the option's own model config count
   (:func:`hjepa_bench.options.record_matches`: encoder, depth, levels,
   predictor, image size, the ``reference`` step, the option's precision).
   Nothing is scaled from another model: an option without such a record is
   "not measured" and shows no number.
2. **Which config.**  Among those records, the batch (:func:`recommend_batch`:
   the largest that fits with the memory margin and still gains throughput) and
   the workers (:func:`recommend_workers`: the fewest within a few percent of the
   best).  The projection uses that record.
3. **Facts.**  it/s against the guide's 2.5 minimum and ~3.2 expectation,
   step-time CV, loss decrease, divergence, collapse flags, memory headroom and
   the projected hours (with band) against ``budget_hours`` (or, without a
   budget, the option's own time window, e.g. 2-3 h for A).
4. **Decision** (:func:`decide`): an option is *eligible* when its measured
   record is ok, stable (step-time CV measured, from at least 5 steps, and below
   the threshold; an unmeasured CV blocks with "measure longer (--max-time)"), not
   diverged and not collapsed (collapse flags count only from a model trained for
   at least ``min_quality_steps``; earlier ones are shown as "untrained: N steps,
   not judged"), and the validation facts show no divergence or crash.  It
   *fits* when its projected hours (middle) are within the budget.  The
   recommendation is the eligible, fitting option with the highest priority
   (B > C > A: the guide's expected accuracy); ties go to the shorter run.  A
   slow short option never promotes a longer one (the upstream analyzer's
   inverted rule): a longer option is recommended only when its own projection
   fits.  When none is recommended, the summary names each option's own blockers
   and fit.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..format import finite
from ..options import TrainingOption, record_matches
from ..record import (
    backend_peak_bytes,
    batch_requested,
    device_total_bytes,
    machine,
    machine_name,
    model_short,
    node_label,
    samples_per_s,
    short_model_name,
    world_size,
)
from ..record import workers as workers_of
from ..status import NOT_MEASURED
from ..thresholds import Thresholds
from .bottleneck import is_data_bound
from .memory import fit_memory
from .policy import shortfall
from .projection import project_record, seconds_per_step
from .stability import MIN_STEPS_SPREAD
from .verdicts import Probes, probe_facts


def _sps(r: Mapping[str, Any]) -> float:
    return samples_per_s(r) or 0.0


def _fastest_by(records: Sequence[Mapping[str, Any]], key: Any) -> dict[Any, Mapping[str, Any]]:
    """For each value of ``key(record)``, the record with the most samples/s (the first of equals)."""
    best: dict[Any, Mapping[str, Any]] = {}
    for r in records:
        k = key(r)
        if k not in best or _sps(r) > _sps(best[k]):
            best[k] = r
    return best


#: a verdict that rests on fewer measured steps than this shows the record's warning beside it
MIN_STEPS_VERDICT = 10


def measured_steps(r: Mapping[str, Any]) -> int | None:
    m = r.get("metrics") or {}
    n = m.get("measured_steps")
    if n is None:
        n = (m.get("step_time_s") or {}).get("n")
    try:
        return None if n is None else int(n)
    except (TypeError, ValueError):
        return None


def few_steps_warning(r: Mapping[str, Any]) -> str | None:
    """The record's own warning about its few measured steps (its ``metrics.warnings`` line that says
    so, else one in the same words) when fewer than ``MIN_STEPS_VERDICT`` steps were measured."""
    n = measured_steps(r)
    if n is None or n >= MIN_STEPS_VERDICT:
        return None
    for w in (r.get("metrics") or {}).get("warnings") or []:
        if f"{n} steps" in str(w) or f"{n} measured steps" in str(w):
            return str(w)
    return f"only {n} steps measured; the statistics are rough"


def measured_cv_pct(r: Mapping[str, Any]) -> float | None:
    """Step-time CV (%) of the record's measured step times (``metrics.step_time_s``); None (not
    measured) below the stability minimum of steps (the CV of a handful of steps is not a
    measurement of stability)."""
    st = (r.get("metrics") or {}).get("step_time_s") or {}
    if (st.get("n") or 0) < MIN_STEPS_SPREAD or finite(st.get("cv")) is None:
        return None
    return 100 * float(st["cv"])


def step_cv_pct(r: Mapping[str, Any], probes: Probes | None = None) -> float | None:
    """Step-time CV (%) as a probe measured it (its fact ``step_cv_pct``, None when it says not
    measured), else :func:`measured_cv_pct`."""
    facts = probe_facts(r, probes)
    return facts["step_cv_pct"] if "step_cv_pct" in facts else measured_cv_pct(r)


# --------------------------------------------------------------------------- batch and workers
def speed_band_pct(r: Mapping[str, Any], confidence: float = 0.95) -> float | None:
    """Half-width of the record's measured speed band, in % of its speed: the Student t interval of
    the mean step time (:func:`~hjepa_bench.analysis.projection.seconds_per_step`, the band the
    projections show).  None when there is no band (fewer than 5 measured steps)."""
    sec = seconds_per_step(r, confidence)
    mid, lo, hi = sec.get("mid"), sec.get("low"), sec.get("high")
    if not mid or lo is None or hi is None:
        return None
    return float((hi - lo) / 2 / mid * 100)


def compare_speed(a: Mapping[str, Any], b: Mapping[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """samples/s of ``a`` against ``b``: ``gain_pct`` and whether it is a measurable difference (the
    gain is larger than the two measured bands together; a record without a band never differs
    measurably).  The one rule every batch and worker choice uses."""
    sa, sb = _sps(a), _sps(b)
    gain = (sa / sb - 1) * 100 if sb else 0.0
    ba, bb = speed_band_pct(a, confidence), speed_band_pct(b, confidence)
    measurable = ba is not None and bb is not None and abs(gain) > ba + bb
    return {"gain_pct": gain, "bands_pct": (ba, bb), "measurable": measurable}


def _bands(cmp: Mapping[str, Any]) -> str:
    ba, bb = cmp["bands_pct"]
    return "bands " + ", ".join("none (< 5 steps)" if x is None else f"+-{x:.1f}%" for x in (ba, bb))


def recommend_batch(records: Sequence[Mapping[str, Any]], th: Thresholds,
                    default_batch: int | None = 32) -> dict[str, Any]:
    """The batch for one model config on one machine: among the measured batches that fit with the
    margin, a larger batch wins only when its samples/s gain is measurable (beyond both measured
    bands, :func:`compare_speed`) and at least ``batch_min_gain_pct``; a difference inside the bands
    is "no measurable difference", and then the guide's default batch (32) wins when it is one of
    the tied batches, else the smaller."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return {"batch": None, "reason": NOT_MEASURED, "measured_counts": 0}
    best_by_batch = _fastest_by(ok, batch_requested)
    batches = sorted(best_by_batch)
    oom = sorted({batch_requested(r) for r in records if r.get("status") == "oom"})
    fits = []
    for b in batches:
        peak, total = backend_peak_bytes(best_by_batch[b]), device_total_bytes(best_by_batch[b])
        if peak is not None and total and peak > total * (1 - th.memory_margin_frac):
            continue
        fits.append(b)
    if not fits:
        b = batches[0]
        return {"batch": b, "measured_counts": len(batches), "oom_batches": oom,
                "reason": f"every measured batch is within {th.memory_margin_frac:.0%} of device memory; "
                          f"smallest is {b}"}
    chosen, tied, steps = fits[0], [fits[0]], []
    for b in fits[1:]:
        cmp = compare_speed(best_by_batch[b], best_by_batch[chosen], th.confidence)
        if cmp["measurable"] and cmp["gain_pct"] >= th.batch_min_gain_pct:
            steps.append(f"b{chosen}->b{b}: {cmp['gain_pct']:+.1f}% samples/s, beyond the {_bands(cmp)}")
            chosen, tied = b, [b]
        elif cmp["measurable"] and cmp["gain_pct"] < 0:
            steps.append(f"b{chosen}->b{b}: {cmp['gain_pct']:+.1f}% samples/s ({_bands(cmp)}): slower")
            break
        elif cmp["measurable"]:
            steps.append(f"b{chosen}->b{b}: {cmp['gain_pct']:+.1f}% samples/s, < {th.batch_min_gain_pct:g}%")
            break
        else:
            steps.append(f"b{chosen}->b{b}: {cmp['gain_pct']:+.1f}% samples/s, inside the {_bands(cmp)}: "
                         "no measurable difference")
            tied.append(b)
    if len(tied) > 1:
        chosen = default_batch if default_batch in tied else min(tied)
        which = "the guide's default" if chosen == default_batch else "the smaller"
        why = f"no measurable difference between batches {', '.join(map(str, tied))}: {which}, {chosen}"
    else:
        why = None
    fit = fit_memory(ok + [r for r in records if r.get("status") == "oom"], th.memory_margin_frac)
    predicted, extrapolated = None, False
    for res in fit.values():
        if res.get("predicted_max_batch") is not None:
            predicted, extrapolated = res["predicted_max_batch"], bool(res.get("extrapolated"))
    if len(batches) == 1:
        reason = f"only batch {chosen} measured"
    else:
        reason = (why or f"batch {chosen}: the largest measured batch that fits with a {th.memory_margin_frac:.0%} "
                  f"margin and gains measurably and >= {th.batch_min_gain_pct:g}% samples/s") + \
                 f" ({'; '.join(steps) or 'no larger batch fits'})"
    if predicted is not None:
        reason += f"; memory fit predicts up to batch {predicted}" + (
            f" (an extrapolation beyond 4x the largest measured batch {max(batches)})" if extrapolated else "")
        if predicted > max(batches) and chosen == max(batches) and len(tied) == 1 and len(batches) > 1:
            reason += " (throughput still rising at the largest measured batch: measure a larger one)"
    if oom:
        reason += f"; out of memory at batch {', '.join(map(str, oom))}"
    warn = few_steps_warning(best_by_batch.get(chosen) or ok[0])
    if warn:
        reason += f" (warning: {warn})"
    return {"batch": chosen, "reason": reason, "measured_counts": len(batches), "predicted_max_batch": predicted,
            "oom_batches": oom, "samples_per_s": {b: _sps(best_by_batch[b]) for b in batches}}


def _cores(r: Mapping[str, Any], facts: Mapping[str, Any]) -> int | None:
    """The logical cores the run had: as a probe saw them (``cpu_cores``), else the environment's."""
    n = facts.get("cpu_cores") or (r.get("env") or {}).get("cpu_count_logical")
    try:
        return int(n) if n else None
    except (TypeError, ValueError):
        return None


def recommend_workers(records: Sequence[Mapping[str, Any]], batch: int | None, th: Thresholds,
                      probes: Probes | None = None) -> dict[str, Any]:
    """The one worker advice of a model config on a machine (every section and the configs show
    its ``reason``).  Among the worker counts measured at ``batch``, a count wins over fewer only
    when its samples/s is measurably higher (beyond both bands, :func:`compare_speed`) and by more
    than ``workers_within_pct``; otherwise there is no measurable difference and the fewest win.
    The chosen run's bottleneck then decides once: still data-bound with the most workers measured
    -> more workers (at most cores - 1 on a machine with fewer than 10 cores); our own processes
    saturating the CPU with more than 2 workers and no fewer measured -> 2 (the guide's CPU-bound
    advice); more workers than cores -> no more than the cores.  The bottleneck is what the
    ``probes`` measured (None: the registered probes)."""
    ok = [r for r in records if r.get("status") == "ok" and (batch is None or batch_requested(r) == batch)]
    if not ok:
        return {"workers": None, "reason": NOT_MEASURED, "measured_counts": 0}
    by_w = _fastest_by(ok, workers_of)
    counts = sorted(by_w)
    best = max(counts, key=lambda w: _sps(by_w[w]))
    tied, notes = [], []
    for w in counts:
        cmp = compare_speed(by_w[best], by_w[w], th.confidence)
        if w == best or not (cmp["measurable"] and cmp["gain_pct"] > th.workers_within_pct):
            tied.append(w)
            if w != best:
                notes.append(f"w{best} vs w{w}: {cmp['gain_pct']:+.1f}% samples/s, "
                             + (f"within {th.workers_within_pct:g}%" if cmp["measurable"]
                                else f"inside the {_bands(cmp)}"))
    chosen = min(tied)
    rates = ", ".join(f"w{w}: {_sps(by_w[w]):.1f}" for w in counts)
    if len(counts) == 1:
        reason = f"{chosen} worker{'s' if chosen != 1 else ''}: the only count measured"
    elif len(tied) > 1:
        reason = (f"{chosen} workers: no measurable difference between {', '.join(map(str, tied))} workers at batch "
                  f"{batch} ({rates} samples/s; {'; '.join(notes)}): the fewest")
    else:
        reason = f"{chosen} workers: measurably the fastest at batch {batch} ({rates} samples/s)"
    measured_advice = chosen
    top = by_w[max(counts)]
    rec = by_w[chosen]
    bott = probe_facts(rec, probes)
    cores = _cores(rec, bott)
    wait = finite((top.get("metrics") or {}).get("data_wait_frac"))
    more = False
    if is_data_bound(wait, th.data_bound_share) and chosen == max(counts):
        more = True
        cap = None if cores is None or cores >= 10 else max(1, cores - 1)
        target = 6 if cap is None else min(6, cap)
        if target > chosen:
            chosen = target
            reason = (f"{chosen} worker{'s' if chosen != 1 else ''} (not measured): "
                      f"still data-bound with {max(counts)} workers (data wait "
                      f"{wait:.0%} > {th.data_bound_share:.0%}); the guide's 6-8 is for a 10-core M1 Max"
                      + (f", this machine has {cores} cores: at most {cap}" if cap is not None else "")
                      + f"; measured: {rates} samples/s")
        else:
            more = False
            reason += (f"; still data-bound (data wait {wait:.0%}), but {cores} cores leave no room for more "
                       "workers")
    elif bott.get("cpu_saturated") and chosen > 2 and min(counts) >= chosen:
        own = finite(bott.get("own_cpu_pct"))
        reason = (f"2 workers (not measured): the benchmark's own processes saturate the CPU with {chosen} workers"
                  + (f" ({own:.0f}% of the {cores} cores)" if own is not None and cores else "")
                  + f" (the guide: 2 if CPU-bound); measured: {rates} samples/s")
        chosen = 2
    elif cores is not None and chosen > cores and min(counts) >= chosen:
        reason = (f"{cores} workers (not measured): {chosen} workers on {cores} CPU cores compete with the step; "
                  f"measured: {rates} samples/s")
        chosen = cores
    warn = few_steps_warning(rec)
    if warn:
        reason += f" (warning: {warn})"
    return {"workers": chosen, "reason": reason, "measured_counts": len(counts), "more_needed": more,
            "measured_choice": measured_advice, "samples_per_s": {w: _sps(r) for w, r in sorted(by_w.items())}}


# --------------------------------------------------------------------------- learning rate, warm-up
def warmup_range(epochs: int) -> tuple[int, int]:
    """The guide: 2-4 warm-up epochs for a 20-epoch run, 5-10 for 100 epochs.  Other lengths
    are this tool's interpolation (linear in between, the same fractions outside): see
    :func:`warmup_source`."""
    if epochs <= 20:
        return max(1, round(epochs * 0.10)), max(1, round(epochs * 0.20))
    if epochs >= 100:
        return round(epochs * 0.05), round(epochs * 0.10)
    t = (epochs - 20) / 80
    return round(2 + 3 * t), round(4 + 6 * t)


def warmup_source(epochs: int) -> str:
    """Who says ``warmup_range(epochs)``: the guide (20 and 100 epochs) or this tool's interpolation."""
    lo, hi = warmup_range(epochs)
    if epochs in (20, 100):
        return f"the guide's {lo}-{hi} epochs for {epochs} epochs"
    how = "interpolation" if 20 < epochs < 100 else "scaling"
    return (f"{lo}-{hi} epochs for {epochs} epochs (this tool's {how} of the guide's 2-4 epochs for 20 and "
            "5-10 for 100)")


def recommend_warmup(option_warmup: float, epochs: int, warmup_spikes: int | None) -> dict[str, Any]:
    lo, hi = warmup_range(epochs)
    src = warmup_source(epochs)
    if warmup_spikes:
        return {"warmup_epochs": hi, "reason": f"{warmup_spikes} loss spike(s) during warm-up: the long end of {src}"}
    w = min(max(option_warmup, lo), hi)
    why = "no warm-up spikes measured" if warmup_spikes == 0 else "warm-up spikes not measured"
    return {"warmup_epochs": w, "reason": f"{why}: the option's {option_warmup:g}"
            + (f", kept within {src}" if w != option_warmup else f" ({src})")}


def recommend_lr(option_lr: float, lr_advice: Mapping[str, Any] | None, validation_lr: float | None,
                 preliminary: bool = False) -> dict[str, Any]:
    """The guide's LR rules as the loss probe applied them to the validation run:
    keep / increase to 1.5e-4-2e-4 / decrease to 5e-5 / much lower when diverging.
    Advice from a benchmark's first steps (``preliminary``) is reported, not applied,
    except a divergence."""
    if not lr_advice or not lr_advice.get("action"):
        return {"lr": option_lr, "reason": f"the option's {option_lr:.1e} (no loss measurement to adjust it)"}
    action = lr_advice["action"]
    suggested = finite(lr_advice.get("suggested_lr"))
    trigger = lr_advice.get("trigger", "")
    if preliminary and "diverg" not in f"{action} {trigger}":
        # no validation run: a benchmark's first steps (often still in LR warm-up) judge no LR
        return {"lr": option_lr, "reason": f"the option's {option_lr:.1e}: no validation run to judge the LR "
                                           "(a benchmark's first steps do not; hjepa-bench validate does)"}
    if action == "keep" or suggested is None:
        what = "keep" if action == "keep" else "no LR advice"
        return {"lr": option_lr, "reason": f"the option's {option_lr:.1e}: the validation run's loss gives {what}"
                + (f" ({lr_advice.get('text') or trigger})" if action != "keep" else "")}
    if preliminary and "diverg" not in f"{action} {trigger}":
        return {"lr": option_lr, "reason": f"kept the option's {option_lr:.1e}: the benchmark's loss says {action} "
                                           f"({trigger}), but from the first steps of training only (preliminary); "
                                           "confirm with hjepa-bench validate"}
    if validation_lr and validation_lr > 0:
        lr = option_lr * suggested / validation_lr  # the same relative change on the option's LR
    else:
        lr = suggested
    return {"lr": float(f"{lr:.3g}"), "reason": f"validation loss: {trigger}: {action} "
            f"({validation_lr or 0:.1e} -> {suggested:.1e} in validation; "
            f"the same factor on the option's {option_lr:.1e})"}


# --------------------------------------------------------------------------- model size and variant
def model_speed_ratios(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Measured time per sample of each model config relative to the fastest, on one
    machine with one variant/precision/image size, each at its best measured batch and
    worker count (time per sample is what sets an epoch's length).  The guide guessed
    ViT-Small ~2x and ViT-Base ~4x slower than ViT-Tiny."""
    groups: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for r in records:
        if r.get("status") != "ok" or not _sps(r):
            continue
        c = r["config"]
        g = (machine(r), c["bench"]["variant"], c["bench"]["precision"], c["data"]["image_size"], world_size(r))
        label = (f"{short_model_name(c['model']['encoder_type'])} L{c['model']['num_hierarchies']} "
                 f"P{c['model']['predictor']['depth']}")
        if label not in groups[g] or _sps(r) > _sps(groups[g][label]):
            groups[g][label] = r
    out = []
    for g, models in groups.items():
        if len(models) < 2:
            continue
        base_label = max(models, key=lambda k: _sps(models[k]))
        base = _sps(models[base_label])
        bm = models[base_label]["config"]["model"]
        for label, r in sorted(models.items(), key=lambda kv: -_sps(kv[1])):
            m = r["config"]["model"]
            differs = [name for name, a, b in (("encoder", m["encoder_type"], bm["encoder_type"]),
                                                ("encoder blocks", m.get("encoder_depth", 12),
                                                 bm.get("encoder_depth", 12)),
                                                ("levels", m["num_hierarchies"], bm["num_hierarchies"]),
                                                ("predictor depth", m["predictor"]["depth"], bm["predictor"]["depth"]))
                       if a != b]
            out.append({"machine": machine_name(r), "batch": batch_requested(r), "workers": workers_of(r),
                        "model": label,
                        "world_size": g[4], "samples_per_s": _sps(r), "slowdown_vs_fastest": base / _sps(r),
                        "fastest": base_label, "differs": differs, "warning": few_steps_warning(r)})
    return out


def machine_comparison(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """it/s of each config on each machine (a machine: the environment fingerprint, and the node of a
    cluster), from the ok records; the device is not part of a config here, so an M1's mps and a
    CUDA box's cuda line up.  ``machines`` is empty when fewer than two machines measured a config."""
    names: dict[str, str] = {}
    speeds: dict[str, dict[str, float]] = defaultdict(dict)
    for r in records:
        ips = finite((r.get("metrics") or {}).get("it_per_s"))
        if r.get("status") != "ok" or ips is None:
            continue
        c = r["config"]
        config = (f"{model_short(r)} L{c['model']['num_hierarchies']} P{c['model']['predictor']['depth']} "
                  f"b{batch_requested(r)} w{workers_of(r)} {c['bench']['variant']} {c['bench']['precision']} "
                  f"{c['data']['image_size']}px" + (f" {world_size(r)} ranks" if world_size(r) > 1 else ""))
        names.setdefault(machine(r), machine_name(r))
        speeds[config][machine(r)] = ips  # the latest record of a config on a machine
    if len(names) < 2:
        return {"machines": [], "rows": []}
    refused = one_host_overlaps(records)
    if refused:
        return {"machines": [], "rows": [], "refused": refused}
    shown = {m: n if list(names.values()).count(n) == 1 else f"{n} [{m[:6]}]" for m, n in names.items()}
    rows = []
    for config, per in sorted(speeds.items()):
        fastest = max(per, key=per.__getitem__)
        rows.append({"config": config, "it_per_s": {shown[m]: v for m, v in per.items()}, "fastest": shown[fastest],
                     "fastest_vs_slowest": per[fastest] / min(per.values()) if len(per) > 1 else None})
    return {"machines": [shown[m] for m in names], "rows": rows}


def _interval(r: Mapping[str, Any]) -> tuple[float, float] | None:
    """(start, end) of the record's run in seconds since the epoch (``started_at`` + ``duration_s``)."""
    import datetime as _dt

    try:
        start = _dt.datetime.fromisoformat(str(r["started_at"])).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    dur = finite(r.get("duration_s"))
    return None if dur is None else (start, start + dur)


def one_host_overlaps(records: Sequence[Mapping[str, Any]]) -> str | None:
    """Why no machine comparison can be made: two "machines" (cluster nodes) that are one host (the same
    ``hostname_hash``) whose runs overlapped in time shared that host's cores, so their speeds measure
    the competition, not the machines.  None when no such pair exists."""
    by_host: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        host = (r.get("env") or {}).get("hostname_hash")
        iv = _interval(r)
        if r.get("status") == "ok" and host and iv is not None:
            by_host[str(host)][node_label(r) or machine(r)].append(iv)
    said = []
    for host, nodes in by_host.items():
        if len(nodes) < 2:
            continue
        names = sorted(nodes)
        pairs = 0
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs += sum(1 for x in nodes[a] for y in nodes[b] if x[0] < y[1] and y[0] < x[1])
        if pairs:
            said.append(f"nodes {', '.join(names)} are one host (hostname hash {host[:12]}) and {pairs} pair(s) of "
                        "their runs overlapped in time, so they shared its cores: their speeds measure two runs "
                        "competing, not two machines")
    if not said:
        return None
    return ("; ".join(said) + ". Run one node per real host (or one node at a time) to compare machines.")


def efficient_savings(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Measured step time of the ``efficient`` variant against ``reference`` for configs
    measured in both (everything else equal)."""
    pairs: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for r in records:
        if r.get("status") != "ok" or not finite((r.get("metrics") or {}).get("it_per_s")):
            continue
        c = r["config"]
        key = (machine(r), c["model"]["encoder_type"], c["model"]["num_hierarchies"], c["model"]["predictor"]["depth"],
               c["data"]["image_size"], batch_requested(r), workers_of(r), c["bench"]["precision"], world_size(r))
        pairs[key][c["bench"]["variant"]] = r
    out = []
    for key, p in pairs.items():
        if "reference" in p and "efficient" in p:
            ref, eff = p["reference"]["metrics"]["it_per_s"], p["efficient"]["metrics"]["it_per_s"]
            out.append({"machine": machine_name(p["reference"]), "model": short_model_name(key[1]),
                        "batch": key[5], "workers": key[6], "world_size": key[8],
                        "reference_it_per_s": ref, "efficient_it_per_s": eff,
                        "time_ratio": ref / eff, "saving_frac": 1 - ref / eff})
    return out


# --------------------------------------------------------------------------- options
def evaluate_option(option: TrainingOption, records: Sequence[Mapping[str, Any]], th: Thresholds,
                    budget_hours: float | None = None, probes: Probes | None = None) -> list[dict[str, Any]]:
    """One row per machine and world size that measured the option (or one "not measured" row): a
    data-parallel job of N processes is another way to run the option on that machine.  The loss,
    feature and memory facts of a row are what the ``probes`` measured (None: the registered probes)."""
    values = option.values()
    by_machine: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        if record_matches(values, r):
            by_machine[(machine(r), world_size(r))].append(r)
    base = _option_base(option, budget_hours)
    if not by_machine:
        oks = [r for r in records if r.get("status") == "ok"]
        return [{**base, "measured": False, "machine": None,
                 "reasons": [f"{option.describe()} was not measured: no result of this model config "
                             "(reference step) — the sweep measures it unless run with --options none"
                             if oks else "nothing ran"]}]
    return [_machine_row(option, base, mach, ranks, all_rs, th, probes)
            for (mach, ranks), all_rs in by_machine.items()]


def _option_base(option: TrainingOption, budget_hours: float | None) -> dict[str, Any]:
    """What every row of ``option`` says: the option itself and the time limit it is judged against."""
    limit = budget_hours if budget_hours is not None else option.hours[1]
    if budget_hours is not None:
        limit_src = f"budget {budget_hours:g} h"
    elif math.isinf(option.hours[1]):
        limit_src = "no time limit (the measured run's own config: projected, never recommended)"
    else:
        limit_src = f"the option's window {option.hours[0]:g}-{option.hours[1]:g} h"
    return {"option": option.name, "title": option.title, "describe": option.describe(),
            "epochs": int(option.values()["training"]["epochs"]), "priority": option.priority,
            "hours_window": list(option.hours), "candidate": option.candidate, "limit_hours": limit,
            "limit_source": limit_src, "expected": option.expected, "choose_if": option.choose_if}


def _machine_row(option: TrainingOption, base: Mapping[str, Any], mach: str, ranks: int,
                 all_rs: Sequence[Mapping[str, Any]], th: Thresholds, probes: Probes | None) -> dict[str, Any]:
    """The option's row on one machine and world size, from the records measured there."""
    # a record below its minimum steps feeds no verdict: it only says so (analysis/policy.py)
    short = [r for r in all_rs if shortfall(r) is not None]
    rs = [r for r in all_rs if shortfall(r) is None]
    if short and not any(r.get("status") == "ok" for r in rs):
        text = cast(dict[str, Any], shortfall(short[0]))["text"]  # (short: the records with a shortfall)
        return {**base, "measured": True, "machine": machine_name(short[0]), "machine_id": mach,
                "node": node_label(short[0]), "world_size": ranks, "status": NOT_MEASURED,
                "not_measured": text, "eligible": False, "fits": False,
                "reasons": [f"{(short[0].get('sweep') or {}).get('label') or option.describe()}: {text}"]}
    batch = recommend_batch(rs, th)
    workers = recommend_workers(rs, batch["batch"], th, probes)
    ok = [r for r in rs if r.get("status") == "ok"]
    row: dict[str, Any] = {**base, "measured": True, "machine": machine_name(rs[0]), "machine_id": mach,
                           "node": node_label(rs[0]), "world_size": ranks,
                           "batch_choice": batch, "workers_choice": workers, "reasons": []}
    if not ok:
        statuses = ", ".join(sorted({f"{r.get('status')} at b{batch_requested(r)}" for r in rs}))
        row.update(status="failed", eligible=False, fits=False, reasons=[f"no ok measurement ({statuses})"])
        return row
    cands = [r for r in ok if batch_requested(r) == batch["batch"] and workers_of(r) == workers["workers"]] or ok
    row.update(_measured_facts(max(cands, key=_sps), option, th, probes))
    return row


def _measured_facts(rec: Mapping[str, Any], option: TrainingOption, th: Thresholds,
                    probes: Probes | None) -> dict[str, Any]:
    """What a row says of its chosen record: speed, stability, the probes' loss, collapse and memory
    facts, and the projection of the option's full run."""
    m = rec.get("metrics") or {}
    values = option.values()
    proj = project_record(rec, epochs=int(values["training"]["epochs"]),
                          dataset_size=option.dataset_size if option.dataset_size is not None else th.dataset_size,
                          val_size=option.val_size if option.val_size is not None else th.val_size,
                          val_every_epochs=th.val_every_epochs,
                          checkpoint_every_epochs=option.checkpoint_every_epochs(), confidence=th.confidence,
                          logging=values, probes=probes)
    facts = probe_facts(rec, probes)
    collapsed, collapse_note = None, None
    if facts.get("collapse"):
        if facts["collapse"].get("quality_judged", True):
            collapsed = bool(facts["collapse"].get("collapsed"))
        else:  # flags of a barely trained model: shown, never judged
            collapse_note = facts["collapse"].get("quality_note")
    measured_loss = "loss_decrease_pct" in facts
    return dict(
        status="ok", record_label=(rec.get("sweep") or {}).get("label"), batch=batch_requested(rec),
        workers=workers_of(rec), it_per_s=finite(m.get("it_per_s")), samples_per_s=_sps(rec),
        step_cv_pct=step_cv_pct(rec, probes), steps_measured=(m.get("step_time_s") or {}).get("n"),
        few_steps=few_steps_warning(rec), loss_note=_loss_note(facts),
        loss_decrease_pct=facts.get("loss_decrease_pct"), diverged=facts.get("diverged"),
        loss_preliminary=facts.get("loss_preliminary") if measured_loss else None,
        collapsed=collapsed, collapse_note=collapse_note, headroom_frac=facts.get("headroom_frac"),
        projection=proj, hours=(proj.get("hours") or {}).get("mid"),
        hours_low=(proj.get("hours") or {}).get("low"), hours_high=(proj.get("hours") or {}).get("high"),
    )


def _loss_note(facts: Mapping[str, Any]) -> str | None:
    """"preliminary, at lr 4.1e-07 (0.3% of the configured 1.5e-04, in LR warm-up)": what a benchmark's
    loss decrease was measured at (the loss facts a probe measured)."""
    if facts.get("loss_decrease_pct") is None:
        return None
    parts = ["preliminary"] if facts.get("loss_preliminary", True) else []
    lr, cfg = finite(facts.get("lr_applied")), finite(facts.get("lr"))
    if lr is None:
        lr, cfg = cfg, None
    if lr is not None:
        at = f"at lr {lr:.1e}"
        if cfg:
            at += f" ({lr / cfg:.1%} of the configured {cfg:.1e}" + (", in LR warm-up)" if facts.get("lr_in_warmup")
                                                                     else ")")
        parts.append(at)
    return ", ".join(parts) or None


def judge(row: dict[str, Any], th: Thresholds, validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fill ``eligible``, ``fits``, ``blockers`` and ``reasons`` of one measured, ok row."""
    if not row.get("measured") or row.get("status") != "ok":
        row.setdefault("eligible", False)
        row.setdefault("fits", False)
        row.setdefault("blockers", list(row.get("reasons") or []))
        return row
    reasons, blockers = [], []
    n = row.get("steps_measured") or 0
    if row.get("step_cv_pct") is None:
        blockers.append(f"step-time stability not measured ({n} measured step(s); the CV needs >= {MIN_STEPS_SPREAD}): "
                        "measure longer (--max-time)")
    elif row["step_cv_pct"] >= th.max_step_cv_pct:
        blockers.append(f"unstable: step-time CV {row['step_cv_pct']:.1f}% >= {th.max_step_cv_pct:g}%")
    if row.get("diverged"):
        blockers.append("the loss diverged in its measurement")
    if row.get("collapsed"):
        blockers.append("representation collapse flagged")
    v = validation or {}
    if v.get("diverged"):
        blockers.append("the validation loss diverged")
    if v.get("crashed"):
        blockers.append("the validation run crashed")
    if v.get("loss_decrease_pct") is not None and not v.get("loss_preliminary") \
            and v["loss_decrease_pct"] < th.min_loss_decrease_pct:
        blockers.append(f"validation loss fell only {v['loss_decrease_pct']:.1f}% (< {th.min_loss_decrease_pct:g}%)")
    hours = row.get("hours")
    fits = hours is not None and hours <= row["limit_hours"]
    if hours is None:
        reasons.append("no projection (step time missing)")
    else:
        if row.get("hours_low") is not None and row.get("hours_high") is not None:
            band = f" [{row['hours_low']:.1f}-{row['hours_high']:.1f}]"
        else:
            band = f" ({(row.get('projection') or {}).get('band_note') or 'no band'})"
        reasons.append(f"projected {hours:.1f} h{band} {'within' if fits else 'over'} {row['limit_source']}")
        if fits and row.get("hours_high") is not None and row["hours_high"] > row["limit_hours"]:
            reasons.append(f"the upper band ({row['hours_high']:.1f} h) exceeds {row['limit_hours']:g} h")
        if row.get("projection", {}).get("lower_bound"):
            reasons.append("lower bound: " + ", ".join(row["projection"]["missing"]) + " not measured")
    if row.get("collapse_note"):
        reasons.append(f"feature quality: {row['collapse_note']}")
    ips = row.get("it_per_s")
    if ips is not None:
        reasons.append(f"{ips:.2f} it/s ({'>=' if ips >= th.min_it_per_s else '<'} the {th.min_it_per_s:g} minimum, "
                       f"{'>=' if ips >= th.expected_it_per_s else '<'} the ~{th.expected_it_per_s:g} expected)")
    if row.get("few_steps"):
        reasons.append(f"warning: {row['few_steps']}")
    row["eligible"] = not blockers
    row["fits"] = fits
    row["blockers"] = blockers
    row["reasons"] = blockers + reasons
    return row


def run_name(row: Mapping[str, Any]) -> str:
    """``B``, or ``B with 2 data-parallel processes`` for a row measured as a DDP job."""
    n = row.get("world_size") or 1
    return str(row["option"]) + (f" with {n} data-parallel processes" if n > 1 else "")


def _why_not(row: Mapping[str, Any]) -> str:
    """What keeps one judged row from being recommended, from its own blockers and fit."""
    why = []
    if not row.get("eligible"):
        why.append("not eligible (" + "; ".join(row.get("blockers") or ["no ok measurement"]) + ")")
    if row.get("status") == "ok" and not row.get("fits"):
        h = row.get("hours")
        why.append("no projection" if h is None else
                   f"does not fit (projected {h:.1f} h over {row['limit_source']})")
    return f"{run_name(row)}: " + " and ".join(why or ["passes and fits"])


def decide(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The recommended option (per machine) from judged rows.  An option measured both as one process
    and as a data-parallel job has a row for each; the faster one that fits wins their tie."""
    by_machine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("measured") and row.get("candidate", True):
            by_machine[row["machine"]].append(row)
    unmeasured = sorted({r["option"] for r in rows if not r.get("measured") and r.get("candidate", True)})
    out = []
    for mach, rs in by_machine.items():
        good = [r for r in rs if r.get("eligible") and r.get("fits")]
        if good:
            best = max(good, key=lambda r: (r["priority"], -(r["hours"] or math.inf)))
            why = [f"option {run_name(best)} ({best['title']}) is the most ambitious option that passes and fits: "
                   + "; ".join(best["reasons"])]
            others = [r for r in rs if r is not best]
            for r in sorted(others, key=lambda r: -r["priority"]):
                state = ("also fits, " + ("slower" if r["option"] == best["option"] else "less ambitious")
                         if r.get("eligible") and r.get("fits") else
                         "does not fit" if r.get("eligible") else "not eligible")
                why.append(f"{run_name(r)}: {state}: " + "; ".join(r.get("reasons") or []))
            out.append({"machine": mach, "recommended": best["option"], "world_size": best.get("world_size", 1),
                        "reasons": why})
        else:
            order = sorted(rs, key=lambda r: (r["option"], r.get("world_size") or 1))
            why = [f"{run_name(r)}: " + "; ".join(r.get("reasons") or []) for r in order]
            summary = "no option passes and fits: " + "; ".join(_why_not(r) for r in order)
            if all(r.get("eligible") for r in rs):
                summary += " (a longer option is never chosen because a shorter one is too slow)"
            why.insert(0, summary)
            out.append({"machine": mach, "recommended": None, "world_size": None, "reasons": why})
    if unmeasured:
        for d in out:
            d["reasons"].append(f"not measured (no number shown): {', '.join(unmeasured)}")
    return {"per_machine": out, "unmeasured": unmeasured}
