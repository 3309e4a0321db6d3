"""The validation run's result as a result record and as facts for the verdicts.

:func:`validation_record` turns ``validation.json`` (what
:func:`hjepa_bench.measure.validation_run.run_validation` returns) into a result
record the decision matrix projects from, like a sweep record;
:func:`validation_facts` gives the run's facts for the success criteria and the
checklist.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..plugin.api import Probe
from ..record import new_record

#: the validation run's first steps are warm-up: not measured
WARMUP_STEPS = 3


def validation_record(result: Mapping[str, Any], env: Mapping[str, Any],
                      probes: Mapping[str, Probe] | None = None) -> dict[str, Any]:
    """The validation run as a result record: its steps are the measurement (the first
    ``WARMUP_STEPS`` are warm-up); each probe of ``probes`` (None: the registered ones) makes its
    entry from the record and the run's result (its epoch ends give the per-epoch costs, its last
    feature measurement the features entry).  The decision matrix projects from it like from a
    sweep record."""
    from ..plugin.manager import registered_probes
    from ..stats import summarize

    steps = result.get("steps") or {}
    wait = [w or 0.0 for w in steps.get("data_wait_s") or []]
    run = [t for t in steps.get("step_time_s") or []]
    whole = [(t + w) if t is not None else None for t, w in zip(run, wait)]
    warm = min(WARMUP_STEPS, max(0, len(whole) - 2))
    measured = [t for t in whole[warm:] if t is not None]
    values = copy.deepcopy(dict(result.get("config") or {}))
    batch = int(values["data"]["batch_size"])
    values.setdefault("bench", {})["variant"] = values["bench"].get("variant", "reference")
    ok = bool(measured)
    ips = len(measured) / sum(measured) if ok and sum(measured) > 0 else None
    stats = summarize(measured) if ok else {}
    status = {"ok": "ok", "interrupted": "ok", "diverged": "diverged", "oom": "oom"}.get(result.get("status"), "error")
    if status == "ok" and not ok:
        status = "error"
    metrics = {"it_per_s": ips, "samples_per_s": None if ips is None else ips * batch,
               "step_time_s": stats, "measured_steps": len(measured),
               "data_wait_frac": (sum(wait[warm:]) / sum(measured)) if ok and sum(measured) else None,
               "peak_device_bytes": result.get("peak_memory_bytes"), "memory_source": result.get("memory_source"),
               "device_total_bytes": env.get("device_total_bytes"),
               "batch_size": {"requested": batch, "achieved": batch},
               "timing_method": "validation run: data wait + synced step, per step"}
    record = new_record(values, env)
    record.update({
        "status": status, "error": result.get("error"),
        "params": result.get("params") or {"total": 0, "trainable": 0},
        "metrics": metrics,
        "series": {"warmup_steps": warm, "step_time_s": whole, "loss": steps.get("loss") or [],
                   "grad_norm": steps.get("grad_norm") or [], "lr": steps.get("lr") or [],
                   "lr_in_warmup": steps.get("lr_in_warmup") or []},
        "probes": {}, "sweep": {"label": f"validation run ({result.get('epochs_completed')} epochs)"},
    })
    # each probe's entry of the run, as the probe builds it (Probe.validation_entry)
    for name, p in (registered_probes() if probes is None else probes).items():
        entry = p.validation_entry(record, result)
        if entry is not None:
            record["probes"][name] = entry
    return record


def validation_facts(result: Mapping[str, Any], record: Mapping[str, Any], thresholds: Any = None) -> Any:
    """Facts of a validation run for the success criteria and the checklist (the probes' own verdicts
    judged with ``thresholds``, None: the defaults)."""
    from ..analysis.criteria import facts_from_records, is_backend_error
    from ..thresholds import DEFAULTS

    f = facts_from_records([record], thresholds=thresholds or DEFAULTS)
    f.source = "validate"
    f.subject = (f"the validation run ({result.get('epochs_completed')}/{result.get('epochs_planned')} epochs, "
                 f"status {result.get('status')})")
    f.notes = [n for n in f.notes if "validation run's config" not in n]
    f.epochs_planned = result.get("epochs_planned")
    f.epochs_completed = result.get("epochs_completed")
    f.crashed = result.get("status") in ("error", "oom")
    f.crash_detail = result.get("error") if f.crashed else None
    f.oom = result.get("status") == "oom"
    if result.get("status") == "diverged":
        f.non_finite, f.diverged = True, True
    f.fallbacks = list(result.get("fallback_warnings") or [])
    # a crash fails stability; only an error from the device backend also fails compatibility
    f.backend_errors = [str(result["error"])] if f.crashed and is_backend_error(result.get("error")) else []
    f.loss_preliminary = False
    if f.collapse:
        f.collapse["note"] = f"EMA target encoder after {result.get('epochs_completed')} epoch(s), held-out images"
    if result.get("status") == "interrupted":
        f.notes.append("the run was interrupted (Ctrl-C): the report covers what was measured")
    return f

