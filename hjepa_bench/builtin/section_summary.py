"""Built-in report section ``summary``: one table row per measured config."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hjepa_bench.plugin.api import ReportSection
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.record import records_frame
from hjepa_bench.report.sections import frame_markdown


class SummarySection(ReportSection):
    name = "summary"
    title = "Measured step speed"
    order = 10

    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        df = records_frame(records)
        if df.empty:
            return None
        cols = {"device": "device", **({"node": "node"} if df["node"].notna().any() else {}), "model": "model",
                "variant": "variant", "precision": "precision",
                "img": "img px", "batch": "batch", "workers": "workers", "status": "status",
                "it_per_s": "it/s", "samples_per_s": "samples/s", "step_median_ms": "median step (ms)",
                "step_cv_pct": "CV %", "data_wait_pct": "data wait %", "peak_mem_mib": "peak mem (MiB)",
                "steps": "steps"}
        if (df["ranks"] > 1).any():  # data-parallel jobs: it/s and samples/s are the job's
            items = list(cols.items())
            items.insert(list(cols).index("workers") + 1, ("ranks", "processes"))
            cols = dict(items)
        table = df[list(cols)].rename(columns=cols)
        note = ("Measured in this run: median of per-step times after warm-up; it/s from synced "
                "windows of steps. Peak memory is device memory on CUDA/MPS and on CPU the RSS of the process "
                "tree (main process + DataLoader workers).")
        if "ranks" in cols:
            note += (" For a data-parallel job (processes above 1): it/s and samples/s are the job's (its slowest "
                     "rank's steps/s; samples summed over the ranks), the step times and memory are rank 0's.")
        return frame_markdown(table) + "\n\n" + note


@hookimpl
def hjepa_bench_register_report_sections(register):
    register(SummarySection())
