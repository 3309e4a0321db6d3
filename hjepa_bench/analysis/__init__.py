"""Pure analysis functions behind the probes: data in, data out (no devices, no files)."""
from __future__ import annotations

import math
from typing import Any


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
