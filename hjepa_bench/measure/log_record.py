"""``hjepa-bench analyze``: an upstream training log -> the same criteria, projections and
report as a sweep.

:mod:`hjepa_bench.analysis.log_parse` reads the log, :mod:`~hjepa_bench.analysis.log_speed`
measures it and :mod:`~hjepa_bench.analysis.log_facts` turns it into the criteria's facts (all
pure).  This module reads the file and builds

* a *log record*: a result record whose config is the log's own (values it prints,
  ``--config`` and CLI flags otherwise), whose time per step is the wall clock of
  the training bars (steps / elapsed: each epoch's start-up and the stalls
  included, as a full run pays them), whose per-step distribution is the
  per-interval seconds per step of the steady intervals, and whose per-epoch
  costs are the log's measured ones (the validation bar's time per step; the
  epoch start-up is already in the time per step, so it adds 0).  The decision
  matrix projects from it exactly as from a sweep record.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.criteria import Facts
from ..analysis.log_facts import log_facts
from ..analysis.log_parse import LogParseError, parse_log
from ..analysis.log_speed import analyze_log, steady_interval_rates
from ..config import resolve_config, resolve_model_name, resolve_precision
from ..errors import LOG_MAX_BYTES, UserError, read_bytes
from ..format import finite
from ..record import new_record
from ..stats import summarize


def read_log(path: str | Path) -> tuple[str, dict[str, Any]]:
    p = Path(path)
    data = read_bytes(p, "log file", LOG_MAX_BYTES)
    text = data.decode("utf-8", errors="replace")
    try:
        parsed = parse_log(text)
    except LogParseError as exc:
        raise UserError(f"{p}: {exc}") from None
    result = analyze_log(parsed)
    if not result["epochs"]:
        raise UserError(f"{p} has no training progress bar with a step counter; nothing to measure.")
    return text, result


def log_settings(info: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config key -> the value the log prints for it."""
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
    return from_log


def log_values(info: Mapping[str, Any], config_path: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config: defaults <- --config <- CLI flags <- what the log prints (the log
    says what the run used; flags fill in what it does not print).  The flags are checked
    even where the log's values win."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    resolve_config(config_path, flags)
    return resolve_config(config_path, {**flags, **log_settings(info)}).values


def overridden_by_log(info: Mapping[str, Any], overrides: Mapping[str, Any],
                      dataset_size: int | None = None) -> dict[str, tuple[Any, Any]]:
    """Dotted key (or ``dataset_size``) -> (the flag's value, the log's value) for each flag
    the log contradicts: the log's value is used, and the caller says so."""
    from_log = {**log_settings(info), "dataset_size": info.get("dataset_size")}
    given = {**overrides, "dataset_size": dataset_size}
    if given.get("model.encoder_type") is not None:  # vit_small and vit_small_patch16_224 are one model
        given["model.encoder_type"] = resolve_model_name(given["model.encoder_type"])
    return {k: (v, from_log[k]) for k, v in given.items()
            if v is not None and from_log.get(k) is not None and from_log[k] != v}


def log_record(result: Mapping[str, Any], values: dict[str, Any], source: str) -> dict[str, Any]:
    """A result record measured by the logged run (see the module docstring)."""
    info = result.get("info") or {}
    device = str(info.get("device") or "unknown").split(":")[0]
    values = dict(values)
    values["bench"] = {**values["bench"], "precision": resolve_precision(values, device), "device": device,
                       "variant": "reference"}
    overall = result["overall"]
    ips = finite(overall.get("it_per_s"))  # wall clock: epoch start-up and stalls included
    batch = int(values["data"]["batch_size"])
    per_step = [1.0 / r for r in steady_interval_rates(result) if r > 0]
    epochs = [e for e in result["epochs"] if e.get("steady_it_per_s")]
    startup = []
    for e in epochs:
        if e.get("warmup_s") is not None and e.get("warmup_steps") is not None:
            startup.append(max(0.0, e["warmup_s"] - e["warmup_steps"] / e["steady_it_per_s"]))
    val = [v for v in result.get("val_bars") or [] if v.get("steps") and v.get("elapsed_s")]
    costs: dict[str, Any] = {"measured": True, "paid_every_epoch": True,
                             # the start-up is inside the wall-clock time per step (each epoch's bar time holds
                             # it), so a projection adds nothing for it; the validation bar's time holds its own
                             "worker_startup_s": 0.0,
                             "epoch_startup_s": (sum(startup) / len(startup)) if startup else None,
                             "val_step_s": (sum(v["elapsed_s"] / v["steps"] for v in val) / len(val)) if val else None,
                             "val_batch_size": batch, "checkpoint_save_s": None,
                             "source": "the log: the training steps are timed by the wall clock of the training "
                                       "bars, so each epoch's start-up (epoch_startup_s: warm-up time beyond steady "
                                       "steps) and stalls are in the time per step and worker_startup_s adds 0; "
                                       "validation = validation bar time per step (its start-up included); "
                                       "checkpoint writes are not in the log"}
    loss = result.get("loss") or {}
    cv = finite(overall.get("step_time_cv"))
    spread = summarize(per_step)  # the per-interval seconds per step
    record = new_record(values, {"backend": device, "device_name": f"the logged run ({Path(source).name})",
                                 "fingerprint_id": f"log:{Path(source).name}"})
    record.update({
        # a log whose bars give no speed (every bar at 00:00 elapsed, a single refresh...) measured nothing
        "status": "ok" if ips else "error",
        "error": None if ips else "the log's progress bars give no usable speed (no steps over a measurable time)",
        "params": {"total": int(info.get("total_params") or 0), "trainable": int(info.get("trainable_params") or 0)},
        "metrics": {"it_per_s": ips, "samples_per_s": None if ips is None else ips * batch,
                    "step_time_s": {"median": None if ips is None else 1 / ips, "cv": cv, "n": overall.get("steps"),
                                    "iqr": spread["iqr"], "p10": spread["p10"], "p90": spread["p90"]},
                    "measured_steps": overall.get("steps"), "measured_time_s": overall.get("elapsed_s"),
                    "data_wait_frac": None, "peak_device_bytes": None, "batch_size": {"requested": batch,
                                                                                      "achieved": batch},
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


@dataclass
class LogAnalysis:
    """A training log read and judged (``hjepa-bench analyze``): its text, the parsed analysis
    (:func:`~hjepa_bench.analysis.log_speed.analyze_log`), the run's config, its record and its facts."""

    path: str
    text: str
    result: dict[str, Any]
    values: dict[str, Any]
    record: dict[str, Any]
    facts: Facts
    dataset_size: int | None  # training images per epoch: the log's, else the caller's
    overridden: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # see overridden_by_log

    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch table of ``analysis.json``."""
        return [{"epoch": e["epoch"], "steps": e["steps"], "elapsed_s": e["elapsed_s"], "it_per_s": e["it_per_s"],
                 **{k: v for k, v in e.items() if k not in ("epoch", "steps", "elapsed_s",
                                                            "it_per_s") and not k.startswith("_")}}
                for e in self.result["epochs"]]

    def payload(self, analysis: Mapping[str, Any]) -> dict[str, Any]:
        """``analysis.json``: the log's epochs and analysis with the report's verdicts."""
        return {"log": str(self.path), "epochs": self.epochs(), **{k: v for k,
                                                                   v in self.result.items() if k != "epochs"},
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
                       dataset_size=int(ds) if ds else None,
                       overridden=overridden_by_log(result.get("info") or {}, overrides, dataset_size))
