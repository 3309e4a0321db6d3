"""The success-criteria facts of an analysed training log (pure: the log's analysis and text in,
:class:`~hjepa_bench.analysis.criteria.Facts` out): speed from the bars' counters and elapsed times,
loss from the distinct postfix values on smoothed windows, stalls, errors and CPU fallbacks the log names."""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..format import finite, fmt_finite
from .criteria import Facts
from .loss_curve import lr_advice

FALLBACK_RE = re.compile(r"fall(?:s|ing)?[ -]?back|not (?:currently )?(?:supported|implemented) on the MPS", re.I)
ERROR_RE = re.compile(r"Traceback \(most recent call last\)|^\S*Error: |CUDA error|MPS backend out of memory", re.M)


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
    f.it_per_s = finite(overall.get("it_per_s"))  # wall clock: what a run of these epochs takes
    cv = finite(overall.get("step_time_cv"))
    f.step_cv_pct = None if cv is None else 100 * cv
    bar = [e.get("bar_it_per_s") for e in result["epochs"] if e.get("bar_it_per_s")]
    steady = finite(overall.get("steady_it_per_s"))
    f.speed_method = (f"wall clock from the bars' counters and elapsed times: {overall.get('steps')} steps in "
                      f"{fmt_finite(overall.get('elapsed_s'), '.0f')} s of training bars, "
                      "epoch start-up and stalls included; steady "
                      + ("rate not measured (too few intervals)" if steady is None else
                         f"rate {steady:.2f} it/s without start-up and stalls")
                      + (f"; tqdm's smoothed rate showed {fmt_finite(bar[-1])} it/s" if bar else ""))
    f.loss_start, f.loss_end = finite(loss.get("start")), finite(loss.get("end"))
    f.loss_decrease_pct = finite(loss.get("decrease_pct"))
    f.loss_trend = loss.get("trend")
    f.loss_noisy = (None if loss.get("noise_pct") is None
                    else bool(loss["noise_pct"] > (result.get("rules") or {}).get("loss_noise_threshold_pct", 10.0)))
    f.diverged = loss.get("diverged")
    f.loss_points = loss.get("n")
    epoch_losses = [finite(e.get("train_loss")) for e in result.get("epoch_summaries") or []]
    f.loss_epoch_values = [v for v in epoch_losses if v is not None] or None
    f.loss_preliminary = False
    f.warmup_spikes = _warmup_spikes(result)
    stall_s = finite(overall.get("stall_time_s")) or 0.0
    total_s = finite(overall.get("elapsed_s")) or 0.0
    stalls = [s for e in result["epochs"] for s in e.get("stalls") or []]
    period = overall.get("stall_period_steps")
    f.logging_stall = {"period_steps": period, "cost_pct": 100 * stall_s / total_s if total_s else None,
                       "evidence": (f"{len(stalls)} stall(s), {stall_s:.0f} s of {total_s:.0f} s "
                                    f"({100 * stall_s / total_s:.1f}%)" if total_s else "no timing")
                       + "; stalls may come from logging, checkpointing or I/O"}
    lr = finite(info.get("lr"))
    f.lr = lr
    # the LR the run applied (the bars' postfix) at its last logged step, and whether that was still warm-up
    lr_pts = [p for p in result.get("lr") or [] if finite(p[1]) is not None]
    applied = finite(lr_pts[-1][1]) if lr_pts else None
    spe, warm = info.get("steps_per_epoch"), finite(info.get("warmup_epochs"))
    in_warmup = bool(lr_pts[-1][0] < warm * spe) if lr_pts and spe and warm is not None else None
    if (lr is not None or applied is not None) and f.loss_decrease_pct is not None:
        first_bad = next((step for step, value in loss.get("points") or [] if value is None), None)
        rise = (None if f.loss_start is None or f.loss_end is None or f.loss_start == 0
                else (f.loss_end - f.loss_start) / abs(f.loss_start) * 100)
        adv = lr_advice(bool(f.diverged), f.loss_trend, finite(loss.get("noise_pct")), f.loss_decrease_pct, lr,
                        end_vs_start_pct=rise, first_non_finite=first_bad, applied_lr=applied, in_warmup=in_warmup)
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
    return sum(1 for (_, a), (_, b) in itertools.pairwise(vals) if a > 0 and b > 1.5 * a)
