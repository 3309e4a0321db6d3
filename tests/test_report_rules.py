"""The report's rules, checked on real records: the two example sweeps' results (a CPU sweep of the
guide's configs, and a two-node loopback cluster of a tiny config), copied into tests/data when they
were measured.  Each test names the rule (docs/verdicts-rules.md) it holds the report to."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import run_cli

DATA = Path(__file__).parent / "data"
CPU, CLUSTER = DATA / "example_cpu_results.jsonl", DATA / "example_cluster_results.jsonl"


def _render(results: Path, out: Path) -> tuple[str, dict]:
    res = run_cli("report", str(results), "--out", str(out / "report.md"), "--no-charts")
    assert res.returncode == 0, res.stderr
    return (out / "report.md").read_text(), json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    return _render(CPU, tmp_path_factory.mktemp("cpu"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    return _render(CLUSTER, tmp_path_factory.mktemp("cluster"))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _md_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after ``heading``, as one dict per row (header -> cell)."""
    block, started = [], False
    for line in text[text.index(heading):].splitlines()[1:]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            started = True
        elif started:
            break
    return [dict(zip(block[0], cells)) for cells in block[2:]]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^#{2,3} ", text[start + len(heading):], re.M)
    return text[start:start + len(heading) + (nxt.start() if nxt else len(text))]


# --------------------------------------------------------------------------- one CV per record
@pytest.mark.parametrize("which", ["cpu", "cluster"])
def test_one_cv_per_record_in_every_table(which, cpu, cluster):
    """The measured-speed table, the stability table and criterion 2 show one CV of one set of steps."""
    text, analysis = cpu if which == "cpu" else cluster
    speed = _md_table(text, "### Measured step speed")
    stab = _md_table(text, "### Step-time stability")
    assert len(speed) == len(stab) >= 4
    for a, b in zip(speed, stab):
        assert float(a["CV %"]) == pytest.approx(float(b["CV %"]), abs=0.051), (a, b)
        assert int(a["steps"]) == int(b["steps"])
        assert float(a["median step (ms)"]) == pytest.approx(float(b["median (ms)"]), abs=0.011)
    cv = analysis["facts"]["step_cv_pct"]
    assert f"CV {cv:.1f}%" in next(c["evidence"] for c in analysis["criteria"] if c["id"] == "performance")
    assert any(abs(float(a["CV %"]) - cv) < 0.051 for a in speed)


def test_drift_is_stated_over_the_measured_span_never_per_100_steps(cpu, cluster):
    for text, _ in (cpu, cluster):
        assert "/100 steps" not in text
        for row in _md_table(text, "### Step-time stability"):
            drift = row["drift (fitted change over the measured steps)"]
            assert drift == "-" or drift.endswith(f"over {row['steps']} measured steps"), row


# --------------------------------------------------------------------------- one run's terminal summary
@pytest.mark.slow  # DataLoader workers on a shared 2-core machine
def test_a_run_summary_and_its_probe_lines_agree_on_the_split_and_the_workers(tmp_path):
    """One `run`: the time split line and the bottleneck probe's line report the same shares, and a run
    that warns about more DataLoader workers than cores never advises keeping that many."""
    import os

    from helpers import TINY_FLAGS

    cores = os.cpu_count() or 1
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--workers") + 1] = str(cores + 1)
    res = run_cli("run", "--device", "cpu", *flags, "--probes", "bottleneck", "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"{cores + 1} DataLoader workers on {cores} CPU cores" in out
    assert f"keep num_workers at {cores + 1}" not in out
    assert f"use at most {cores} num_workers" in out
    split = re.search(r"time split: data wait ([\d.]+)%, host ([\d.]+)%, device ([\d.]+)%", out)
    probe = re.search(r"probe bottleneck: [\w-]+ \(data_wait (\d+)%, host (\d+)%, device (\d+)%", out)
    assert split and probe, out
    for a, b in zip(split.groups(), probe.groups()):
        assert abs(float(a) - float(b)) <= 0.5 + 1e-9, (split.groups(), probe.groups())


# --------------------------------------------------------------------------- analyze: the log's own run
def test_analyze_projects_the_logs_own_run_and_judges_no_loss_from_two_values(tmp_path):
    """A log that says "Validation dataset size: 256" is projected with 256 validation images (not
    CIFAR-10's 10,000); a log with two loss values judges neither the loss nor the warm-up from them."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
    from generators import build_log

    text = build_log(epochs=2, spe=10, log_freq=10)  # one loss value per epoch
    marker = "Training batches per epoch: 10\n"
    text = text.replace(marker, marker + "2026-01-01 00:00:00 - __main__ - INFO - Validation dataset size: 256\n", 1)
    log = tmp_path / "train.log"
    log.write_text(text)
    res = run_cli("analyze", "--log", str(log), "--out", str(tmp_path / "an"))
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "an" / "analysis.json").read_text())
    row = next(r for r in data["matrix"] if r["option"] == "L")
    proj = row["projection"]
    assert proj["overhead_counts"]["validation_steps_per_pass"] == 256 // 32  # ceil(256 / 32)
    assert any("over 256 images" in a for a in proj["assumptions"])
    items = {i["fact"]: i for s in data["checklist"] for i in s["items"]}
    assert data["loss"]["n"] == 2
    assert items["loss_drop"]["status"] == "not measured" and "2 loss value(s)" in items["loss_drop"]["evidence"]
    assert items["warmup"]["status"] == "not measured", items["warmup"]
    assert items["loss_steady"]["status"] == "not measured"
    # the logged run's own row has no time window: said in words, never "inf"
    matrix = _md_table((tmp_path / "an" / "report.md").read_text(), "## Decision matrix")
    assert next(r for r in matrix if r["option"] == "L")["limit h"] == "none (projection only)"
    assert "inf" not in json.dumps(row["reasons"])


# --------------------------------------------------------------------------- labels
def test_step_charts_have_whole_step_ticks_and_explain_their_codes(tmp_path):
    from matplotlib.ticker import MaxNLocator

    from hjepa_bench.report.charts import _figure, _step_axes, loss_curve, step_time_over_run

    recs = _records(CPU)
    for chart in (step_time_over_run(recs, tmp_path), loss_curve(recs, tmp_path)):
        assert "L<n> = hierarchy levels" in chart.caption and "P<n> = predictor depth" in chart.caption, chart.caption
    fig, ax = _figure("t")
    ax.plot([0, 1, 2], [1.0, 2.0, 3.0], label="vit_tiny L2 P4")
    _step_axes(fig, ax, [1], "ms")
    loc = ax.xaxis.get_major_locator()
    assert isinstance(loc, MaxNLocator) and all(float(t).is_integer() for t in loc.tick_values(0, 3))
    assert ax.get_legend().get_title().get_text() == "L<n> = hierarchy levels, P<n> = predictor depth"
