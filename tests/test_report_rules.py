"""The report's rules, checked on real records: the two example sweeps' results (a CPU sweep of the
guide's configs, and a two-node loopback cluster of a tiny config), copied into tests/data when they
were measured.  Each test names the rule (docs/verdicts-rules.md) it holds the report to."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import md_table, run_cli

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




def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^#{2,3} ", text[start + len(heading):], re.M)
    return text[start:start + len(heading) + (nxt.start() if nxt else len(text))]


# --------------------------------------------------------------------------- one CV per record
@pytest.mark.parametrize("which", ["cpu", "cluster"])
def test_one_cv_per_record_in_every_table(which, cpu, cluster):
    """The measured-speed table, the stability table and criterion 2 show one CV of one set of steps."""
    text, analysis = cpu if which == "cpu" else cluster
    speed = md_table(text, "### Measured step speed")
    stab = md_table(text, "### Step-time stability")
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
        for row in md_table(text, "### Step-time stability"):
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
    advised = re.search(r"(?:use at most|decrease num_workers to) (\d+)", out)  # data-bound, saturated or neither
    assert advised and int(advised.group(1)) <= cores, out
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
    matrix = md_table((tmp_path / "an" / "report.md").read_text(), "## Decision matrix")
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


# --------------------------------------------------------------------------- 1. the guide's run
def test_a_toy_run_does_not_pass_the_guides_speed_criterion(cluster):
    text, analysis = cluster
    crit = {c["id"]: c for c in analysis["criteria"]}
    assert crit["performance"]["status"] == "not measured"
    assert "not the guide's quick_val" in crit["performance"]["evidence"]
    judged = text[text.index("Judged on:"):].splitlines()[0]
    for diff in ("2 encoder blocks (quick_val: 12 encoder blocks)", "predictor depth 1 (quick_val: predictor depth 2)",
                 "64 px (quick_val: 224 px)", "batch 4 (quick_val: batch 32)", "0 workers (quick_val: 4 workers)"):
        assert diff in judged
    assert "the guide expects" not in " ".join(analysis["lessons"]["Unexpected Findings"])
    items = {i["fact"]: i for s in analysis["checklist"] for i in s["items"]}
    assert items["speed"]["status"] == items["memory"]["status"] == "not measured"


def test_quick_val_at_the_workers_this_machine_has_is_quick_val():
    """quick_val asks for 4 DataLoader workers; the default worker count is capped at the cores, so on
    a 2-core machine quick_val's run is the one with 2 workers (a run with fewer still differs)."""
    from hjepa_bench.analysis.criteria import guide_differences
    from hjepa_bench.config import DEFAULTS

    def rec(workers, cores):
        config = json.loads(json.dumps(DEFAULTS))
        config["data"]["num_workers"] = workers
        return {"config": config, "env": {"cpu_count_logical": cores}}

    assert guide_differences(rec(2, 2)) == []
    assert guide_differences(rec(4, 8)) == []
    assert guide_differences(rec(4, 2)) == []  # quick_val's own value is quick_val everywhere
    assert guide_differences(rec(1, 2)) == ["1 workers (quick_val: 4 workers)"]
    assert guide_differences(rec(2, 8)) == ["2 workers (quick_val: 4 workers)"]


def test_the_guides_own_run_is_judged(cpu):
    _, analysis = cpu
    assert analysis["facts"]["guide_differences"] == []
    assert {c["id"]: c for c in analysis["criteria"]}["performance"]["status"] == "fail"


# --------------------------------------------------------------------------- 2. machines
def test_nodes_of_one_host_that_ran_at_the_same_time_are_not_compared(cluster):
    text, analysis = cluster
    assert analysis["machines"]["rows"] == [] and "overlapped in time" in analysis["machines"]["refused"]
    section = _section(text, "## Machines compared")
    assert "Not compared: nodes a, b are one host" in section and "fastest" not in section


# --------------------------------------------------------------------------- 3, 4. one advice per fact
def test_one_worker_advice_in_every_section_and_config(cpu, tmp_path_factory):
    text, analysis = cpu
    group = next(g for g in analysis["group_choices"] if "L2 P2" in g["group"])
    w, reason = group["workers"]["workers"], group["workers"]["reason"]
    assert "no measurable difference between 2, 4 workers" in reason and w == 2
    advice = f"num_workers {w}: {reason}"
    rows = md_table(text, "### Bottleneck: data, host or device")  # one row per record, in the file's order
    recs = _records(CPU)
    assert len(rows) == len(recs)
    quick = [row for row, rec in zip(rows, recs) if rec["config"]["model"]["predictor"]["depth"] == 2]
    assert len(quick) == 4 and all(r["worker advice"] == advice for r in quick)
    items = {i["fact"]: i for s in analysis["checklist"] for i in s["items"]}
    assert advice in items["bottleneck"]["evidence"] and reason in items["workers"]["evidence"]
    assert f"workers: {reason}" in analysis["lessons"]["Recommendations for Full Training"]
    # the configs carry the advice of their own model config, value and words
    out = Path(tmp_path_factory.getbasetemp())
    for row in analysis["matrix"]:
        cfg = next(out.glob(f"cpu*/{row['config_file']}")).read_text()
        assert f"num_workers: {row['workers_choice']['workers']}" in cfg
        assert row["workers_choice"]["reason"] in cfg


def test_a_difference_inside_the_bands_is_no_measurable_difference(cpu):
    _, analysis = cpu
    group = next(g for g in analysis["group_choices"] if "L2 P2" in g["group"])
    b = group["batch"]
    assert b["batch"] == 32 and "no measurable difference between batches 16, 32: the guide's default" in b["reason"]
    assert "inside the bands" in b["reason"]


# --------------------------------------------------------------------------- 7. few steps
def test_verdicts_on_few_steps_carry_the_records_warning(cpu):
    text, analysis = cpu
    warning = "only 5 steps measured before the time cap; the statistics are rough"
    b = next(r for r in md_table(text, "## Decision matrix") if r["option"] == "B")
    assert warning in b["verdict"]
    assert any(warning in line for line in _section(text, "## Recommendation").splitlines() if line.startswith("- B:"))
    assert any(warning in line for line in _section(text, "## Time-to-train projections").splitlines()
               if line.startswith("- B"))
    small = next(r for r in md_table(text, "### Model size") if r["model"].startswith("vit_small"))
    assert warning in small["note"] and "encoder, levels, predictor depth" in small["note"]
    vs = next(g for g in analysis["group_choices"] if "vit_small" in g["group"])
    assert warning in vs["batch"]["reason"] and warning in vs["workers"]["reason"]


# --------------------------------------------------------------------------- 8. projection footnote
def test_each_projection_states_its_own_assumptions(cpu):
    text, _ = cpu
    section = _section(text, "## Time-to-train projections")
    b = next(line for line in section.splitlines() if line.startswith("- B"))
    assert "batch 24 per step (steps/epoch = 2,083)" in b and "(100 writes" in b  # 100 epochs
    a = next(line for line in section.splitlines() if line.startswith("- A"))
    assert "batch 32 per step (steps/epoch = 1,562)" in a and "(20 writes" in a  # 20 epochs


# --------------------------------------------------------------------------- 9. criteria vs checklist vs matrix
def test_criteria_checklist_and_matrix_agree(cpu):
    text, analysis = cpu
    crit = {c["id"]: c for c in analysis["criteria"]}
    items = {i["fact"]: i for s in analysis["checklist"] for i in s["items"]}
    # a benchmark runs no epochs: criterion 1 cannot pass
    assert crit["stability"]["status"] == "not measured" and "all epochs: not measured" in crit["stability"]["evidence"]
    # criterion 5 lists the CPU fallbacks: not measured without them
    assert crit["compatibility"]["status"] == "not measured" and items["mps"]["status"] == "not measured"
    # the matrix's "diverged" says what the checklist's "No divergence observed" says
    assert items["divergence"]["status"] == "not measured"
    for row in md_table(text, "## Decision matrix"):
        assert row["diverged"] in ("not measured (preliminary)", "-"), row


# --------------------------------------------------------------------------- 10. memory
def test_a_memory_prediction_far_beyond_the_measured_batches_is_an_extrapolation(cpu):
    _text, analysis = cpu
    fit = next(v for k, v in analysis["memory_fit"].items() if "2 2]" in k)
    assert fit["predicted_max_batch"] > 4 * max(fit["ok_batches"]) and fit["extrapolated"] is True
    group = next(g for g in analysis["group_choices"] if "L2 P2" in g["group"])
    assert f"up to batch {fit['predicted_max_batch']} (an extrapolation" in group["batch"]["reason"]


# --------------------------------------------------------------------------- 11. labels
def test_labels_say_which_steps_and_what_the_loss_was_measured_at(cpu):
    text, _ = cpu
    matrix = md_table(text, "## Decision matrix")
    assert "measured steps" in matrix[0] and "steps" not in matrix[0]
    assert "training steps" in md_table(text, "## Time-to-train projections")[0]
    a = next(r for r in matrix if r["option"] == "A")
    assert a["loss down %"].startswith("1.4 (preliminary, at lr 4.1e-07 (0.3% of the configured 1.5e-04")
    # no validation run: the LR line names the option's one base LR and says why it is not adjusted
    lr_rows = [line for line in _section(text, "### Learning rate and warm-up").splitlines()
               if line.startswith("| A ") or line.startswith("| B ") or line.startswith("| C ")]
    assert len(lr_rows) == 3
    assert all("no validation run" in r and "1.0e-04" not in r for r in lr_rows)


def test_an_options_own_config_is_projected_once_as_that_option():
    """A sweep measures each option's model config; those records are projected in the option's row,
    and only the sweep's own base config gets a 'this' row (no duplicate of A or B)."""
    from hjepa_bench.measure.results import read_results
    from hjepa_bench.options import own_config_options

    records = read_results(Path(__file__).parent.parent / "reports" / "example-cpu" / "results.jsonl").records
    option_records = [r for r in records if (r.get("sweep") or {}).get("group", [None, None])[1] == "option"]
    assert option_records and len(option_records) < len(records)
    own = own_config_options(records)
    assert [o.name for o in own] == ["this"]
    assert own[0].values()["training"]["epochs"] == 5  # quick_val's own epochs, not option A's 20
