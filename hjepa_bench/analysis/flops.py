"""FLOPs, measured matmul peak and MFU: pure functions (numbers in, dicts out).

The ``flops`` probe (``hjepa_bench/builtin/probe_flops.py``) drives the device; everything
that only does arithmetic on what it measured lives here so it can be tested
without a device.

Definitions (docs/measuring.md, "FLOPs and utilisation"):

* FLOPs of a step come from ``torch.utils.flop_counter`` (2 FLOPs per
  multiply-add, forward + backward);
* a square ``n x n @ n x n`` matmul is ``2 n^3`` FLOPs;
* the peak is the best FLOP/s of a matmul micro-benchmark on the same device
  and dtype in the same run (no datasheet number: on CPUs and Apple GPUs no
  table is trustworthy);
* ``mfu = achieved / peak`` with ``achieved = flops_per_step / median step time``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..stats import finite

#: square sizes the calibration may pick (grown x2 from the smallest)
MATMUL_SIZES = (256, 512, 1024, 2048, 4096)


def _finite_pos(x: Any) -> float | None:
    """``x`` as a float when it is a finite positive number, else None."""
    v = finite(x)
    return v if v is not None and v > 0 else None


def matmul_flops(n: int) -> int:
    """FLOPs of one square ``(n, n) @ (n, n)`` matmul: n^2 outputs x n multiply-adds x 2."""
    return 2 * int(n) ** 3


def next_matmul_size(n: int, one_matmul_s: float, target_s: float, sizes: Sequence[int] = MATMUL_SIZES) -> int | None:
    """The next calibration size after ``n``, or None to stay at ``n``.

    Grows while the next size's predicted time (x8 for x2 in n) stays within
    ``target_s``, so a fast device reaches a size that keeps it busy and a slow
    dtype (bf16 on a CPU without native support) stays small and in the time box.
    """
    bigger = [s for s in sizes if s > n]
    if not bigger:
        return None
    nxt = bigger[0]
    predicted = one_matmul_s * (nxt / n) ** 3
    return nxt if predicted <= target_s else None


def matmuls_per_rep(one_matmul_s: float, rep_target_s: float, cap: int = 1000) -> int:
    """Matmuls timed between two syncs so one rep lasts about ``rep_target_s``
    (a sync per matmul would add its own overhead to a short kernel)."""
    t = _finite_pos(one_matmul_s)
    if t is None:
        return 1
    return max(1, min(cap, int(round(rep_target_s / t))))


def peak_summary(n: int, per_rep: int, rep_times_s: Iterable[float]) -> dict[str, Any]:
    """Best and median FLOP/s of the timed reps of ``per_rep`` matmuls of size ``n``."""
    times = sorted(t for t in (_finite_pos(x) for x in rep_times_s) if t is not None)
    flops = matmul_flops(n) * int(per_rep)
    if not times:
        return {"n": int(n), "matmuls_per_rep": int(per_rep), "reps": 0,
                "flops_per_s": None, "median_flops_per_s": None, "best_rep_s": None}
    median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    return {
        "n": int(n),
        "matmuls_per_rep": int(per_rep),
        "reps": len(times),
        "flops_per_s": flops / times[0],  # the best rep: the peak this device reaches
        "median_flops_per_s": flops / median,
        "best_rep_s": times[0],
    }


def mfu_summary(flops_per_step: float | None, median_step_s: float | None,
                peak_flops_per_s: float | None) -> dict[str, Any]:
    """Achieved FLOP/s (``flops_per_step / median_step_s``) and MFU (achieved / peak).

    Missing, zero, negative or non-finite inputs give None for what depends on them.
    """
    f, t, p = _finite_pos(flops_per_step), _finite_pos(median_step_s), _finite_pos(peak_flops_per_s)
    achieved = f / t if f is not None and t is not None else None
    mfu = achieved / p if achieved is not None and p is not None else None
    return {"achieved_flops_per_s": achieved, "mfu": mfu}


def per_sample(flops_per_step: float | None, batch_size: int | None) -> float | None:
    f, b = _finite_pos(flops_per_step), _finite_pos(batch_size)
    return f / b if f is not None and b is not None else None


