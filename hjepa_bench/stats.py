"""Pure statistics over step times (no torch, no files)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

IQR_WARN = 0.10  # torch.utils.benchmark warns at IQR/median > 10% ...
IQR_WARN_HIGH = 0.25  # ... and again at 25%


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (order statistics,
    normal approximation of the binomial ranks)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return (math.nan, math.nan)
    z = {0.90: 1.645, 0.95: 1.96, 0.99: 2.576}.get(confidence, 1.96)
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)))
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)) - 1)
    return float(x[lo]), float(x[max(lo, hi)])


def relative_precision(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the median's confidence interval, relative to the median."""
    if len(values) < 3:
        return math.inf
    lo, hi = median_ci(values, confidence)
    med = float(np.median(values))
    return (hi - lo) / 2.0 / med if med > 0 else math.inf


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """median, mean, IQR, CV, p10, p90, min, max, n and the median's 95% CI (CV None below 2 values)."""
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "median": None, "mean": None, "iqr": None, "cv": None, "p10": None,
                "p90": None, "min": None, "max": None, "ci95_low": None, "ci95_high": None,
                "rel_ci95": None}
    q10, q25, q50, q75, q90 = np.percentile(x, [10, 25, 50, 75, 90])
    mean = float(x.mean())
    # the spread of fewer than 2 steps is not a number (not 0)
    cv = float(x.std(ddof=1)) / mean if n > 1 and mean > 0 else None
    lo, hi = median_ci(x)
    rel = relative_precision(x)
    return {
        "n": n,
        "median": float(q50),
        "mean": mean,
        "iqr": float(q75 - q25),
        "cv": cv,
        "p10": float(q10),
        "p90": float(q90),
        "min": float(x.min()),
        "max": float(x.max()),
        "ci95_low": lo,
        "ci95_high": hi,
        "rel_ci95": rel if math.isfinite(rel) else None,
    }


def spread_warning(summary: dict) -> str | None:
    """torch.utils.benchmark-style warning when IQR/median is large."""
    med, iqr = summary.get("median"), summary.get("iqr")
    if not med or iqr is None:
        return None
    ratio = iqr / med
    if ratio > IQR_WARN_HIGH:
        return f"step times vary a lot: IQR is {ratio:.0%} of the median (over {IQR_WARN_HIGH:.0%}); the machine may be busy"
    if ratio > IQR_WARN:
        return f"step times vary: IQR is {ratio:.0%} of the median (over {IQR_WARN:.0%})"
    return None
