"""The probes' verdicts judged again with a report's thresholds (pure: records in, records out).

A probe judges its measurements when the run ends, with the default thresholds: a run has no
``--thresholds``.  It stores the raw numbers it judged (CV and drift, loss windows, memory
trace and headroom, time shares and CPU load, feature metrics and the training steps behind
them).  A report may use other thresholds (``--thresholds FILE``), so before anything is
judged or rendered, :func:`rejudge_records` calls the same pure judge functions the probes call,
with the report's thresholds, on copies of the records.  The probe sections, the decision
matrix, the criteria and the checklist then all read one set of verdicts, so no report
contradicts itself.  Judging twice with the same thresholds gives the same record.

An entry is judged again only when it holds what its judge needs (a validation run's or a
training log's shorter entries are left as they are), and only when the probe ran ok.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

from ..thresholds import Thresholds
from .bottleneck import judge_bottleneck
from .features import judge_features
from .loss_curve import judge_loss
from .memory import judge_memory
from .stability import analyze_stability, judge_stability

Judge = Callable[[dict[str, Any], Thresholds], dict[str, Any]]

#: probe name -> (the entry key its judge needs, the judge with a report's thresholds)
JUDGES: dict[str, tuple[str, Judge]] = {
    "stability": ("verdict", lambda e, th: judge_stability(e, th.max_step_cv_pct)),
    "loss": ("criterion_loss_decrease_met", lambda e, th: judge_loss(e, th.min_loss_decrease_pct)),
    "memory": ("headroom_frac", lambda e, th: judge_memory(e, th.memory_pressure_frac, th.memory_margin_frac)),
    "bottleneck": ("shares", lambda e, th: judge_bottleneck(e, th.data_bound_share)),
    "features": ("collapse", lambda e, th: judge_features(e, th.low_rank_frac, th.min_quality_steps)),
}


def rejudge_record(record: Mapping[str, Any], th: Thresholds) -> dict[str, Any]:
    """A copy of ``record`` whose probe entries are judged with ``th``."""
    out = dict(record)
    probes = record.get("probes")
    if not isinstance(probes, Mapping):
        return out
    judged = dict(probes)
    for name, (needs, judge) in JUDGES.items():
        entry = probes.get(name)
        if isinstance(entry, Mapping) and entry.get("status", "ok") == "ok" and needs in entry:
            judged[name] = judge(copy.deepcopy(dict(entry)), th)
    stab = probes.get("stability")
    series = record.get("series") if isinstance(record.get("series"), Mapping) else {}
    if isinstance(stab, Mapping) and stab.get("status", "ok") == "ok" and "verdict" in stab \
            and series.get("step_time_s"):
        # the one definition of the step statistics, from the record's own measured steps (a record
        # written by an older rule gets the CV, median and drift every other section reads)
        judged["stability"] = {"status": "ok", **analyze_stability(list(series["step_time_s"]),
                                                                   int(series.get("warmup_steps") or 0),
                                                                   th.max_step_cv_pct)}
    out["probes"] = judged
    return out


def rejudge_records(records: Sequence[Any], th: Thresholds) -> list[Any]:
    """:func:`rejudge_record` of every record (anything that is not a mapping is kept as it is)."""
    return [rejudge_record(r, th) if isinstance(r, Mapping) else r for r in records]
