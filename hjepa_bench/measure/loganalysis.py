"""``hjepa-bench analyze``: an upstream training log -> the same criteria, projections and
report as a sweep.

:mod:`hjepa_bench.analysis.logparse` reads the log (pure).  This module turns its
analysis into

* :class:`~hjepa_bench.analysis.criteria.Facts` for the success criteria and the
  checklist (speed from the bars' counters and elapsed times, loss from the distinct
  postfix values on smoothed windows, stalls, errors and CPU fallbacks named in the
  log), and
* a *log record*: a result record whose config is the log's own (values it prints,
  ``--config`` and CLI flags otherwise), whose time per step is the steady speed,
  whose per-step distribution is the per-interval seconds per step, and whose
  per-epoch costs are the log's measured ones (epoch start-up beyond a steady
  step, the validation bar's time per step).  The decision matrix projects from it
  exactly as from a sweep record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..format import finite
from ..analysis.criteria import Facts
from ..analysis.logparse import LogParseError, analyze_log, parse_log
from ..config import resolve_config, resolve_model_name, resolve_precision
from ..errors import UserError
from ..record import new_record
from .stats import summarize

FALLBACK_RE = re.compile(r"fall(?:s|ing)?[ -]?back|not (?:currently )?(?:supported|implemented) on the MPS", re.I)
ERROR_RE = re.compile(r"Traceback \(most recent call last\)|^\S*Error: |CUDA error|MPS backend out of memory", re.M)


def read_log(path: str | Path) -> tuple[str, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"log file not found: {p}.")
    data = p.read_bytes()
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = parse_log(text)
    except LogParseError as exc:
        raise UserError(f"{p}: {exc}") from None
    result = analyze_log(parsed)
    if not result["epochs"]:
        raise UserError(f"{p} has no training progress bar with a step counter; nothing to measure.")
    return text, result


def log_values(info: Mapping[str, Any], config_path: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config: defaults <- --config <- CLI flags <- what the log prints (the log
    says what the run used; flags fill in what it does not print)."""
    from_log: dict[str, Any] = {}
    if info.get("encoder_type"):
        try:
            from_log["model.encoder_type"] = resolve_model_name(str(info["encoder_type"]))
        except UserError:
            pass
    for key, dotted in (("num_hierarchies", "model.num_hierarchies"), ("predictor_depth", "model.predictor.depth"),
                        ("batch_size", "data.batch_size"), ("num_workers", "data.num_workers"),
                        ("image_size", "data.image_size"), ("epochs", "training.epochs"),
                        ("lr", "training.lr"), ("warmup_epochs", "training.warmup_epochs")):
        if info.get(key) is not None:
            from_log[dotted] = info[key]
    merged = {**{k: v for k, v in overrides.items() if v is not None}, **from_log}
    return resolve_config(config_path, merged).values


def log_record(result: Mapping[str, Any], values: dict[str, Any], source: str) -> dict[str, Any]:
    """A result record measured by the logged run (see the module docstring)."""
    info = result.get("info") or {}
    device = str(info.get("device") or "unknown").split(":")[0]
    values = dict(values)
    values["bench"] = {**values["bench"], "precision": resolve_precision(values, device), "device": device,
                       "variant": "reference"}
    overall = result["overall"]
    ips = finite(overall.get("steady_it_per_s")) or finite(overall.get("it_per_s"))
    batch = int(values["data"]["batch_size"])
    per_step = [1.0 / r for r in _steady_interval_rates(result) if r > 0]
    epochs = [e for e in result["epochs"] if e.get("steady_it_per_s")]
    startup = []
    for e in epochs:
        if e.get("warmup_s") is not None and e.get("warmup_steps") is not None:
            startup.append(max(0.0, e["warmup_s"] - e["warmup_steps"] / e["steady_it_per_s"]))
    val = [v for v in result.get("val_bars") or [] if v.get("steps") and v.get("elapsed_s")]
    costs: dict[str, Any] = {"measured": True, "paid_every_epoch": True,
                             "worker_startup_s": (sum(startup) / len(startup)) if startup else None,
                             "val_step_s": (sum(v["elapsed_s"] / v["steps"] for v in val) / len(val)) if val else None,
                             "val_batch_size": batch, "checkpoint_save_s": None,
                             "source": "the log: epoch start-up = warm-up time beyond steady steps; validation = "
                                       "validation bar time per step; checkpoint writes are not in the log"}
    loss = result.get("loss") or {}
    cv = finite(overall.get("step_time_cv"))
    spread = summarize(per_step)  # the per-interval seconds per step
    record = new_record(values, {"backend": device, "device_name": f"the logged run ({Path(source).name})",
                                 "fingerprint_id": f"log:{Path(source).name}"})
    record.update({
        "status": "ok",
        "params": {"total": int(info.get("total_params") or 0), "trainable": int(info.get("trainable_params") or 0)},
        "metrics": {"it_per_s": ips, "samples_per_s": None if ips is None else ips * batch,
                    "step_time_s": {"median": None if ips is None else 1 / ips, "cv": cv, "n": overall.get("steps"),
                                    "iqr": spread["iqr"], "p10": spread["p10"], "p90": spread["p90"]},
                    "measured_steps": overall.get("steps"), "measured_time_s": overall.get("elapsed_s"),
                    "data_wait_frac": None, "peak_device_bytes": None, "batch_size": {"requested": batch, "achieved": batch},
                    "timing_method": "training-log bar counters and elapsed times"},
        "series": {"warmup_steps": 0, "step_time_s": per_step,
                   "loss": [p[1] for p in loss.get("points") or []]},
        "probes": {"epoch_costs": {"status": "ok", **costs},
                   "loss": {"status": "ok", "decrease_pct": loss.get("decrease_pct"), "diverged": loss.get("diverged"),
                            "start_loss": loss.get("start"), "end_loss": loss.get("end"), "trend": loss.get("trend"),
                            "n": loss.get("n"), "preliminary": False},
                   "stability": {"status": "ok", "cv_pct": None if cv is None else 100 * cv}},
        "sweep": {"label": f"log {Path(source).name}"},
    })
    return record


def _steady_interval_rates(result: Mapping[str, Any]) -> list[float]:
    rates = []
    for e in result["epochs"]:
        for iv in e.get("steady_intervals") or []:
            if finite(iv.get("it_per_s")):
                rates.append(float(iv["it_per_s"]))
    if not rates:  # fall back to one value per epoch
        rates = [float(e["steady_it_per_s"] or e["it_per_s"]) for e in result["epochs"]
                 if finite(e.get("steady_it_per_s") or e.get("it_per_s"))]
    return rates


def log_facts(result: Mapping[str, Any], text: str, source: str) -> Facts:
    info = result.get("info") or {}
    overall = result["overall"]
    f = Facts(source="log", subject=f"the training log {Path(source).name}", device=info.get("device"),
              backend=str(info.get("device") or "").split(":")[0] or None)
    errors = [m.group(0).strip() for m in ERROR_RE.finditer(text)]
    f.crashed = bool(errors)
    f.crash_detail = errors[0] if errors else None
    f.backend_errors = [line.strip()[:200] for line in text.splitlines()
                        if re.search(r"(MPS|CUDA|cuDNN).*(error|Error)|out of memory", line)][:5]
    f.fallbacks = sorted({line.strip()[:200] for line in text.splitlines() if FALLBACK_RE.search(line)})[:5]
    f.epochs_planned = result.get("epochs_planned")
    f.epochs_completed = result.get("epochs_completed")
    loss = result.get("loss") or {}
    f.non_finite = bool(loss.get("non_finite"))
    ips = finite(overall.get("steady_it_per_s")) or finite(overall.get("it_per_s"))
    f.it_per_s = ips
    cv = finite(overall.get("step_time_cv"))
    f.step_cv_pct = None if cv is None else 100 * cv
    bar = [e.get("bar_it_per_s") for e in result["epochs"] if e.get("bar_it_per_s")]
    f.speed_method = (f"steady speed from the bars' counters and elapsed times ({overall.get('steps')} steps in "
                      f"{overall.get('elapsed_s'):.0f} s overall = {overall.get('it_per_s'):.2f} it/s including warm-up "
                      "and stalls)" + (f"; tqdm's smoothed rate showed {bar[-1]:.2f} it/s" if bar else ""))
    f.loss_start, f.loss_end = finite(loss.get("start")), finite(loss.get("end"))
    f.loss_decrease_pct = finite(loss.get("decrease_pct"))
    f.loss_trend = loss.get("trend")
    f.loss_noisy = (None if loss.get("noise_pct") is None
                    else bool(loss["noise_pct"] > (result.get("rules") or {}).get("loss_noise_threshold_pct", 10.0)))
    f.diverged = loss.get("diverged")
    f.loss_points = loss.get("n")
    f.loss_preliminary = False
    f.warmup_spikes = _warmup_spikes(result)
    stall_s = finite(overall.get("stall_time_s")) or 0.0
    total_s = finite(overall.get("elapsed_s")) or 0.0
    stalls = [s for e in result["epochs"] for s in e.get("stalls") or []]
    period = None
    starts = sorted(s["from_step"] for s in stalls)
    if len(starts) >= 3:
        gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
        period = gaps[len(gaps) // 2]
    f.logging_stall = {"period_steps": period, "cost_pct": 100 * stall_s / total_s if total_s else None,
                       "evidence": (f"{len(stalls)} stall(s), {stall_s:.0f} s of {total_s:.0f} s "
                                    f"({100 * stall_s / total_s:.1f}%)" if total_s else "no timing")
                       + "; stalls may come from logging, checkpointing or I/O"}
    lr = finite(info.get("lr"))
    f.lr = lr
    if lr is not None and f.loss_decrease_pct is not None:
        from ..analysis.loss_curve import lr_advice

        adv = lr_advice(bool(f.diverged), f.loss_trend, finite(loss.get("noise_pct")), f.loss_decrease_pct, lr)
        f.lr_advice_detail = adv
        f.lr_advice = adv.get("text")
    if result.get("stopped_at"):
        f.notes.append(f"parsing stopped at {result['stopped_at']}")
    return f


def _warmup_spikes(result: Mapping[str, Any]) -> int | None:
    """Loss points during the warm-up epochs more than 50% above the previous point."""
    pts = (result.get("loss") or {}).get("points") or []
    info = result.get("info") or {}
    spe = info.get("steps_per_epoch")
    warm = finite(info.get("warmup_epochs"))
    if not pts or not spe or warm is None:
        return None
    limit = warm * spe
    vals = [(s, v) for s, v in pts if s <= limit and v is not None]
    return sum(1 for (_, a), (_, b) in zip(vals, vals[1:]) if a > 0 and b > 1.5 * a)


@dataclass
class LogAnalysis:
    """A training log read and judged (``hjepa-bench analyze``): its text, the parsed analysis
    (:func:`~hjepa_bench.analysis.logparse.analyze_log`), the run's config, its record and its facts."""

    path: str
    text: str
    result: dict[str, Any]
    values: dict[str, Any]
    record: dict[str, Any]
    facts: Facts
    dataset_size: int | None  # training images per epoch: the log's, else the caller's

    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch table of ``analysis.json``."""
        return [{"epoch": e["epoch"], "steps": e["steps"], "elapsed_s": e["elapsed_s"], "it_per_s": e["it_per_s"],
                 **{k: v for k, v in e.items() if k not in ("epoch", "steps", "elapsed_s", "it_per_s") and not k.startswith("_")}}
                for e in self.result["epochs"]]

    def payload(self, analysis: Mapping[str, Any]) -> dict[str, Any]:
        """``analysis.json``: the log's epochs and analysis with the report's verdicts."""
        return {"log": str(self.path), "epochs": self.epochs(), **{k: v for k, v in self.result.items() if k != "epochs"},
                "criteria": analysis["criteria"], "checklist": analysis["checklist"],
                "decision": analysis["decision"], "matrix": analysis["matrix"], "config": self.values}


def analyze_log_file(path: str, config_path: str | None, overrides: Mapping[str, Any],
                     dataset_size: int | None = None) -> LogAnalysis:
    """Read the log at ``path`` and build its config (``config_path`` and ``overrides`` fill what
    the log does not print), record and facts."""
    text, result = read_log(path)
    values = log_values(result.get("info") or {}, config_path, overrides)
    record = log_record(result, values, path)
    facts = log_facts(result, text, path)
    ds = (result.get("info") or {}).get("dataset_size") or dataset_size
    return LogAnalysis(path=path, text=text, result=result, values=values, record=record, facts=facts,
                       dataset_size=int(ds) if ds else None)
