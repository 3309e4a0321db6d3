"""Built-in executor ``local`` (the default): each config of a sweep in its own child process on this
machine, one after the other, in plan order."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hjepa_bench.errors import UserError
from hjepa_bench.measure import sweep
from hjepa_bench.plugin.api import Backend, Executor, JobQueue, Place
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.plugin.manager import select_backend


class LocalExecutor(Executor):
    name = "local"
    description = "each config in a fresh child process on this machine, one at a time"

    def places(self, devices: Sequence[str], backends: Mapping[str, Backend], plugin_args: Sequence[str],
               options: Mapping[str, Any]) -> list[Place]:
        if options:
            raise UserError(f"the local executor takes no {', '.join(sorted(options))} option.")
        resolved: dict[str, Backend] = {}
        for name in devices:
            backend = select_backend(backends, name)
            resolved.setdefault(backend.name, backend)
        return [Place(label=None, devices={n: sweep.device_facts(b, plugin_args) for n, b in resolved.items()})]

    def run(self, places: Sequence[Place], queue: JobQueue) -> None:
        for place in places:
            while (job := queue.next_job(place.label)) is not None:
                queue.started(job)
                queue.finished(job, sweep.run_job_here(job))


@hookimpl
def hjepa_bench_register_executors(register):
    register(LocalExecutor())
