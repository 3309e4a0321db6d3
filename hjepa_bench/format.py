"""Numbers for people: the one home of the number formatters (``finite`` and ``finite_int`` are
:mod:`hjepa_bench.stats`'s, re-exported here for the formatters' callers).

Imports only :mod:`hjepa_bench.stats` (no numpy at import), so every layer can use it: the analysis writes numbers
into its evidence sentences (criteria, learning-rate advice), the reports and the CLI
into tables and summaries.  Each formatter takes ``None`` (not measured) and prints
``dash`` for it.
"""
from __future__ import annotations

from typing import Any

from .stats import finite as finite  # (re-exported: the formatters' callers use them)
from .stats import finite_int as finite_int


def fmt_or_dash(x: Any, spec: str = ".1f", dash: str = "-", suffix: str = "") -> str:
    """A number in ``spec`` format (plus ``suffix``), or ``dash`` when it was not measured."""
    return dash if x is None else format(x, spec) + suffix


def fmt_finite(x: Any, spec: str = ".2f", dash: str = "-", signed_zero: bool = True) -> str:
    """Like :func:`fmt_or_dash`, and non-finite or non-numeric values are ``dash`` too;
    ``signed_zero=False`` prints a value that rounds to zero without its minus ("0.0", not "-0.0")."""
    x = finite(x)
    if x is None:
        return dash
    text = format(x, spec)
    if not signed_zero and text.startswith("-") and float(text) == 0:
        return text[1:]
    return text


def fmt_bytes(n: int | float | None, dash: str = "n/a") -> str:
    """Bytes in GiB, MiB or KiB (two decimals), or whole bytes."""
    if n is None:
        return dash
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_gib(n: Any, dash: str = "-") -> str:
    """Bytes in GiB, always (two decimals)."""
    return dash if n is None else f"{n / 2**30:.2f} GiB"


def fmt_ms(seconds: float | None, dash: str = "n/a", unit: str = " ms") -> str:
    """Seconds as milliseconds with one decimal (``unit=""`` for a table column that names the unit)."""
    return dash if seconds is None else f"{seconds * 1000:.1f}{unit}"


def fmt_pct(frac: float | None, dash: str = "n/a", suffix: str = "%") -> str:
    """A fraction as a percentage with one decimal (``suffix=""`` for a column that names the unit)."""
    return dash if frac is None else f"{100 * float(frac):.1f}{suffix}"


def fmt_lr(lr: float) -> str:
    """A learning rate: ``1.5e-04``."""
    return f"{lr:.1e}"


def fmt_flops(x: float | None, per_s: bool = False) -> str:
    """``1.23 TFLOP`` / ``45.6 GFLOP/s``; ``n/a`` for None."""
    if x is None:
        return "n/a"
    unit = "FLOP/s" if per_s else "FLOP"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def fmt_duration(seconds: Any, dash: str = "-") -> str:
    """``H:MM:SS`` (``Nd H:MM:SS`` from a day on) of a number of seconds, rounded to the second."""
    s = finite(seconds)
    if s is None or s < 0:
        return dash
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{sec:02d}"
