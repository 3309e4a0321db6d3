"""Built-in report section ``scaling``: the data-parallel scaling table.

One row per data-parallel job (``run --nproc-per-node N``, or a sweep with ``--nproc-per-node 1,2``),
next to the one-process records of the same config on the same machine; the numbers come from
:func:`hjepa_bench.analysis.scaling.scaling_rows`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tabulate import tabulate

from hjepa_bench.analysis.scaling import scaling_rows
from hjepa_bench.format import fmt_finite, fmt_ms
from hjepa_bench.plugin.api import ReportSection
from hjepa_bench.plugin.hookspecs import hookimpl

NOTE = (
    "Measured in these runs. A data-parallel job runs N ranks in lockstep (DDP through torchrun; gloo on CPU, "
    "NCCL on CUDA); each rank reads its own shard of the data. **Median step per rank**: each rank's median step "
    "time in the measured loop. **All-reduce share**: 1 - median `no_sync` step / median synced step, from "
    "steps interleaved in pairs after the measured loop (per rank in brackets): the *exposed* cost of the "
    "gradient all-reduce, i.e. the part not hidden behind the backward pass plus the wait for the slower rank "
    "(0 when noise made the `no_sync` steps the slower ones). **Job samples/s**: the sum over ranks, at the pace "
    "of the slowest. **Single process**: rank 0 alone running the plain step in the same run (same model, data "
    "and threads per rank), while the other ranks wait. **Scaling efficiency** = job samples/s / (N x single "
    "process); 1.00 is perfect. **vs 1-process run**: the same ratio against the separate one-process record of "
    "the config (another process, another time, every core for its threads). On a shared CPU the ranks compete "
    "for the cores (see the host's cores and load average), so a low efficiency there is mostly contention, "
    "not communication; on a multi-GPU machine the numbers measure the interconnect and the overlap.")


def _host(host: Mapping[str, Any] | None) -> str:
    if not host:
        return "-"
    load = [host.get("load_avg_1min_start"), host.get("load_avg_1min_end")]
    loads = "-".join(fmt_finite(x) for x in load if x is not None) or "-"
    return f"{host.get('cpu_count')} cores, load {loads}"


class ScalingSection(ReportSection):
    name = "scaling"
    title = "Data-parallel scaling"
    order = 15

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        rows = scaling_rows(list(records))
        if not rows:
            return None
        table = []
        for r in rows:
            shares = r["share_per_rank"]
            share = "-" if r["allreduce_share"] is None else (
                f"{fmt_finite(r['allreduce_share'])} ({' / '.join(fmt_finite(s) for s in shares or [])})")
            table.append([r["config"], r["world_size"], r.get("backend") or "-",
                          " / ".join(fmt_ms(s, dash="-") for s in r["step_s_per_rank"]), share,
                          fmt_finite(r["job_samples_per_s"], ".1f"), fmt_finite(r["single_samples_per_s"], ".1f"),
                          fmt_finite(r["scaling_efficiency"]), fmt_finite(r["efficiency_vs_separate"]),
                          _host(r["host"])])
        md = tabulate(table, headers=["config", "ranks", "backend", "median step per rank", "all-reduce share",
                                      "job samples/s", "single process samples/s (same run)", "scaling efficiency",
                                      "vs 1-process run", "host"], tablefmt="github", disable_numparse=True)
        return md + "\n\n" + NOTE


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(ScalingSection())
