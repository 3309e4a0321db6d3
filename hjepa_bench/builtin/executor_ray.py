"""Built-in executor ``ray``: a sweep on a Ray cluster (``hjepa-bench sweep --executor ray``).

* **Where.** Every config runs on every alive node (``--ray-nodes`` picks some), one config per
  node at a time, so one report compares the machines.  A node is labelled by its custom resource
  ``hjepa_node:NAME`` when it has one (``ray start --resources '{"hjepa_node:NAME": 1}'``), else by
  its hostname; the label joins each record (``record["node"]``) and its result key.  A node that
  offers no CPU (a head started with ``--num-cpus 0``) runs nothing.
* **How.** Each config is a Ray task in a fresh worker process (``max_calls=1``, ``max_retries=0``)
  pinned to its node (``NodeAffinitySchedulingStrategy``, not soft), asking for all the node's CPUs
  (so Ray sets ``OMP_NUM_THREADS`` to them, as a local run has) and the config's device:
  ``num_gpus=1`` for cuda, the custom resource named after the device for the others (``mps``).
  The task runs the config the way the local executor does (:func:`measure.sweep.run_job_here`: a
  child process with the config's timeout), so ``timeout`` and the child's crashes keep their
  statuses.  It is a streaming generator: it yields ``started``, then the outcome.
* **Facts.** Before planning, one task per node and device (the same resources) takes the
  environment fingerprint and tries the precisions there; a requested device no node offers stops
  the sweep up front (Ray would queue such a task forever).
* **Failures.** A worker process that dies mid-config is ``crashed`` (``WorkerCrashedError``) and
  the node goes on; a node that dies is ``crashed`` (``NodeDiedError``) for its config in flight and
  its other configs are not run (a resume runs them); a task running past its timeout + 60 s is
  cancelled by the driver (``timeout``).
* **Without ``--address``** (and no ``RAY_ADDRESS``) a local one-node cluster is started for the
  sweep and shut down after it; a watchdog process kills what is left of it if the driver is killed
  (Ray leaves its dashboard and runtime-env agents running otherwise).

``ray`` is imported only when this executor is used (``pip install 'hjepa-bench[ray]'``).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hjepa_bench.errors import UserError, error_line
from hjepa_bench.plugin.api import (
    EXECUTOR_GROUP,
    Availability,
    Backend,
    DeviceFacts,
    Executor,
    Job,
    JobQueue,
    Outcome,
    Place,
)
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.plugin.manager import auto_order

#: a node's custom resource ``hjepa_node:NAME`` names it NAME in results and reports
LABEL_RESOURCE = "hjepa_node:"
#: environment variables passed to every task (plugin selection, ...), as the local executor's children inherit them
ENV_PREFIX = "HJEPA_BENCH_"
#: the driver cancels a task this long after its config's own timeout (the worker itself hangs)
GRACE_S = 60.0
#: how long the fact-taking tasks may take (a fresh worker imports torch and tries each precision)
FACTS_TIMEOUT_S = 600.0
#: how often the driver checks that the nodes of tasks not yet started are alive
NODE_CHECK_S = 5.0
INSTALL = "pip install 'hjepa-bench[ray]'"


def device_request(device: str) -> dict[str, float]:
    """The Ray resources a config on ``device`` asks for besides the node's CPUs."""
    if device == "cpu":
        return {}
    if device == "cuda":
        return {"GPU": 1.0}
    return {device: 1.0}  # mps and other accelerators: a custom resource named after the device


def ray_node_label(node: Mapping[str, Any]) -> str:
    """A node's label: its ``hjepa_node:NAME`` resource, else its hostname."""
    names = sorted(k[len(LABEL_RESOURCE):] for k in (node.get("Resources") or {}) if k.startswith(LABEL_RESOURCE))
    return names[0] if names and names[0] else str(node.get("NodeManagerHostname") or node.get("NodeManagerAddress"))


def _offers(resources: Mapping[str, float], device: str) -> bool:
    return all(resources.get(k, 0) >= v for k, v in device_request(device).items())


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` of a Ray exception (a task's own exception when it raised one)."""
    cause = getattr(exc, "cause", None)
    return error_line(cause if isinstance(cause, BaseException) else exc)[:300]


def status_for(exc: BaseException, cancelled_by_driver: bool) -> tuple[str, bool]:
    """(status, the node is gone) for a Ray failure of a config task; checked most specific first,
    since all of them are RayErrors."""
    from ray import exceptions as rex

    if isinstance(exc, rex.TaskCancelledError):
        return ("timeout" if cancelled_by_driver else "crashed"), False
    if isinstance(exc, rex.OutOfMemoryError):  # Ray's memory monitor killed the worker (host memory)
        return "oom", False
    if isinstance(exc, rex.NodeDiedError):
        return "crashed", True
    if isinstance(exc, rex.TaskUnschedulableError):  # pinned to a node that is gone: it never started
        return "dropped", True
    if isinstance(exc, rex.RayTaskError):  # the task function raised: a harness failure on the node
        return "error", False
    return "crashed", False  # WorkerCrashedError, LocalRayletDiedError, ObjectLostError, RaySystemError...


# --------------------------------------------------------------------------- what runs on the nodes
def _node_facts(device: str, plugin_args: list[str], environ: dict[str, str]) -> DeviceFacts:
    """Runs on a node: ``device`` as that node sees it (fingerprint, precisions)."""
    os.environ.update(environ)
    from hjepa_bench.measure.sweep import device_facts
    from hjepa_bench.plugin.manager import build_plugins

    backend = build_plugins(plugin_args).backends().get(device)
    if backend is None:
        return DeviceFacts(device, env={}, precisions={}, unavailable=f"no backend {device!r} is registered there")
    return device_facts(backend, plugin_args)


def _config_task(job: Job, environ: dict[str, str]):
    """Runs on a node, in a fresh worker process: the config, in a child process with its timeout."""
    yield {"event": "started"}
    os.environ.update(environ)
    from hjepa_bench.measure import sweep

    yield sweep.run_job_here(job)


# --------------------------------------------------------------------------- the driver side
@dataclass
class _Node:
    id: str
    label: str
    cpus: float
    resources: dict[str, float]
    address: str


@dataclass
class _Running:
    job: Job
    place: str
    node_id: str
    started: float | None = None
    cancelled: bool = False


class RayExecutor(Executor):
    name = "ray"
    description = "each config a Ray task in a fresh worker process, on every node of a Ray cluster"
    options = ("address", "ray_nodes")  # the dests of the flags hjepa_bench_add_options adds

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._connected = False
        self._watchdog: subprocess.Popen | None = None
        self._temp_dir: str | None = None

    def check_availability(self) -> Availability:
        if importlib.util.find_spec("ray") is None:
            return Availability(False, f"ray is not installed; {INSTALL}")
        return Availability(True)

    # ----------------------------------------------------------------- places
    def places(self, devices: Sequence[str], backends: Mapping[str, Backend], plugin_args: Sequence[str],
               options: Mapping[str, Any]) -> list[Place]:
        given = options.get("address")
        self._connect(given if given is not None else os.environ.get("RAY_ADDRESS"))
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = self._list_nodes(options.get("ray_nodes"))
        wanted: dict[str, list[str]] = {n.label: [] for n in nodes}
        for name in devices:
            offered_by = 0
            for n in nodes:
                if name == "auto":
                    device = auto_order([d for d in backends if _offers(n.resources, d)] or ["cpu"])[0]
                elif _offers(n.resources, name):
                    device = name
                else:
                    continue
                offered_by += 1
                if device not in wanted[n.label]:
                    wanted[n.label].append(device)
            if not offered_by:
                need = ", ".join(f"{k} (`ray start --resources '{{\"{k}\": 1}}'`)" if k != "GPU" else "GPU"
                                 for k in device_request(name))
                raise UserError(f"no node of the Ray cluster offers {need}, which --device {name} needs; "
                                f"nodes: {', '.join(n.label for n in nodes)}.")
        facts_task = ray.remote(max_calls=1, max_retries=0)(_node_facts)
        refs = {}
        for n in nodes:
            for device in wanted[n.label]:
                req = device_request(device)
                refs[(n.label, device)] = facts_task.options(
                    num_cpus=n.cpus, num_gpus=req.pop("GPU", 0), resources=req or None,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n.id, soft=False),
                    name=f"hjepa-bench facts {device}").remote(device, list(plugin_args), self._environ())
        facts = self._gather(refs)
        self._nodes = {n.label: n for n in nodes}
        return [Place(label=n.label, devices={d: facts[(n.label, d)] for d in wanted[n.label]},
                      info={"label": n.label, "executor": self.name, "ray_node_id": n.id, "address": n.address})
                for n in nodes if wanted[n.label]]

    def _connect(self, address: str | None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address is not None and not address.strip():
            raise UserError("--address is empty: give the Ray head as HOST:PORT, or leave --address out for a new "
                            "local cluster.")
        if address and ":" in address and "://" not in address:
            _check_listening(address)
        import ray

        sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with sys.exit
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "namespace": "hjepa-bench"}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:  # a new one-node cluster; never attach to one found through ray_current_cluster
                self._temp_dir = tempfile.mkdtemp(prefix="hjray", dir="/tmp" if os.path.isdir("/tmp") else None)
                ray.init(address="local", include_dashboard=False, object_store_memory=100 * 2**20,
                         _temp_dir=self._temp_dir, **kwargs)
                self._watchdog = _start_watchdog(self._temp_dir)
        except Exception as exc:
            raise UserError(f"cannot start or reach the Ray cluster{f' at {address}' if address else ''}: "
                            f"{_one_line(exc)}.") from None
        finally:
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        self._connected = True

    def _list_nodes(self, chosen: Sequence[str] | None) -> list[_Node]:
        import ray

        nodes = []
        for n in ray.nodes():
            res = {k: float(v) for k, v in (n.get("Resources") or {}).items()}
            if n.get("Alive") and res.get("CPU", 0) > 0:
                nodes.append(_Node(id=n["NodeID"], label=ray_node_label(n), cpus=res["CPU"], resources=res,
                                   address=str(n.get("NodeManagerAddress"))))
        nodes.sort(key=lambda n: n.label)
        seen: dict[str, _Node] = {}
        for n in nodes:
            if n.label in seen:
                raise UserError(f"two Ray nodes are labelled {n.label!r} (two nodes on one host?); start each with "
                                f"`ray start --resources '{{\"{LABEL_RESOURCE}NAME\": 1}}'` to name them.")
            seen[n.label] = n
        if not nodes:
            raise UserError("the Ray cluster has no alive node that offers a CPU.")
        if chosen:
            unknown = [c for c in chosen if c not in seen]
            if unknown:
                raise UserError(f"no alive Ray node is labelled {', '.join(unknown)}; nodes: {', '.join(seen)}.")
            nodes = [seen[c] for c in dict.fromkeys(chosen)]
        return nodes

    def _gather(self, refs: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str], DeviceFacts]:
        import ray

        _ready, waiting = ray.wait(list(refs.values()), num_returns=len(refs), timeout=FACTS_TIMEOUT_S)
        if waiting:
            late = sorted({node for (node, _), ref in refs.items() if ref in waiting})
            for ref in waiting:
                ray.cancel(ref, force=True)
            raise UserError(f"Ray node {', '.join(late)} did not answer within {FACTS_TIMEOUT_S:.0f} s "
                            "(busy with other work, or gone?).")
        out = {}
        for (node, device), ref in refs.items():
            try:
                out[(node, device)] = ray.get(ref)
            except Exception as exc:  # a node without hjepa-bench, a plugin missing there...
                raise UserError(f"Ray node {node} cannot take the facts of device {device}: {_one_line(exc)} "
                                "(every node needs the same Python environment with hjepa-bench).") from None
        return out

    @staticmethod
    def _environ() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}

    # ----------------------------------------------------------------- run
    def run(self, places: Sequence[Place], queue: JobQueue) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(max_calls=1, max_retries=0, num_returns="streaming")(_config_task)
        environ = self._environ()
        free = [p.label for p in places]
        running: dict[Any, _Running] = {}
        last_check = time.time()

        def release(place: str, outcome: Outcome, st: _Running, gone: bool, why: str = "") -> None:
            queue.finished(st.job, outcome)
            if gone:
                queue.lost(place, why or outcome.detail)
            else:
                free.append(place)

        try:
            while True:
                for place in list(free):
                    free.remove(place)
                    job = queue.next_job(place)
                    if job is None:
                        continue  # this place is done
                    node = self._nodes[place]
                    req = device_request(job.device)
                    gen = task.options(num_cpus=node.cpus, num_gpus=req.pop("GPU", 0), resources=req or None,
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
                                       name=f"hjepa-bench {job.label}").remote(job, environ)
                    running[gen] = _Running(job, place, node.id)
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for gen in ready:
                    st = running[gen]
                    try:
                        item = ray.get(next(gen))
                    except StopIteration:
                        running.pop(gen)
                        release(st.place, Outcome("crashed", None, "the Ray task ended without a result"), st, False)
                        continue
                    except Exception as exc:
                        running.pop(gen)
                        status, gone = status_for(exc, st.cancelled)
                        detail = (f"no result {st.job.timeout_s + GRACE_S:.0f} s after the start; the driver "
                                  "cancelled the Ray task" if status == "timeout" and st.cancelled else _one_line(exc))
                        release(st.place, Outcome(status, None, detail), st, gone,
                                f"Ray node {st.place} is gone ({detail})")
                        continue
                    if isinstance(item, dict) and item.get("event") == "started":
                        st.started = time.time()
                        queue.started(st.job)
                    else:
                        running.pop(gen)
                        release(st.place, item, st, False)
                now = time.time()
                for gen, st in running.items():  # backstop: the worker itself hangs (a fixed --timeout only:
                    # otherwise the deadline follows the config's warm-up, in the worker's run_in_child)
                    if st.started and not st.cancelled and st.job.payload.get("fixed_timeout", True) \
                            and now - st.started > st.job.timeout_s + GRACE_S:
                        ray.cancel(gen, force=True)
                        st.cancelled = True
                if now - last_check > NODE_CHECK_S and any(st.started is None for st in running.values()):
                    last_check = now  # a task pinned to a node that died before it started would wait
                    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
                    for gen, st in list(running.items()):
                        if st.started is None and st.node_id not in alive:
                            ray.cancel(gen, force=True)
                            running.pop(gen)
                            release(st.place, Outcome("dropped", None, f"Ray node {st.place} died before the "
                                                      "config started"), st, True)
        except BaseException:
            for gen in running:  # Ctrl-C / SIGTERM: stop what runs, record nothing half-done
                try:
                    ray.cancel(gen, force=True)
                except Exception:
                    pass
            raise

    def close(self) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait(10)
            self._watchdog = None
        if self._temp_dir is not None:
            subprocess.run(["rm", "-rf", self._temp_dir], check=False)
            self._temp_dir = None


#: seconds a Ray head has to answer the connection check (ray.init itself has no deadline)
CONNECT_DEADLINE_S = 5.0
#: the HTTP/2 connection preface and an empty SETTINGS frame: what a gRPC client (Ray's driver) sends first
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_listening(address: str) -> None:
    """Fail in seconds, not minutes, unless a gRPC server (a Ray head's GCS) answers at HOST:PORT:
    ray.init retries for ever once a TCP connection opens, so the check tries what it will do, with
    a deadline: open the connection, speak HTTP/2 and wait for the server's SETTINGS frame."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:PORT
    try:
        port_n = int(port)
    except ValueError:
        raise UserError(f"--address {address!r} is not HOST:PORT.") from None
    if not 0 < port_n < 65536:
        raise UserError(f"--address {address!r}: the port must be 1 to 65535.")
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=CONNECT_DEADLINE_S) as sock:
            sock.settimeout(CONNECT_DEADLINE_S)
            sock.sendall(_H2_PREFACE)
            head = sock.recv(9)
    except OSError as exc:
        if isinstance(exc, socket.timeout):
            head = b""
        else:
            raise UserError(f"nothing answers at {address} ({exc.strerror or type(exc).__name__}); start the head "
                            "with `ray start --head --port PORT` and pass --address HEAD:PORT.") from None
    if len(head) < 4 or head[3] != 0x04:  # an HTTP/2 server's first frame is SETTINGS (type 4)
        raise UserError(f"something listens at {address} but it is not a Ray head (no gRPC answer within "
                        f"{CONNECT_DEADLINE_S:g} s); pass the address of `ray start --head` (its GCS port, 6379 by "
                        "default).")


def watchdog_main(driver: int, temp_dir: str) -> None:
    """The clean-up process of a local cluster: while ``driver`` (the sweep) is its parent, note the
    processes it started (Ray's agents); once the driver is gone (SIGKILLed), kill those still running
    and remove the cluster's temporary folder.  Ray would leave its agents running otherwise."""
    import shutil

    import psutil

    from hjepa_bench.measure.parent_watch import watch_parent

    me, seen = os.getpid(), {}

    def note_children() -> None:
        try:
            for p in psutil.Process(driver).children(recursive=True):
                if p.pid != me:
                    seen[p.pid] = p.create_time()
        except psutil.Error:
            pass

    def clean_up() -> None:
        for pid, created in seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.Error:
                pass
        time.sleep(1.0)
        shutil.rmtree(temp_dir, ignore_errors=True)

    watch_parent(driver, clean_up, interval_s=1.0, while_alive=note_children)


#: the watchdog process's program: it runs :func:`watchdog_main` (importing hjepa_bench, never torch)
_WATCHDOG = ("import sys; from hjepa_bench.builtin.executor_ray import watchdog_main; "
             "watchdog_main(int(sys.argv[1]), sys.argv[2])")


def _start_watchdog(temp_dir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), temp_dir], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@hookimpl
def hjepa_bench_register_executors(register):
    register(RayExecutor())


@hookimpl
def hjepa_bench_add_options(parser):
    """``sweep --address`` and ``--ray-nodes``, beside ``--executor``."""
    if parser.command != "sweep":
        return
    where = parser.group(EXECUTOR_GROUP)
    where.add_argument("--address", metavar="HOST:PORT",
                       help="ray: the head of the cluster (default $RAY_ADDRESS, else a new local one-node cluster)")
    where.add_argument("--ray-nodes", metavar="LABELS", type=parser.list_type(),
                       help="ray: only these nodes, by label (a node's hjepa_node:NAME resource, else its hostname; "
                            "default every alive node)")
