"""One rank of a data-parallel job, and the torchrun agent that starts the ranks.

``hjepa-bench run --nproc-per-node N`` (:mod:`hjepa_bench.measure.ddp`) starts::

    python -m hjepa_bench.measure.ddp_rank --agent TORCHRUN-OPTIONS -m hjepa_bench.measure.ddp_rank

``--agent`` is ``torch.distributed.run`` (torchrun) with a thread that stops it (SIGTERM: torchrun
then stops its ranks) when its parent is gone.  torchrun starts N copies of this module without
``--agent``: the ranks.  The job is a JSON file named by ``$HJEPA_BENCH_DDP_JOB`` (the resolved
config, device, plugins, probes, environment fingerprint and the folder for the results).

Each rank:

1. exits when its parent (the torchrun agent) is gone, so a SIGKILLed launcher leaves no rank
   behind (torchrun starts every rank in its own session);
2. binds its GPU on cuda (``torch.cuda.set_device(LOCAL_RANK)`` before anything touches the
   device), joins the process group (nccl on cuda, gloo otherwise) and checks that every rank
   runs the same config (nodes started with different flags);
3. runs the ordinary measured loop (:func:`~hjepa_bench.measure.runner.run_benchmark`) on the
   workload made data-parallel: DistributedDataParallel around the step's objective, the DataLoader
   reading this rank's shard.  Rank 0 decides when to stop and every rank follows, so all ranks run
   the same steps;
4. checks that the trainable parameters are identical on every rank (all-reduce MAX and MIN);
5. runs the comparison phase: rounds of [rank 0 alone runs the plain step while the others wait
   in a barrier; every rank runs one synced and one ``no_sync`` step, in alternating order], at
   least ``MIN_ROUNDS``, then while the time cap allows, at most ``MAX_ROUNDS``.  ``no_sync`` and
   solo steps update the replicas apart, so this comes after the check (which is repeated after
   it, to show that it sees a difference);
6. writes its record to ``OUT/rank{RANK}.json``; rank 0 gathers every rank's record into
   ``OUT/ranks.json``.  A rank whose run is not ok exits with code 1 after writing its record, so
   torchrun stops the job.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import error_line
from .parent_watch import start_parent_watch
from .runner import RunHooks

JOB_ENV = "HJEPA_BENCH_DDP_JOB"
#: the pid each process's parent must have (set by the launcher for the agent, by the agent for its
#: ranks): a process that finds another parent, even one orphaned while it was still importing, exits
LAUNCHER_ENV = "HJEPA_BENCH_DDP_LAUNCHER"
AGENT_ENV = "HJEPA_BENCH_DDP_AGENT"
RANKS_FILE = "ranks.json"
#: comparison phase: rounds of (solo window, synced + no_sync pair)
MIN_ROUNDS = 2
MAX_ROUNDS = 10
SOLO_STEPS = 2  # rank-0 steps per solo window


def rank_file(rank: int) -> str:
    return f"rank{rank}.json"


def _watch_parent(expected_env: str, on_orphan: Any) -> None:
    given = os.environ.get(expected_env, "")
    start_parent_watch(int(given) if given.isdigit() else os.getppid(), on_orphan)


# --------------------------------------------------------------------------- the agent
def agent(torchrun_args: list[str]) -> None:
    """torchrun, stopped by SIGTERM (which it forwards to its ranks) when its parent is gone."""
    _watch_parent(LAUNCHER_ENV, lambda: os.kill(os.getpid(), signal.SIGTERM))
    os.environ[AGENT_ENV] = str(os.getpid())  # the ranks' parent
    from torch.distributed.run import main as torchrun

    torchrun(torchrun_args)


# --------------------------------------------------------------------------- the rank
class RankHooks(RunHooks):
    """The run hooks of a rank (see the module docstring)."""

    def __init__(self, rank: int, world: int, local_rank: int, device_ids: list[int] | None):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device_ids = device_ids
        self.info: dict[str, Any] = {"rank": rank, "local_rank": local_rank, "world_size": world,
                                     "node_rank": int(os.environ.get("GROUP_RANK", 0)), "pid": os.getpid(),
                                     "backend": dist.get_backend()}

    # collectives that also work on nccl (they need the rank's device)
    def barrier(self) -> None:
        if self.device_ids is not None:
            self.dist.barrier(device_ids=self.device_ids)
        else:
            self.dist.barrier()

    def broadcast(self, value: Any) -> Any:
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same_config(self, values: Mapping[str, Any]) -> None:
        mine = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
        every: list[Any] = [None] * self.world
        self.dist.all_gather_object(every, mine)
        if len(set(every)) > 1:
            from ..errors import UserError

            odd = [r for r, h in enumerate(every) if h != every[0]]
            raise UserError(f"the ranks do not run the same config (ranks {', '.join(map(str, odd))} differ from "
                            "rank 0): start every node with the same flags and config file.")

    # RunHooks
    def prepared(self, prepared: Any) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        prepared.data_parallel(lambda module: DDP(module, device_ids=self.device_ids))
        self.prepared_workload = prepared

    def agree(self, stop_reason: str | None, window: int) -> tuple[str | None, int]:
        return tuple(self.broadcast((stop_reason, window)))  # type: ignore[return-value]

    def after_loop(self, ctx: Any, record: dict[str, Any]) -> None:
        diff_synced = self.replicas_max_abs_diff(ctx.workload)
        comparison = self.comparison_phase(ctx, float(ctx.config["bench"]["max_time_s"]))
        self.info["replicas_max_abs_diff"] = {"after_synced_steps": diff_synced,
                                              "after_comparison_phase": self.replicas_max_abs_diff(ctx.workload)}
        self.info["comparison"] = comparison

    # the checks and the comparison phase
    def replicas_max_abs_diff(self, prepared: Any) -> float | None:
        """The largest difference of any trainable parameter between any two ranks (None: the workload
        does not expose its model)."""
        import torch

        model = prepared.model()
        if model is None:
            return None
        worst = torch.zeros((), dtype=torch.float64)
        for p in (q for q in model.parameters() if q.requires_grad):
            hi, lo = p.detach().clone(), p.detach().clone()
            self.dist.all_reduce(hi, op=self.dist.ReduceOp.MAX)
            self.dist.all_reduce(lo, op=self.dist.ReduceOp.MIN)
            worst = torch.maximum(worst, (hi.double() - lo.double()).abs().max().cpu())
        return float(worst)

    def comparison_phase(self, ctx: Any, budget_s: float) -> dict[str, Any]:
        prepared, backend = ctx.workload, ctx.backend
        batches = iter(prepared.batches())

        def timed(mode: str) -> float:
            prepared.set_grad_sync(mode)
            backend.synchronize()
            t0 = time.perf_counter()
            prepared.step(next(batches))
            backend.synchronize()
            return time.perf_counter() - t0

        solo: list[float] = []
        sync: list[float] = []
        nosync: list[float] = []
        self.barrier()
        if self.rank == 0:
            timed("local")  # warm-up of the plain step (untimed)
        self.barrier()
        timed("no_sync")  # warm-up of the no_sync step (untimed)
        t_start = time.perf_counter()
        rounds = 0
        while True:
            go = None
            if self.rank == 0:
                elapsed = time.perf_counter() - t_start
                per_round = elapsed / rounds if rounds else 0.0
                go = rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS and elapsed + per_round <= budget_s)
            if not self.broadcast(go):
                break
            self.barrier()
            if self.rank == 0:  # the single-process baseline: rank 0 alone, the others wait
                solo.extend(timed("local") for _ in range(SOLO_STEPS))
            self.barrier()
            for mode in (("sync", "no_sync") if rounds % 2 == 0 else ("no_sync", "sync")):
                (sync if mode == "sync" else nosync).append(timed(mode))
            rounds += 1
        prepared.set_grad_sync("sync")
        return {"rounds": rounds, "sync_s": sync, "no_sync_s": nosync, "solo_s": solo,
                "time_s": time.perf_counter() - t_start}


def _error_record(values: Mapping[str, Any], env: Mapping[str, Any], warnings: list[str], exc: BaseException,
                  ) -> dict[str, Any]:
    from ..errors import UserError
    from ..record import new_record

    record = new_record(values, env, warnings)
    record["error"] = str(exc).strip() if isinstance(exc, UserError) else error_line(exc)
    return record


def rank_main() -> int:
    _watch_parent(AGENT_ENV, lambda: os._exit(3))
    import torch
    import torch.distributed as dist

    from ..plugin.manager import build_plugins
    from ..record import read_json, write_json
    from .runner import run_benchmark

    job = read_json(os.environ[JOB_ENV])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    out = Path(job["out_dir"])
    values, env, warnings = job["values"], job["env"], list(job["warnings"])
    hooks: RankHooks | None = None
    try:
        plugins = build_plugins(job["plugins"])
        backend = plugins.backends()[job["device"]]
        cuda = backend.name == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)  # before the process group and the model touch the device
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        hooks = RankHooks(rank, world, local_rank, [local_rank] if cuda else None)
        hooks.check_same_config(values)
        workload = plugins.workload(values["bench"]["workload"])
        artifacts = job.get("artifacts_dir")
        record = run_benchmark(values, backend, workload, plugins.select_probes(job["probes"]), env,
                               warnings=warnings, artifacts_dir=f"{artifacts}/rank{rank}" if artifacts else None,
                               hooks=hooks)
    except Exception as exc:
        record = _error_record(values, env, warnings, exc)
    from .env import hostname_hash

    record["rank"] = {**(hooks.info if hooks else {"rank": rank, "local_rank": local_rank, "world_size": world}),
                      "host": hostname_hash(),
                      "device": f"cuda:{local_rank}" if job["device"] == "cuda" else job["device"],
                      "torch_threads": torch.get_num_threads(), "finished_at": time.time()}
    write_json(record, out / rank_file(rank))
    if record["status"] != "ok" or hooks is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # torchrun stops the other ranks; their collectives would wait for this one
    every: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(record, every, dst=0)
    if rank == 0:
        write_json({"ranks": every}, out / RANKS_FILE)
    dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--agent"]:
        agent(argv[1:])
        return 0
    return rank_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
