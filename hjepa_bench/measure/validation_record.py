"""The validation run's result as a result record and as facts for the verdicts.

:func:`validation_record` turns ``validation.json`` (what
:func:`hjepa_bench.measure.validation_run.run_validation` returns) into a result
record the decision matrix projects from, like a sweep record;
:func:`validation_facts` gives the run's facts for the success criteria and the
checklist.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping

from ..analysis.bottleneck import analyze_bottleneck
from ..analysis.features import judge_features
from ..record import new_record

#: the validation run's first steps are warm-up: not measured
WARMUP_STEPS = 3


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def validation_record(result: Mapping[str, Any], env: Mapping[str, Any]) -> dict[str, Any]:
    """The validation run as a result record: its steps are the measurement (the first
    ``WARMUP_STEPS`` are warm-up), its epoch ends give the per-epoch costs, its last
    feature measurement is the features entry.  The decision matrix projects from it
    like from a sweep record."""
    from ..analysis.loss_curve import analyze_loss, applied_lr_at_end
    from ..analysis.stability import analyze_stability
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
    epochs = result.get("epochs") or []
    val_steps = [e["val_s"] / e["val_batches"] for e in epochs if e.get("val_batches") and e.get("val_s")]
    saves = [c["save_s"] for c in result.get("checkpoints") or [] if c.get("save_s") is not None]
    starts = [e.get("loader_start_s") for e in epochs if e.get("loader_start_s") is not None]
    lr = float(values["training"]["lr"])
    applied, in_warmup = applied_lr_at_end(steps, len(steps.get("loss") or []))
    loss = analyze_loss(steps.get("loss") or [], warm, lr, applied_lr=applied, lr_in_warmup=in_warmup)
    loss["preliminary"] = False
    loss["notes"] = [n for n in loss.get("notes", []) if "preliminary" not in n]
    status = {"ok": "ok", "interrupted": "ok", "diverged": "diverged", "oom": "oom"}.get(result.get("status"), "error")
    if status == "ok" and not ok:
        status = "error"
    before = ((result.get("self_check") or {}).get("costs") or {})
    writes = [e["checkpoint_s"] for e in epochs if e.get("checkpoint_s")]
    probes: dict[str, Any] = {
        "loss": {"status": "ok", **loss},
        "epoch_costs": {"status": "ok", "measured": True, "paid_every_epoch": not values["bench"].get("persistent_workers"),
                        "worker_startup_s": _median(starts), "val_step_s": _median(val_steps),
                        "val_batch_size": batch, "checkpoint_save_s": _median(saves),
                        "checkpoint_write_s": _median(writes),
                        "checkpoint_bytes": max((c.get("bytes") or 0 for c in result.get("checkpoints") or []), default=None),
                        "periodic": before.get("periodic"), "model_build_s": result.get("setup_s"),
                        "source": "the validation run's epoch ends (worker start-up, validation step, checkpoint "
                                  "writes); the trainer's periodic work as measured before its first epoch; "
                                  "model build: its set-up"},
    }
    if ok:  # the full stability analysis of the run's per-step times (spikes, period, drift), as a probe does
        probes["stability"] = {"status": "ok", **analyze_stability(whole, warm)}
    feats = [f for f in result.get("features") or [] if f.get("rankme") is not None]
    if feats:
        probes["features"] = judge_features({"status": "ok", "measured": True, **feats[-1],
                                             "steps_trained": feats[-1].get("global_step")})
    metrics = {"it_per_s": ips, "samples_per_s": None if ips is None else ips * batch,
               "step_time_s": stats, "measured_steps": len(measured),
               "data_wait_frac": (sum(wait[warm:]) / sum(measured)) if ok and sum(measured) else None,
               "peak_device_bytes": result.get("peak_memory_bytes"), "memory_source": result.get("memory_source"),
               "device_total_bytes": env.get("device_total_bytes"),
               "batch_size": {"requested": batch, "achieved": batch},
               "timing_method": "validation run: data wait + synced step, per step"}
    if metrics["data_wait_frac"] is not None:
        # the data wait is measured per step; the step time includes the device sync, so the
        # host/device split is not: the same analysis, data-bound or not
        probes["bottleneck"] = {"status": "ok", **analyze_bottleneck(
            metrics, str(values["bench"].get("device") or env.get("backend") or ""),
            int(values["data"]["num_workers"]), int(env.get("cpu_count_logical") or os.cpu_count() or 1))}
    record = new_record(values, env)
    record.update({
        "status": status, "error": result.get("error"),
        "params": result.get("params") or {"total": 0, "trainable": 0},
        "metrics": metrics,
        "series": {"warmup_steps": warm, "step_time_s": whole, "loss": steps.get("loss") or [],
                   "grad_norm": steps.get("grad_norm") or [], "lr": steps.get("lr") or [],
                   "lr_in_warmup": steps.get("lr_in_warmup") or []},
        "probes": probes, "sweep": {"label": f"validation run ({result.get('epochs_completed')} epochs)"},
    })
    return record


def validation_facts(result: Mapping[str, Any], record: Mapping[str, Any]) -> Any:
    """Facts of a validation run for the success criteria and the checklist."""
    from ..analysis.criteria import facts_from_records, is_backend_error

    f = facts_from_records([record])
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


__all__ = ["WARMUP_STEPS", "validation_record", "validation_facts"]
