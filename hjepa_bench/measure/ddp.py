"""Data-parallel jobs: the training step measured under DDP, launched through torchrun.

``hjepa-bench run --nproc-per-node N`` (and a sweep point with ``nproc_per_node`` above 1) calls
:func:`run_job`.  It starts ``python -m torch.distributed.run`` (torchrun, through the small agent
wrapper in :mod:`hjepa_bench.measure.ddp_rank`) as a subprocess in its own session, with N ranks on
this node (``--standalone``), or this node's N ranks of an ``nnodes`` job (static rendezvous at
``rdzv_endpoint``, ``node_rank`` 0 hosting rank 0).  Each rank measures the step (see
:mod:`~hjepa_bench.measure.ddp_rank`) and writes its record into a temporary folder; rank 0 gathers
them.  The job's record is then built here:

* ``metrics`` describe the job: ``it_per_s`` is the job's steps per second (its slowest rank),
  ``samples_per_s`` the job's samples per second (the sum over ranks); the step-time distribution,
  series and probes are rank 0's;
* ``distributed`` holds the world size, the backend, a summary per rank (step times, it/s, the
  all-reduce share), the job's all-reduce share, the single-process baseline measured in the same
  run and the scaling efficiency (:mod:`hjepa_bench.analysis.scaling`), the replica check and the
  host (cores, load average).

A rank that fails makes torchrun stop the others: the record then says which rank, and why (its
own record's error, or the signal that killed it, from torchrun's "root cause"), with status
``crashed`` for a death by signal and the rank's own status otherwise.  At the time limit torchrun
gets SIGTERM (it stops its ranks), and whatever is left of the process tree SIGKILL (ranks run in
sessions of their own); the record has status ``timeout``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis import scaling
from ..errors import UserError
from ..plugin.api import Backend
from ..record import batch_achieved, lookup, new_record, read_json
from .ddp_rank import JOB_ENV, LAUNCHER_ENV, RANKS_FILE, rank_file

#: torchrun checks its ranks this often (seconds): how fast a dead rank stops the job
MONITOR_INTERVAL_S = 0.5
#: after SIGTERM, how long torchrun gets to stop its ranks before everything is SIGKILLed
TERM_GRACE_S = 10.0


@dataclass(frozen=True)
class Launch:
    """Where the ranks run: ``nproc_per_node`` processes on each of ``nnodes`` nodes."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def torchrun_args(self) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--monitor-interval={MONITOR_INTERVAL_S}",
                "--max-restarts=0"]
        if self.nnodes == 1:
            return ["--standalone", *args]
        return [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", "--rdzv-backend=static",
                f"--rdzv-endpoint={self.rdzv_endpoint}", *args]


def check_launch(launch: Launch) -> None:
    """One sentence (UserError) for a launch that cannot work."""
    if launch.nproc_per_node < 1 or launch.nnodes < 1:
        raise UserError("--nproc-per-node and --nnodes must be at least 1.")
    if launch.nnodes > 1:
        if not launch.rdzv_endpoint or not re.fullmatch(r"[^\s:]+:\d{1,5}", launch.rdzv_endpoint):
            raise UserError("a job over several nodes needs --rdzv-endpoint HOST:PORT (the address of node 0, "
                            "where rank 0 runs).")
        port = int(launch.rdzv_endpoint.rpartition(":")[2])
        if not 0 < port < 65536:
            raise UserError(f"--rdzv-endpoint {launch.rdzv_endpoint}: the port must be 1 to 65535.")
        if not 0 <= launch.node_rank < launch.nnodes:
            raise UserError(f"--node-rank {launch.node_rank} must be between 0 and {launch.nnodes - 1} "
                            f"for --nnodes {launch.nnodes}.")
    elif launch.node_rank != 0 or launch.rdzv_endpoint:
        raise UserError("--node-rank and --rdzv-endpoint are for jobs over several nodes (--nnodes above 1).")


def ddp_capacity(backend: Backend) -> tuple[int | None, str]:
    """How many data-parallel ranks ``backend`` can run on this node: (the CPU cores available, "")
    on cpu with gloo (a rank per core), (visible GPUs, "") on cuda with nccl (one rank per GPU), or
    (0, why not)."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, "this torch build has no torch.distributed"
    if backend.name == "cpu":
        from ..config import available_cores

        return (available_cores(), "") if dist.is_gloo_available() else (0, "this torch build has no gloo backend "
                                                                           "for torch.distributed")
    if backend.name == "cuda":
        if not dist.is_nccl_available():
            return 0, "this torch build has no nccl backend for torch.distributed"
        import torch

        return (torch.cuda.device_count() if backend.availability().available else 0), ""
    return 0, (f"data-parallel jobs run on cpu (gloo) and cuda (nccl); torch.distributed has no backend for "
               f"{backend.name}")


def ranks_unsupported(device: str, nproc_per_node: int, capacity: int | None, why_not: str) -> str:
    """Why ``nproc_per_node`` ranks cannot run on a node whose ``device`` has this
    :func:`ddp_capacity` ("" when they can)."""
    if why_not:
        return why_not
    if capacity is not None and nproc_per_node > capacity:
        if device == "cpu":
            return (f"{nproc_per_node} processes need a CPU core each and {capacity} are available here (more "
                    "ranks than cores share the cores: that measures contention, not scaling)")
        return (f"{nproc_per_node} processes need {nproc_per_node} visible CUDA devices, one each (NCCL refuses "
                f"two ranks on one GPU); {capacity} visible")
    return ""


def ddp_unsupported(backend: Backend, nproc_per_node: int) -> str:
    """Why ``nproc_per_node`` data-parallel ranks cannot run on ``backend`` here ("" when they can)."""
    return ranks_unsupported(backend.name, nproc_per_node, *ddp_capacity(backend))


def default_timeout(max_time_s: float | None) -> float:
    """The wall-clock limit of one config, start-up included, from its measuring time cap."""
    return 120.0 + 6.0 * float(max_time_s or 60.0)


def rank_threads(nproc_per_node: int) -> int:
    """Torch threads per rank: this node's cores shared out (``OMP_NUM_THREADS`` when set)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, (os.cpu_count() or 1) // nproc_per_node)


# --------------------------------------------------------------------------- launching
def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun (it stops its ranks), then SIGKILL to whatever is left of its tree."""
    import psutil

    tree = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    tree += _descendants(proc.pid)
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    psutil.wait_procs(tree, timeout=5)


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_job(values: Mapping[str, Any], env: Mapping[str, Any], *, device: str, plugin_args: Sequence[str],
            probes: Sequence[str] | None, warnings: Sequence[str], launch: Launch, timeout_s: float,
            artifacts_dir: str | None = None) -> dict[str, Any] | None:
    """Run the data-parallel job; its record (None on a node other than 0 when all went well: the
    record is node 0's).  ``KeyboardInterrupt`` stops every rank and propagates."""
    t0 = time.perf_counter()
    load_start = _load_avg()
    threads = rank_threads(launch.nproc_per_node)
    with tempfile.TemporaryDirectory(prefix="hjepa-bench-ddp-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps({"values": values, "env": env, "device": device, "plugins": list(plugin_args),
                                        "probes": probes, "warnings": list(warnings), "out_dir": tmp,
                                        "artifacts_dir": artifacts_dir}, default=str))
        cmd = [sys.executable, "-m", "hjepa_bench.measure.ddp_rank", "--agent", *launch.torchrun_args(),
               "-m", "hjepa_bench.measure.ddp_rank"]
        child_env = {**os.environ, JOB_ENV: str(job_path), LAUNCHER_ENV: str(os.getpid()),
                     "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        status = None
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            output, status = "", "timeout"
        except BaseException:
            _stop(proc)
            raise
        ranks = _read_ranks(Path(tmp), launch)
    duration = time.perf_counter() - t0
    host = {"cpu_count": os.cpu_count(), "load_avg_1min_start": load_start, "load_avg_1min_end": _load_avg()}
    if status == "timeout":
        record = _failed_record(values, env, warnings, launch, ranks, "timeout",
                                f"no result after {timeout_s:.0f} s (wall clock); torchrun and its "
                                f"{launch.nproc_per_node} rank(s) on this node were stopped")
    elif proc.returncode == 0 and ranks.get("gathered"):
        record = job_record(ranks["gathered"], launch, env, threads, host)
    elif proc.returncode == 0:
        return None  # this node's ranks finished; rank 0 (node 0) wrote the job's record
    else:
        st, why = failure_cause(output, ranks["local"], launch.world_size, proc.returncode)
        record = _failed_record(values, env, warnings, launch, ranks, st, why)
    record["duration_s"] = duration
    record["distributed"].setdefault("host", host)
    return record


def _read_ranks(folder: Path, launch: Launch) -> dict[str, Any]:
    """The gathered records (rank 0's file, when it is on this node) and this node's rank files."""
    out: dict[str, Any] = {"gathered": None, "local": {}}
    if (folder / RANKS_FILE).exists():
        out["gathered"] = read_json(folder / RANKS_FILE)["ranks"]
    first = launch.node_rank * launch.nproc_per_node
    for rank in range(first, first + launch.nproc_per_node):
        path = folder / rank_file(rank)
        if path.exists():
            out["local"][rank] = read_json(path)
    return out


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)
_FAILURE = re.compile(r"^\s*rank\s*:\s*(\d+).*?^\s*exitcode\s*:\s*(-?\d+)", re.S | re.M)


def failure_cause(output: str, rank_records: Mapping[int, Mapping[str, Any]], world: int,
                  returncode: int | None) -> tuple[str, str]:
    """(status, one sentence) of a failed job: torchrun's root cause (the first rank that failed),
    explained by that rank's own record when it wrote one; else the earliest failure among the ranks'
    records; else torchrun's exit code and last line.  A rank that died by a signal is the cause
    whatever torchrun observed first: its peers' errors ("Connection reset by peer") follow from it."""
    m = _ROOT_CAUSE.search(output or "")
    if m:
        rank, code = int(m.group(1)), int(m.group(2))
        killed = [(int(r), int(c)) for r, c in _FAILURE.findall(output or "") if int(c) < 0]
        if code >= 0 and killed:
            rank, code = killed[0]
        rec = rank_records.get(rank)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return "crashed", f"rank {rank} of {world} died by {name}; torchrun stopped the other ranks"
        if rec is not None and rec.get("status") != "ok":
            return str(rec["status"]), f"rank {rank} of {world}: {rec.get('error')}"
        return "crashed", f"rank {rank} of {world} exited with code {code} without a result"
    failed = sorted((r for r in rank_records.values() if r.get("status") != "ok"),
                    key=lambda r: lookup(r, "rank", "finished_at") or 0)
    if failed:
        r = failed[0]
        return str(r["status"]), f"rank {lookup(r, 'rank', 'rank')} of {world}: {r.get('error')}"
    lines = [ln.strip() for ln in (output or "").splitlines() if ln.strip()]
    return "crashed", f"torchrun exited with code {returncode}" + (f": {lines[-1][:300]}" if lines else "")


def _failed_record(values: Mapping[str, Any], env: Mapping[str, Any], warnings: Sequence[str], launch: Launch,
                   ranks: Mapping[str, Any], status: str, why: str) -> dict[str, Any]:
    record = new_record(values, env, warnings)
    record["status"], record["error"] = status, why
    record["distributed"] = {"world_size": launch.world_size, "nnodes": launch.nnodes,
                             "nproc_per_node": launch.nproc_per_node,
                             "ranks": [_rank_summary(r) for _, r in sorted(ranks["local"].items())]}
    return record


# --------------------------------------------------------------------------- the job's record
def _rank_summary(r: Mapping[str, Any]) -> dict[str, Any]:
    """One rank in the job's record: who it was and what it measured."""
    info = r.get("rank") or {}
    m = r.get("metrics") or {}
    st = m.get("step_time_s") or {}
    comp = info.get("comparison") or {}
    return {
        **{k: info.get(k) for k in ("rank", "local_rank", "node_rank", "host", "device", "pid", "torch_threads")},
        "status": r.get("status"), "error": r.get("error"),
        "it_per_s": m.get("it_per_s"), "samples_per_s": m.get("samples_per_s"),
        "batch_size": lookup(m, "batch_size", "achieved"),
        "step_time_s": {k: st.get(k) for k in ("median", "iqr", "cv", "p10", "p90", "n")},
        "measured_time_s": m.get("measured_time_s"), "data_wait_frac": m.get("data_wait_frac"),
        "peak_device_bytes": m.get("peak_device_bytes"),
        "allreduce": scaling.allreduce_share(comp.get("sync_s") or [], comp.get("no_sync_s") or []),
    }


def job_record(ranks: Sequence[Mapping[str, Any]], launch: Launch, env: Mapping[str, Any], threads: int,
               host: Mapping[str, Any]) -> dict[str, Any]:
    """The job's record from its ranks' records (gathered by rank 0, in rank order)."""
    ranks = sorted(ranks, key=lambda r: lookup(r, "rank", "rank") or 0)
    first = ranks[0]
    record = json.loads(json.dumps(first))  # rank 0's: config, params, series, probes, step-time metrics
    info = record.pop("rank")
    record["env"] = {**dict(env), "torch_num_threads": info.get("torch_threads")}
    summaries = [_rank_summary(r) for r in ranks]
    batches = [batch_achieved(r) or 0 for r in ranks]
    throughput = scaling.job_throughput([(s["it_per_s"], b) for s, b in zip(summaries, batches)])
    comp = info.get("comparison") or {}
    single = scaling.single_process(comp.get("solo_s") or [], batches[0])
    single.update(rank=0, method="rank 0 alone runs the plain (non-DDP) step, same model, data and threads, in "
                                 "windows interleaved with the comparison pairs while the other ranks wait in a "
                                 "barrier")
    world = launch.world_size
    diffs = [lookup(r, "rank", "replicas_max_abs_diff") or {} for r in ranks]
    m = record["metrics"]
    m["it_per_s"], m["samples_per_s"] = throughput["it_per_s"], throughput["samples_per_s"]
    m["measured_time_s"] = max(s["measured_time_s"] or 0.0 for s in summaries)
    warnings = list(m.get("warnings") or [])
    for r in ranks[1:]:
        warnings += [f"rank {lookup(r, 'rank', 'rank')}: {w}" for w in lookup(r, "metrics", "warnings") or []
                     if w not in warnings]
    workers = int(lookup(record, "config", "data", "num_workers") or 0)
    cores = os.cpu_count() or 1
    busy = launch.nproc_per_node * (workers + threads)
    if busy > cores:
        warnings.append(f"{launch.nproc_per_node} ranks x ({workers} DataLoader workers + {threads} torch threads) = "
                        f"{busy} on {cores} CPU cores: the ranks compete for the CPU, which lowers the scaling "
                        "efficiency")
    synced = diffs[0].get("after_synced_steps")
    if synced is not None and synced > 0:
        warnings.append(f"the trainable parameters differ across ranks after the synced steps (max |diff| "
                        f"{synced:.3g}): the gradients were not all synchronised")
    m["warnings"] = warnings
    shares = [s["allreduce"]["share"] for s in summaries]
    record["distributed"] = {
        "world_size": world, "nnodes": launch.nnodes, "nproc_per_node": launch.nproc_per_node,
        "backend": info.get("backend"),
        "launcher": "torchrun " + " ".join(launch.torchrun_args()),
        "data": "each rank reads its own shard (DistributedSampler, drop_last): an epoch is "
                "dataset // (world_size x batch) steps",
        "torch_threads_per_rank": threads,
        "ranks": summaries,
        "job_it_per_s": throughput["it_per_s"], "job_samples_per_s": throughput["samples_per_s"],
        "allreduce_share": scaling.job_share(shares), "allreduce_share_method": scaling.SHARE_METHOD,
        "comparison_rounds": comp.get("rounds"),
        "single_process": single,
        "scaling_efficiency": scaling.scaling_efficiency(throughput["samples_per_s"], world, single["samples_per_s"]),
        "replicas_max_abs_diff": diffs[0],
        "host": dict(host),
    }
    return record
