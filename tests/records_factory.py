"""Hand-made result records with known numbers, for the analysis and report tests."""
from __future__ import annotations

import copy
from typing import Any

from hjepa_bench.config import resolve_config
from hjepa_bench.options import guide_options, option_overrides
from hjepa_bench.record import new_record

GIB = 2**30


def option_values(name: str, **overrides: Any) -> dict[str, Any]:
    opt = next(o for o in guide_options() if o.name == name)
    over = {**option_overrides(opt), **overrides}
    values = resolve_config(None, over, base=opt.values()).values
    values["bench"]["precision"] = "fp32"
    values["bench"]["device"] = "cpu"
    return values


def quick_val_values(**overrides: Any) -> dict[str, Any]:
    values = resolve_config(None, overrides).values
    values["bench"]["precision"] = "fp32"
    values["bench"]["device"] = "cpu"
    return values


def make_record(values: dict[str, Any], *, it_per_s: float = 2.0, cv: float = 0.05, status: str = "ok",
                step_times: list[float] | None = None, peak_bytes: int | None = 2 * GIB,
                total_bytes: int = 32 * GIB, data_wait_frac: float = 0.01, loss: dict | None = None,
                stability_cv_pct: float | None = None, epoch_costs: dict | None = None,
                features: dict | None = None, backend: str = "cpu", fingerprint: str = "machine-1",
                label: str | None = None) -> dict[str, Any]:
    values = copy.deepcopy(values)
    batch = int(values["data"]["batch_size"])
    mean = 1.0 / it_per_s
    times = step_times if step_times is not None else [mean * (1 + (0.05 if i % 2 else -0.05)) for i in range(20)]
    rec = new_record(values, {"backend": backend, "device_name": "Test CPU", "device_total_bytes": total_bytes,
                              "fingerprint_id": fingerprint})
    rec.update({
        "status": status, "error": None if status == "ok" else status, "params": {"total": 1, "trainable": 1},
        "series": {"warmup_steps": 2, "step_time_s": [mean * 3, mean * 2] + times,
                   "loss": [1.0] * (len(times) + 2), "grad_norm": [1.0] * (len(times) + 2)},
        "sweep": {"label": label or (f"{backend} {values['model']['encoder_type']} b{batch} "
                                     f"w{values['data']['num_workers']}")},
    })
    if status == "ok":
        rec["metrics"] = {
            "it_per_s": it_per_s, "samples_per_s": it_per_s * batch,
            "step_time_s": {"median": mean, "iqr": 0.1 * mean, "cv": cv, "p10": mean * 0.95, "p90": mean * 1.05,
                            "n": len(times), "mean": mean},
            "data_wait_frac": data_wait_frac, "peak_device_bytes": peak_bytes, "device_total_bytes": total_bytes,
            "batch_size": {"requested": batch, "achieved": batch}, "timing_method": "synced-wall-clock",
        }
        cv_pct = stability_cv_pct if stability_cv_pct is not None else cv * 100
        rec["probes"]["stability"] = {"status": "ok", "cv_pct": cv_pct}
        rec["probes"]["memory"] = {"status": "ok", "headroom_frac": 1 - (peak_bytes or 0) / total_bytes,
                                   "leak": {"suspected": False}, "memory_pressure": False}
        if loss is not None:
            rec["probes"]["loss"] = {"status": "ok", **loss}
        if epoch_costs is not None:
            rec["probes"]["epoch_costs"] = {"status": "ok", "measured": True, **epoch_costs}
        if features is not None:
            rec["probes"]["features"] = {"status": "ok", "measured": True, **features}
    return rec


GOOD_LOSS = {"start_loss": 1.0, "end_loss": 0.7, "decrease_pct": 30.0, "trend": "decreasing", "noisy": False,
             "diverged": False, "warmup_spikes": {"count": 0}, "n": 40, "preliminary": True, "lr": 1e-4,
             "non_finite_count": 0,
             "lr_advice": {"action": "keep", "suggested_lr": 1e-4, "trigger": "decrease 30% >= 20%",
                           "text": "keep 1.0e-04"}}
COSTS = {"worker_startup_s": 2.0, "paid_every_epoch": True, "val_step_s": 0.1, "val_batch_size": 32,
         "checkpoint_save_s": 0.5, "checkpoint_bytes": 100 * 2**20}
#: the trainer's periodic work as the epoch_costs probe records it (test inputs, seconds)
PERIODIC = {"readback_s": 0.001, "postfix_s": 0.002, "scalar_s": 0.0001, "memory_read_s": 0.001,
            "histograms_s": 1.0, "collapse_s": 0.2, "empty_cache_s": None}
#: every cost a record of today's probe holds
FULL_COSTS = {**COSTS, "checkpoint_write_s": 0.6, "periodic": PERIODIC, "model_build_s": 2.0}
