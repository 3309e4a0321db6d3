"""The validation run's self-check: the projection made from its own first steps against what it took
(pure: a validation result in, plain data out).

Before its first epoch the validation run measures what the ``epoch_costs`` probe measures (worker
start-up, a validation step, a checkpoint write, the upstream trainer's periodic work) on its own
trainer and loader.  With its first ``FIRST_STEPS`` measured steps (after ``warmup`` warm-up steps)
that is everything a projection needs: :func:`self_check` projects each epoch and the whole run
with :func:`hjepa_bench.analysis.projection.project` (the arithmetic every projection uses), then
puts next to it what each epoch (``wall_s``: from the loader's start to the last checkpoint copy,
the feature-quality measurement left out, which the upstream trainer does not do) and the whole
run (``train_wall_s``: the epochs, back to back) took.  The set-up (data, model, optimizer) is
outside both, as it is outside the trainer's "Starting training" -> "Training completed".

Above ``UNFORESEEN_PCT`` error it names the part of the run whose time the projection missed by
the most: the steps (a slower or faster machine than in the first steps; the load average at the
start and at each epoch's end is in the result), the worker start-ups, validation, checkpoints,
the trainer's logging, or the rest (time between those parts, not modelled).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ..stats import median
from .periodic import LoggingPlan
from .projection import PERIODIC_COLUMNS, costs_from_entry, mean_band, no_band_note, project

#: measured steps of epoch 1 (after warm-up) the projection is made from
FIRST_STEPS = 20
#: above this error (%) the self-check names the cost it did not foresee
UNFORESEEN_PCT = 10.0
PARTS = ("steps", "worker start-up", "validation", "checkpoints", "trainer logging", "other")


def _pct(projected: float, measured: float) -> float | None:
    return None if not measured else 100.0 * (projected - measured) / measured


def _first_epoch_steps(steps: Mapping[str, Any], warmup: int) -> tuple[list[tuple[float, float]], int]:
    """The first epoch's timed steps as (data wait + step, data wait), and how many of them are warm-up."""
    first = [(t + (w or 0.0), w or 0.0) for t, w, e in zip(steps["step_time_s"], steps["data_wait_s"], steps["epoch"])
             if e == 1 and t is not None]
    return first, min(warmup, max(0, len(first) - 1))


def _projection_from_first_steps(result: Mapping[str, Any], entry: Mapping[str, Any], first: list[tuple[float, float]],
                                 warm: int, window: list[tuple[float, float]], batch: int,
                                 spe: int) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The run projected from its first measured steps and the costs measured before it:
    (projection, costs, mean step s)."""
    config = result["config"]
    n_epochs = int(result["epochs_planned"])
    band = mean_band([t for t, _ in window])
    mean, low, high = cast(float, band[0]), band[1], band[2]  # a non-empty window of finite times has a mean
    sec = {"mid": mean, "low": low, "high": high, "n": len(window), "band_note": no_band_note(len(window))}
    costs = costs_from_entry({"status": "ok", **entry})
    steady_wait = median(w for _, w in window)
    ws = costs.get("worker_startup_s")
    costs["startup_extra_s"] = None if ws is None else max(0.0, ws - steady_wait)
    costs["model_build_s"] = None  # the set-up is outside the measured run
    excess = max(0.0, sum(t for t, _ in first[:warm]) - warm * mean)
    plan = LoggingPlan.from_config(config)
    p = project(sec_per_step=sec, batch_size=batch, epochs=n_epochs, dataset_size=spe * batch, costs=costs,
                val_size=int(result.get("val_size") or 0), val_every_epochs=1, checkpoint_every_epochs=1,
                plan=plan, levels=int(config["model"]["num_hierarchies"]), device_type=str(result.get("device")),
                checkpoint_writes=n_epochs, warmup_excess_s=excess)
    return p, costs, mean


def _projected_parts(p: Mapping[str, Any], costs: Mapping[str, Any], n_epochs: int) -> dict[str, float]:
    """The projection's seconds per part of the run (worker start-ups of validation passes count as validation)."""
    ov, counts = p["overheads_s"], p.get("overhead_counts") or {}
    ws = costs.get("worker_startup_s")
    train_start = costs["startup_extra_s"] if costs["startup_extra_s"] is not None else ws
    n_train_starts = n_epochs if costs.get("worker_startup_every_epoch", True) else 1
    val_passes = counts.get("validation_passes", 0)
    return {
        "steps": p["train_s"]["mid"] + (ov.get("one_time") or 0.0),
        "worker start-up": (train_start or 0.0) * n_train_starts,
        "validation": (ov.get("validation") or 0.0) + (ws or 0.0) * val_passes,
        "checkpoints": ov.get("checkpoints") or 0.0,
        "trainer logging": sum(ov.get(k) or 0.0 for k in PERIODIC_COLUMNS),
        "other": 0.0,
    }


def _epoch_rows(p: Mapping[str, Any], epochs: list[Mapping[str, Any]], n_epochs: int) -> list[dict[str, Any]]:
    """Projected against measured seconds of every epoch that ran (the one-time costs in the first)."""
    ov = p["overheads_s"]
    per_epoch = (p["total_s"]["mid"] - (ov.get("one_time") or 0.0)) / n_epochs
    rows = []
    for e in epochs:
        projected = per_epoch + ((ov.get("one_time") or 0.0) if e["epoch"] == 1 else 0.0)
        rows.append({"epoch": e["epoch"], "projected_s": projected, "measured_s": e["wall_s"],
                     "error_pct": _pct(projected, e["wall_s"]), "loadavg_1m": e.get("loadavg_1m")})
    return rows


def _whole_run(p: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any] | None:
    """Projected against measured seconds of the whole run (None without its training wall time)."""
    if not result.get("train_wall_s"):
        return None
    return {"projected_s": p["total_s"]["mid"], "low_s": p["total_s"].get("low"), "high_s": p["total_s"].get("high"),
            "measured_s": float(result["train_wall_s"]),
            "error_pct": _pct(p["total_s"]["mid"], float(result["train_wall_s"]))}


def _measured_parts(epochs: list[Mapping[str, Any]], steps: Mapping[str, Any],
                    idx: Mapping[int, list[int]]) -> dict[str, float]:
    """What each part of the run took in the epochs that ran ("other": the rest of their wall time)."""
    meas_parts = dict.fromkeys(PARTS, 0.0)
    for ep in epochs:
        ii = idx[ep["epoch"]]
        meas_parts["steps"] += sum((steps["step_time_s"][i] or 0.0) + (steps["data_wait_s"][i] or 0.0) for i in ii)
        meas_parts["worker start-up"] += ep.get("loader_start_s") or 0.0
        meas_parts["validation"] += ep.get("val_s") or 0.0
        meas_parts["checkpoints"] += ep.get("checkpoint_s") or 0.0
        meas_parts["trainer logging"] += sum((ep.get("periodic_s") or {}).values())
    known = sum(v for k, v in meas_parts.items() if k != "other")
    meas_parts["other"] = max(0.0, sum(ep["wall_s"] for ep in epochs) - known)
    return meas_parts


def _unforeseen(rows: list[dict[str, Any]], run: Mapping[str, Any] | None, parts: list[dict[str, Any]],
                n_steps: int, mean: float, first_steps: int, loadavg_before: Any) -> dict[str, Any] | None:
    """The part furthest from its projection, when an epoch or the run missed by more than
    ``UNFORESEEN_PCT`` (for the steps: the mean step against the first ones, and the load average)."""
    errors = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None]
    if run and run["error_pct"] is not None:
        errors.append(abs(run["error_pct"]))
    if not errors or max(errors) <= UNFORESEEN_PCT:
        return None
    worst = max(parts, key=lambda r: abs(r["measured_s"] - r["projected_s"]))
    more = worst["measured_s"] > worst["projected_s"]
    text = (f"{worst['part']}: {worst['measured_s']:.1f} s measured against {worst['projected_s']:.1f} s "
            f"projected ({'not foreseen' if more else 'fewer than foreseen'})")
    if worst["part"] == "steps":
        text += (f"; the mean step took {worst['measured_s'] / max(1, n_steps) * 1000:.0f} ms against "
                 f"{mean * 1000:.0f} ms in the first {first_steps} measured steps")
        loads = [loadavg_before] + [r["loadavg_1m"] for r in rows]
        if all(x is not None for x in loads):
            text += (" (1-minute load average " + " -> ".join(f"{x:.1f}" for x in loads)
                     + ": the machine's load changed)" if max(loads) - min(loads) >= 0.5 else ")")
    return {"part": worst["part"], "text": text}


def self_check(result: Mapping[str, Any], warmup: int) -> dict[str, Any] | None:
    """Projected vs measured epochs and run of a validation ``result``; None when the run measured
    no costs before training or completed no epoch."""
    sc = result.get("self_check") or {}
    entry = sc.get("costs")
    epochs = [e for e in result.get("epochs") or [] if e.get("wall_s") is not None]
    steps = result.get("steps") or {}
    if not entry or not epochs:
        return None
    batch = int(result["config"]["data"]["batch_size"])
    spe = int(result["steps_per_epoch"])
    n_epochs = int(result["epochs_planned"])
    first, warm = _first_epoch_steps(steps, warmup)
    window = first[warm:warm + FIRST_STEPS]
    if not window:
        return None
    p, costs, mean = _projection_from_first_steps(result, entry, first, warm, window, batch, spe)
    if p.get("total_s") is None or p["total_s"].get("mid") is None:
        return {"projection": p, "epochs": [], "run": None, "unforeseen": None,
                "note": "no projection: " + ", ".join(p.get("missing") or [])}
    proj_parts = _projected_parts(p, costs, n_epochs)
    rows = _epoch_rows(p, epochs, n_epochs)
    complete = len(epochs) == n_epochs
    run = _whole_run(p, result) if complete else None
    idx = {ep["epoch"]: [i for i, e in enumerate(steps["epoch"]) if e == ep["epoch"]] for ep in epochs}
    meas_parts = _measured_parts(epochs, steps, idx)
    share = len(epochs) / n_epochs  # the projection's parts for the epochs that ran
    parts = [{"part": k, "projected_s": proj_parts[k] * share, "measured_s": meas_parts[k]} for k in PARTS]
    n_steps = sum(len(idx[ep["epoch"]]) for ep in epochs)
    unforeseen = _unforeseen(rows, run, parts, n_steps, mean, len(window), sc.get("loadavg_1m"))
    return {"projection": p, "first_steps": len(window), "step_s": mean, "epochs": rows, "run": run, "parts": parts,
            "unforeseen": unforeseen, "complete": complete, "unforeseen_pct": UNFORESEEN_PCT}


def self_check_lines(check: Mapping[str, Any] | None) -> list[str]:
    """Terminal lines of a self-check."""
    if not check:
        return ["projection self-check: not made (no costs measured before training, or no epoch completed)"]
    if not check.get("epochs"):
        return [f"projection self-check: {check.get('note')}"]
    errs = ", ".join(f"{r['error_pct']:+.1f}%" for r in check["epochs"] if r["error_pct"] is not None)
    line = (f"projection self-check (from the first {check['first_steps']} measured steps): epochs {errs}")
    if check.get("run"):
        r = check["run"]
        line += (f"; whole run {r['projected_s']:.1f} s projected, {r['measured_s']:.1f} s measured "
                 f"({r['error_pct']:+.1f}%)")
    out = [line]
    if check.get("unforeseen"):
        out.append(f"  above {check['unforeseen_pct']:g}%: {check['unforeseen']['text']}")
    return out
