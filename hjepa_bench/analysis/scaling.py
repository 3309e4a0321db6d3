"""Data-parallel scaling (pure: per-rank measurements in, job numbers out; records in, table rows out).

A data-parallel job of N ranks (``run --nproc-per-node N``, docs/distributed.md, "Data parallel: the step under
DDP") steps in lockstep: every step all-reduces the gradients, so the job advances at the pace of its
slowest rank.

* **Job throughput.** Job steps/s = the lowest it/s of the ranks (each rank's measured steps over
  its summed window time; every rank runs the same steps).  Job samples/s = job steps/s x the sum
  over ranks of the batch each rank processed per step.
* **All-reduce share** of a rank's step = 1 - median ``no_sync`` step / median synced step, from
  steps run in interleaved pairs (ABBA) in the comparison phase.  It is the *exposed* cost of the
  gradient synchronisation: the all-reduce not hidden behind the backward pass, plus the wait for the
  slower rank.  When noise makes the ``no_sync`` steps the slower ones the share is 0 (``share_raw``
  keeps the raw value).  The job's share is the mean over its ranks.
* **Single process.** Rank 0 alone runs the plain (non-DDP) step, with the same model, data path
  and threads, in windows interleaved with the pairs while the other ranks wait in a barrier.  Its
  samples/s = batch x steps / their summed time.
* **Scaling efficiency** = job samples/s / (N x single-process samples/s).  1.0 is perfect scaling.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..format import finite
from ..record import lookup, machine, model_short, node_label, world_size
from ..stats import median

#: what the all-reduce share is, for records and reports
SHARE_METHOD = ("1 - median no_sync step / median synced step, from interleaved (ABBA) pairs: the exposed "
                "gradient synchronisation, i.e. the all-reduce not hidden behind backward plus the wait for "
                "the slower rank")


def allreduce_share(sync_s: Sequence[float], nosync_s: Sequence[float]) -> dict[str, Any]:
    """One rank's all-reduce share from its synced and ``no_sync`` step times (seconds)."""
    sync = [t for t in (finite(x) for x in sync_s) if t is not None]
    nosync = [t for t in (finite(x) for x in nosync_s) if t is not None]
    if not sync or not nosync:
        return {"share": None, "share_raw": None, "step_s_sync": None, "step_s_nosync": None,
                "pairs": min(len(sync), len(nosync))}
    ms, mn = cast(float, median(sync)), cast(float, median(nosync))  # finite, non-empty
    raw = 1.0 - mn / ms if ms > 0 else None
    share = None if raw is None else min(1.0, max(0.0, raw))
    return {"share": share, "share_raw": raw, "step_s_sync": ms, "step_s_nosync": mn,
            "pairs": min(len(sync), len(nosync))}


def job_share(shares: Sequence[float | None]) -> float | None:
    """The job's all-reduce share: the mean of its ranks' shares (None when a rank has none)."""
    vals = [v for v in (finite(s) for s in shares) if v is not None]
    if not vals or len(vals) < len(shares):
        return None
    return sum(vals) / len(vals)


def job_throughput(ranks: Sequence[tuple[float | None, int]]) -> dict[str, float | None]:
    """Job steps/s and samples/s from each rank's (it/s, batch per step)."""
    rates = [r for r in (finite(ips) for ips, _ in ranks) if r is not None and r > 0]
    if not ranks or len(rates) < len(ranks):
        return {"it_per_s": None, "samples_per_s": None}
    ips = min(rates)
    return {"it_per_s": ips, "samples_per_s": ips * sum(int(b) for _, b in ranks)}


def single_process(step_s: Sequence[float], batch: int) -> dict[str, Any]:
    """Samples/s of the single-process baseline steps (seconds each) at ``batch``."""
    times = [t for t in (finite(x) for x in step_s) if t is not None]
    if not times or sum(times) <= 0:
        return {"samples_per_s": None, "step_s_median": None, "steps": len(times)}
    return {"samples_per_s": batch * len(times) / sum(times), "step_s_median": median(times),
            "steps": len(times)}


def scaling_efficiency(job_samples_per_s: float | None, n: int, single_samples_per_s: float | None) -> float | None:
    """Job samples/s over n x the single-process samples/s."""
    job, single = finite(job_samples_per_s), finite(single_samples_per_s)
    if job is None or single is None or single <= 0 or n < 1:
        return None
    return job / (n * single)


# --------------------------------------------------------------------------- the report's table
def _config_identity(record: Mapping[str, Any]) -> str:
    """What a record measured, apart from how many processes: the machine and the config."""
    config = json.loads(json.dumps(record.get("config") or {}, default=str))
    (config.get("bench") or {}).pop("nproc_per_node", None)
    return json.dumps({"machine": machine(record), "config": config}, sort_keys=True)


def config_text(record: Mapping[str, Any]) -> str:
    """``cpu vit_tiny b4 w0 reference fp32 64px`` (``... on NODE`` for a cluster node): the config
    without its process count."""
    c = record.get("config") or {}
    node = node_label(record)
    parts = [lookup(record, "env", "backend") or lookup(c, "bench", "device"), model_short(record, "?"),
             f"b{lookup(c, 'data', 'batch_size')}", f"w{lookup(c, 'data', 'num_workers')}",
             lookup(c, "bench", "variant"), lookup(c, "bench", "precision"), f"{lookup(c, 'data', 'image_size')}px",
             None if node is None else f"on {node}"]
    return " ".join(str(p) for p in parts if p is not None)


def scaling_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per ok data-parallel job, plus the one-process records of the same config and machine
    (a sweep with ``--nproc-per-node 1,2``), ordered by config then world size.

    A one-process record gives its own step time and samples/s (it has no share, no in-run baseline).
    A job's ``efficiency_vs_separate`` compares it with such a record, measured in another process at
    another time (and with every core for its threads): the in-run ``scaling_efficiency`` is the
    like-for-like number."""
    ok = [r for r in records if r.get("status") == "ok"]
    jobs = [r for r in ok if isinstance(r.get("distributed"), Mapping) and world_size(r) > 1]
    if not jobs:
        return []
    ids = {_config_identity(r) for r in jobs}
    singles: dict[str, Mapping[str, Any]] = {}
    for r in ok:
        if world_size(r) == 1 and _config_identity(r) in ids:
            best = singles.get(_config_identity(r))
            if best is None or (finite(lookup(r, "metrics", "samples_per_s")) or 0) > \
                    (finite(lookup(best, "metrics", "samples_per_s")) or 0):
                singles[_config_identity(r)] = r
    rows = []
    for ident, r in singles.items():
        rows.append({"identity": ident, "config": config_text(r), "world_size": 1,
                     "step_s_per_rank": [lookup(r, "metrics", "step_time_s", "median")],
                     "share_per_rank": None, "allreduce_share": None,
                     "job_samples_per_s": finite(lookup(r, "metrics", "samples_per_s")),
                     "single_samples_per_s": None, "scaling_efficiency": None, "efficiency_vs_separate": None,
                     "host": None})
    for r in jobs:
        d = r["distributed"]
        n = world_size(r)
        sep = singles.get(_config_identity(r))
        ranks = [x for x in d.get("ranks") or [] if isinstance(x, Mapping)]
        rows.append({
            "identity": _config_identity(r), "config": config_text(r), "world_size": n,
            "backend": d.get("backend"),
            "step_s_per_rank": [lookup(x, "step_time_s", "median") for x in ranks],
            "share_per_rank": [lookup(x, "allreduce", "share") for x in ranks],
            "allreduce_share": finite(d.get("allreduce_share")),
            "job_samples_per_s": finite(d.get("job_samples_per_s")),
            "single_samples_per_s": finite(lookup(d, "single_process", "samples_per_s")),
            "scaling_efficiency": finite(d.get("scaling_efficiency")),
            "efficiency_vs_separate": scaling_efficiency(d.get("job_samples_per_s"), n,
                                                         lookup(sep, "metrics", "samples_per_s")) if sep else None,
            "host": d.get("host"),
        })
    return sorted(rows, key=lambda x: (x["config"], x["identity"], x["world_size"]))
