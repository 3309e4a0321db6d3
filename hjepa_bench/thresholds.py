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

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError, read_yaml

#: the high end of speeds, percentages of change and counts: a sanity bound far beyond any real value
BIG = 1e9


class Thresholds(BaseModel):
    """Every threshold, with its domain: a finite number (a whole number where the field is an
    int) in the range its Field gives.  Frozen (hashable); a changed copy is
    ``th.model_copy(update={...})``."""
    model_config = ConfigDict(frozen=True, strict=True, allow_inf_nan=False, extra="forbid")

    # success criteria (the validation guide's)
    min_it_per_s: float = Field(2.5, gt=0, le=BIG)
    expected_it_per_s: float = Field(3.2, gt=0, le=BIG)
    max_step_cv_pct: float = Field(20.0, ge=0, le=BIG)
    min_loss_decrease_pct: float = Field(20.0, ge=0, le=100)
    low_rank_frac: float = Field(0.10, ge=0, le=1)
    min_quality_steps: int = Field(1000, ge=0, le=BIG)
    # memory
    memory_margin_frac: float = Field(0.10, ge=0, lt=1)
    memory_pressure_frac: float = Field(0.90, gt=0, le=1)
    # recommendations (ours)
    workers_within_pct: float = Field(3.0, ge=0, le=BIG)
    batch_min_gain_pct: float = Field(5.0, ge=0, le=BIG)
    data_bound_share: float = Field(0.10, ge=0, le=1)
    logging_stall_max_pct: float = Field(2.0, ge=0, le=100)
    # projections
    dataset_size: int = Field(50_000, ge=1, le=BIG)
    val_size: int = Field(10_000, ge=0, le=BIG)  # 0: no validation pass
    val_every_epochs: int = Field(1, ge=1, le=10**6)
    confidence: float = Field(0.95, gt=0, lt=1)

    def table(self) -> list[tuple[str, Any, str]]:
        """(name, value, meaning) rows for the report."""
        return [(name, getattr(self, name), MEANINGS[name]) for name in type(self).model_fields]

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


MEANINGS: dict[str, str] = {
    "min_it_per_s": ("speed criterion: training it/s at least this (the guide's minimum, ViT-Tiny batch 32 "
                     "on an M1 Max)"),
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

def domain_text(name: str) -> str:
    """What threshold ``name`` must be: "a number in (0, 1e+09]", "a whole number in [1, 1e+06]"..."""
    info = Thresholds.model_fields[name]
    bounds = {kind: getattr(item, kind) for item in info.metadata for kind in ("ge", "gt", "le", "lt")
              if hasattr(item, kind)}
    low = f"[{bounds['ge']:g}" if "ge" in bounds else f"({bounds['gt']:g}"
    high = f"{bounds['le']:g}]" if "le" in bounds else f"{bounds['lt']:g})"
    return f"{'a whole number' if info.annotation is int else 'a number'} in {low}, {high}"


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Defaults, with the values of a YAML mapping of the same names on top; each value must be
    a finite number in its domain (the fields of :class:`Thresholds`)."""
    if path is None:
        return DEFAULTS
    p = Path(path)
    data = read_yaml(p, "thresholds file")
    if data is None:
        return DEFAULTS
    if not isinstance(data, dict):
        raise UserError(f"thresholds file {p} must hold a mapping of names to numbers.")
    known = list(Thresholds.model_fields)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise UserError(f"thresholds file {p} has unknown names: {', '.join(unknown)} "
                        f"(known: {', '.join(known)}).")
    try:
        return Thresholds.model_validate(data)
    except ValidationError as exc:
        order = list(data)  # the first bad value in the file is the one reported
        name = str(min(exc.errors(), key=lambda e: order.index(e["loc"][0]))["loc"][0])
        raise UserError(f"threshold {name} in {p} must be {domain_text(name)}, not {data[name]!r:.40}.") from None
