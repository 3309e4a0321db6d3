"""Every threshold the success criteria, the checklist, the decision matrix and the
recommendations use, in one place: one set of thresholds, printed in every report
(docs/verdicts.md).

The defaults are the validation guide's numbers where it gives one, and ours
(marked "ours") where it only says "noisy" or "a few percent".  Change them with
a YAML file of the same names (``--thresholds FILE``).  The probes that judge a
single run (stability, loss, features, memory, bottleneck) judge with the defaults
at run time and store their raw numbers; a report judges them again with its own
thresholds (:mod:`hjepa_bench.analysis.verdicts`), so every verdict in one report
uses the same values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any


from .errors import UserError, read_yaml


@dataclass(frozen=True)
class Thresholds:
    # success criteria (the validation guide's)
    min_it_per_s: float = 2.5
    expected_it_per_s: float = 3.2
    max_step_cv_pct: float = 20.0
    min_loss_decrease_pct: float = 20.0
    low_rank_frac: float = 0.10
    min_quality_steps: int = 1000
    # memory
    memory_margin_frac: float = 0.10
    memory_pressure_frac: float = 0.90
    # recommendations (ours)
    workers_within_pct: float = 3.0
    batch_min_gain_pct: float = 5.0
    data_bound_share: float = 0.10
    logging_stall_max_pct: float = 2.0
    # projections
    dataset_size: int = 50_000
    val_size: int = 10_000
    val_every_epochs: int = 1
    confidence: float = 0.95

    def table(self) -> list[tuple[str, Any, str]]:
        """(name, value, meaning) rows for the report."""
        return [(f.name, getattr(self, f.name), MEANINGS[f.name]) for f in fields(self)]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MEANINGS: dict[str, str] = {
    "min_it_per_s": "speed criterion: training it/s at least this (the guide's minimum, ViT-Tiny batch 32 on an M1 Max)",
    "expected_it_per_s": "speed the guide expects for option A (~3.2 it/s)",
    "max_step_cv_pct": "speed variance criterion: step-time CV below this (%)",
    "min_loss_decrease_pct": "learning criterion: smoothed loss down at least this much (%)",
    "low_rank_frac": "collapse red flag: effective rank below this fraction of D",
    "min_quality_steps": ("ours: collapse flags are judged only from a model trained at least this many steps "
                          "(before, its features are those of a random initialisation: shown, not judged)"),
    "memory_margin_frac": "a batch fits when its predicted peak stays below (1 - margin) x device memory",
    "memory_pressure_frac": "memory pressure when the peak exceeds this fraction of device memory",
    "workers_within_pct": "ours: the fewest workers within this % of the best throughput are enough",
    "batch_min_gain_pct": "ours: a larger batch must gain at least this % samples/s to be worth it",
    "data_bound_share": "data-bound when the step waits for the DataLoader this share of the time",
    "logging_stall_max_pct": "ours: periodic stalls at the logging interval may cost at most this % of the time",
    "dataset_size": "training images per epoch in projections (CIFAR-10 train: 50,000; drop_last)",
    "val_size": "validation images per pass in projections (CIFAR-10 test: 10,000)",
    "val_every_epochs": "a validation pass every this many epochs in projections (upstream: every epoch)",
    "confidence": ("confidence level of the projection band (Student t interval of the mean step time; "
                   "no band from fewer than 5 steps)"),
}

DEFAULTS = Thresholds()

#: each threshold's domain: (whole number?, low, low included?, high, high included?); the highs
#: of speeds, percentages of change and counts are sanity bounds far beyond any real value
BIG = 1e9
DOMAINS: dict[str, tuple[bool, float, bool, float, bool]] = {
    "min_it_per_s": (False, 0, False, BIG, True),
    "expected_it_per_s": (False, 0, False, BIG, True),
    "max_step_cv_pct": (False, 0, True, BIG, True),
    "min_loss_decrease_pct": (False, 0, True, 100, True),
    "low_rank_frac": (False, 0, True, 1, True),
    "min_quality_steps": (True, 0, True, BIG, True),
    "memory_margin_frac": (False, 0, True, 1, False),
    "memory_pressure_frac": (False, 0, False, 1, True),
    "workers_within_pct": (False, 0, True, BIG, True),
    "batch_min_gain_pct": (False, 0, True, BIG, True),
    "data_bound_share": (False, 0, True, 1, True),
    "logging_stall_max_pct": (False, 0, True, 100, True),
    "dataset_size": (True, 1, True, BIG, True),
    "val_size": (True, 0, True, BIG, True),  # 0: no validation pass
    "val_every_epochs": (True, 1, True, 10**6, True),
    "confidence": (False, 0, False, 1, False),
}


def _domain_text(name: str) -> str:
    whole, lo, lo_in, hi, hi_in = DOMAINS[name]
    return f"{'a whole number' if whole else 'a number'} in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_threshold(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for threshold ``name`` (a finite number in its domain), or None."""
    whole, lo, lo_in, hi, hi_in = DOMAINS[name]
    ok = (type(value) is int if whole else isinstance(value, (int, float)) and not isinstance(value, bool))
    if ok:
        ok = (math.isfinite(value) and (value >= lo if lo_in else value > lo)
              and (value <= hi if hi_in else value < hi))
    return None if ok else f"must be {_domain_text(name)}, not {value!r:.40}"


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Defaults, with the values of a YAML mapping of the same names on top; each value must be
    a finite number in its domain (:data:`DOMAINS`)."""
    if path is None:
        return DEFAULTS
    p = Path(path)
    data = read_yaml(p, "thresholds file")
    if data is None:
        return DEFAULTS
    if not isinstance(data, dict):
        raise UserError(f"thresholds file {p} must hold a mapping of names to numbers.")
    known = [f.name for f in fields(Thresholds)]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise UserError(f"thresholds file {p} has unknown names: {', '.join(unknown)} "
                        f"(known: {', '.join(known)}).")
    clean: dict[str, Any] = {}
    for key, value in data.items():
        problem = check_threshold(key, value)
        if problem:
            raise UserError(f"threshold {key} in {p} {problem}.")
        clean[key] = value if DOMAINS[key][0] else float(value)
    return replace(DEFAULTS, **clean)
