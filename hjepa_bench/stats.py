"""The one statistics module (pure: no torch, no files): the finite-number checks, the median,
the coefficient of variation, the confidence intervals (of the median, of the mean), the linear
drift fit, and the summary of a run's step times.  Every other module uses these, so one figure
has one definition.  numpy and scipy are imported where used (``hjepa-bench --help`` loads this
module through :mod:`hjepa_bench.format`)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

if TYPE_CHECKING:
    from numpy.typing import NDArray

# what the numeric helpers take: a plain sequence or a numpy array of numbers
Floats: TypeAlias = "Sequence[float] | NDArray[Any]"

IQR_WARN = 0.10  # torch.utils.benchmark warns at IQR/median > 10% ...
IQR_WARN_HIGH = 0.25  # ... and again at 25%


# --------------------------------------------------------------------------- finite numbers
def finite(x: Any) -> float | None:
    """A plain finite float, or None for missing, non-numeric or non-finite values
    (entries are JSON, which has no NaN)."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def finite_int(x: Any) -> int | None:
    """``finite(x)`` as an int (truncated), or None."""
    f = finite(x)
    return None if f is None else int(f)


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """An int or float (not a bool) that is neither NaN nor infinite: the one finite-number test
    of a value as given (a flag, a config value), where :func:`finite` converts what it can."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- centre and spread
def median(values: Iterable[Any]) -> float | None:
    """The median of the finite values (the usual one: the mean of the two middle values of an
    even count), None when there is none; missing and non-finite values are left out."""
    xs = sorted(f for f in (finite(v) for v in values) if f is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def cv(values: Floats) -> float | None:
    """Coefficient of variation, a fraction: sample standard deviation (ddof=1) / mean of
    ``values``; None below 2 values or with a mean <= 0 (the spread of one step is not 0).

    The one CV of the tool; each caller passes the steps after the warm-up it was given:

    * a run's ``metrics.step_time_s.cv`` (:func:`summarize`, from ``measure.runner``, the DDP ranks
      and the validation run): the steps after the run's reported warm-up (``bench.warmup_steps``;
      the validation run's first ``WARMUP_STEPS``);
    * the stability probe's ``cv_pct`` (``analysis.stability.analyze_stability``, x 100): the same
      steps, after the *reported* warm-up (a longer detected warm-up is only said), so a report that
      shows both shows one number;
    * a training log's ``step_time_cv`` (``analysis.log_speed``): seconds per step of the steady
      logged intervals, after the log's detected warm-up (a log has no reported one).
    """
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    mean = float(x.mean())
    return float(x.std(ddof=1)) / mean if mean > 0 else None


# --------------------------------------------------------------------------- confidence intervals
def median_ci(values: Floats, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (order statistics,
    normal approximation of the binomial ranks)."""
    import numpy as np

    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return (math.nan, math.nan)
    z = {0.90: 1.645, 0.95: 1.96, 0.99: 2.576}.get(confidence, 1.96)
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)))
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)) - 1)
    return float(x[lo]), float(x[max(lo, hi)])


def relative_precision(values: Floats, confidence: float = 0.95) -> float:
    """Half-width of the median's confidence interval, relative to the median."""
    if len(values) < 3:
        return math.inf
    lo, hi = median_ci(values, confidence)
    med = median(values)
    return (hi - lo) / 2.0 / med if med is not None and med > 0 else math.inf


def mean_band(times: Sequence[float | None], confidence: float = 0.95,
              min_n: int = 2) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the mean of the finite ``times`` and its Student t confidence interval
    (mean +- t_{(1+confidence)/2, n-1} x s / sqrt(n), the low end floored at 0).  No band
    (None, None) below ``min_n`` values."""
    import numpy as np
    from scipy import stats as sps  # type: ignore[import-untyped]

    x = np.asarray([t for t in (finite(v) for v in times) if t is not None], dtype=float)
    if x.size == 0:
        return None, None, None
    mean = float(x.mean())
    if x.size < max(2, min_n):
        return mean, None, None
    half = float(sps.t.ppf((1 + confidence) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, max(0.0, mean - half), mean + half


# --------------------------------------------------------------------------- drift
def slope_t(x: Any, y: Any) -> tuple[float, float]:
    """(least-squares slope, slope / stderr) of ``y`` against ``x`` (numpy arrays, >= 2 distinct x):
    the drift fit without scipy (the memory probe's leak check); t is inf for an exactly linear
    rise, 0 when flat."""
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    n = len(x)
    if n > 2:
        resid = y - (float(ym - slope * xm) + slope * x)
        stderr = math.sqrt(float((resid ** 2).sum()) / (n - 2) / sxx)
    else:
        stderr = math.inf
    scale = max(1.0, abs(float(ym)))
    if stderr <= 1e-12 * scale:  # exactly linear (or flat)
        return slope, (math.copysign(math.inf, slope) if abs(slope) > 1e-12 * scale else 0.0)
    return slope, slope / stderr


def linear_fit(x: Floats, y: Floats) -> tuple[float, float]:
    """(slope, p-value) of the least-squares line of ``y`` against ``x`` (scipy's linregress; the
    p-value of a zero slope, NaN when it has none): the drift fit of the step time and the loss."""
    import numpy as np
    from scipy import stats as sps

    fit = sps.linregress(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return float(fit.slope), float(fit.pvalue)


# --------------------------------------------------------------------------- a run's step times
def summarize(values: Floats) -> dict[str, float | int | None]:
    """median, mean, IQR, CV, p10, p90, min, max, n and the median's 95% CI (CV None below 2 values)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "median": None, "mean": None, "iqr": None, "cv": None, "p10": None,
                "p90": None, "min": None, "max": None, "ci95_low": None, "ci95_high": None,
                "rel_ci95": None}
    q10, q25, q75, q90 = np.percentile(x, [10, 25, 75, 90])
    lo, hi = median_ci(x)
    rel = relative_precision(x)
    return {
        "n": n,
        "median": median(x),
        "mean": float(x.mean()),
        "iqr": float(q75 - q25),
        "cv": cv(x),
        "p10": float(q10),
        "p90": float(q90),
        "min": float(x.min()),
        "max": float(x.max()),
        "ci95_low": lo,
        "ci95_high": hi,
        "rel_ci95": rel if math.isfinite(rel) else None,
    }


def spread_warning(summary: Mapping[str, Any]) -> str | None:
    """torch.utils.benchmark-style warning when IQR/median is large."""
    med, iqr = summary.get("median"), summary.get("iqr")
    if not med or iqr is None:
        return None
    ratio = iqr / med
    if ratio > IQR_WARN_HIGH:
        return (f"step times vary a lot: IQR is {ratio:.0%} of the median (over {IQR_WARN_HIGH:.0%}); "
                "the machine may be busy")
    if ratio > IQR_WARN:
        return f"step times vary: IQR is {ratio:.0%} of the median (over {IQR_WARN:.0%})"
    return None
