"""The measurement policy: how long a config is measured, and when a measurement is too short to
judge anything from (pure functions: numbers in, numbers and sentences out).

* ``--max-time`` is a time *target* for the measured loop; ``--min-steps`` is met even past it
  (as pytest-benchmark meets its minimum rounds), up to a hard cap that scales with the step
  time seen in the warm-up: :func:`time_cap_s` is ``max(max_time, CAP_FACTOR x min_steps x
  warm-up step)``, room for steps that run up to CAP_FACTOR times slower than the warm-up's.
* A sweep child has no fixed wall-clock limit by default: until its warm-up ends it has the
  start-up allowance; once the child reports its warm-up step times the parent moves the deadline
  to the end of the cap plus the time start-up took (the same work again to finish, write and
  close) plus the extra steps probes asked for (:func:`child_deadline_s`).
* A record with fewer measured steps than its own ``bench.min_steps`` is *not measured*: its
  projection and every verdict drawn from it say so, with the ``--max-time`` that would measure
  the minimum at the step time it saw (:func:`shortfall`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import stats
from ..format import finite

#: the hard cap allows steps this many times slower than the warm-up's median
CAP_FACTOR = 2.0
#: margin on the --max-time a rerun is told to use (the step time it saw, plus this share)
RERUN_MARGIN = 0.5
#: seconds a child's deadline leaves for one stalled step (a data-loader hiccup, a swap-in, a
#: periodic slowdown): the measured loop only checks its cap between steps, so the step in flight
#: at the cap must be allowed to finish; a child that hangs is still stopped soon after
STALL_GRACE_S = 30.0


def median(values: Sequence[float | None]) -> float | None:
    """The median (:func:`hjepa_bench.stats.median`) of the positive step times in ``values``."""
    return stats.median(t for t in (finite(v) for v in values) if t is not None and t > 0)


def time_cap_s(max_time_s: float, min_steps: int, step_s: float | None) -> float:
    """The hard cap of the measured loop: the time target, or the time ``min_steps`` steps take at
    CAP_FACTOR times ``step_s`` (the warm-up's median step) when that is longer."""
    if step_s is None or step_s <= 0:
        return float(max_time_s)
    return max(float(max_time_s), CAP_FACTOR * int(min_steps) * float(step_s))


def child_deadline_s(*, warmed_at_s: float, startup_s: float, cap_s: float, step_s: float | None,
                     extra_steps: int = 0) -> float:
    """Seconds after the child's start at which the parent stops it, once the warm-up is known:
    warm-up end + the measuring cap + the start-up time again (teardown, probes, the record) + the
    extra steps probes asked for + STALL_GRACE_S for the step in flight when the cap is reached."""
    return warmed_at_s + cap_s + startup_s + int(extra_steps) * (step_s or 0.0) + STALL_GRACE_S


def deadline_after_first_step_s(*, first_at_s: float, step_s: float, warmup_steps: int, max_time_s: float,
                                min_steps: int, extra_steps: int = 0) -> float:
    """Seconds after the child's start at which the parent stops it, once its first warm-up step
    is known: the rest of the warm-up at CAP_FACTOR times that step, then as
    :func:`child_deadline_s` with the cap that step predicts."""
    rest = CAP_FACTOR * max(0, int(warmup_steps) - 1) * step_s
    return child_deadline_s(warmed_at_s=first_at_s + rest, startup_s=first_at_s,
                            cap_s=time_cap_s(max_time_s, min_steps, step_s), step_s=step_s, extra_steps=extra_steps)


def rerun_max_time_s(min_steps: int, step_s: float) -> int:
    """The ``--max-time`` that measures ``min_steps`` steps of ``step_s`` (plus RERUN_MARGIN),
    rounded up to ten seconds."""
    need = int(min_steps) * float(step_s) * (1 + RERUN_MARGIN)
    return int(math.ceil(need / 10.0) * 10)


def shortfall(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Why ``record`` (status ok, from a benchmark's measured loop) measured too few steps to judge
    anything from, or None when it measured its own minimum (``bench.min_steps``).  ``text``: the sentence
    every projection and verdict drawn from it shows."""
    metrics = record.get("metrics") or {}
    if record.get("status") != "ok" or not metrics.get("stop_reason"):
        return None  # (a validation run or a training log is as long as its epochs: no minimum applies)
    bench = (record.get("config") or {}).get("bench") or {}
    needs = metrics.get("min_steps") or bench.get("min_steps")
    n = metrics.get("measured_steps")
    if not isinstance(needs, int) or not isinstance(n, int) or n >= needs:
        return None
    st = metrics.get("step_time_s") or {}
    step = st.get("median") if isinstance(st, Mapping) else None
    if not isinstance(step, (int, float)) or not step > 0:
        warm = median((metrics.get("warmup") or {}).get("step_time_s") or [])
        step = warm
    x = rerun_max_time_s(needs, step) if step else None
    text = f"not measured: {n} steps (needs {needs})" + (f"; rerun with --max-time {x}" if x else "")
    return {"n": n, "needs": needs, "max_time_s": x, "step_s": step, "text": text}


def expected_config_s(*, step_s: float, startup_s: float, warmup_steps: int, min_steps: int, max_steps: int,
                      max_time_s: float) -> float:
    """Expected wall time of one config: start-up, warm-up, then the measured loop (the time target,
    or the minimum steps when they take longer; no more than the step cap)."""
    loop = min(max(float(max_time_s), int(min_steps) * step_s), int(max_steps) * step_s)
    return startup_s + int(warmup_steps) * step_s + loop


def step_cost(values: Mapping[str, Any]) -> float:
    """A relative cost of one training step of a resolved config, for estimating how long configs
    not yet run will take from one that ran (not a FLOP count: only ratios of it are used).  Per
    ViT block: tokens x 12 D^2 (projections and MLP) + 2 tokens^2 D (attention); context encoder
    forward and backward (x3), target encoder forward (x1), the predictor's blocks (x3)."""
    m, d = values["model"], values["data"]
    dim = float(m["embed_dim"])
    tokens = (float(d["image_size"]) / 16.0) ** 2
    block = tokens * 12 * dim ** 2 + 2 * tokens ** 2 * dim
    blocks = 4 * int(m["encoder_depth"]) + 3 * int(m["predictor"]["depth"])
    return float(d["batch_size"]) * block * blocks
