"""PNG charts of result records (hjepa_bench.report.charts) on hand-made records."""
from __future__ import annotations

import copy
import math
import warnings

import matplotlib.image as mpimg
import pytest

from hjepa_bench.analysis.memory import fit_memory
from hjepa_bench.report.charts import (
    Chart,
    loss_curve,
    memory_vs_batch,
    render_charts,
    step_time_over_run,
    throughput_vs_batch,
    worker_effect,
)

GIB, MIB = 2**30, 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL = ["throughput_vs_batch", "step_time_over_run", "memory_vs_batch", "loss_curve", "worker_effect"]
TOTAL = 16 * GIB
# Exactly linear peak memory per model: intercept + per-sample bytes * batch.
MEM = {"vit_tiny_patch16_224": (1 * GIB, 64 * MIB), "vit_small_patch16_224": (2 * GIB, 256 * MIB)}
# The largest batch whose peak stays within 90% of TOTAL, worked out by hand:
# tiny: (14.4 GiB - 1 GiB) / 64 MiB = 214.4 -> 214; small: (14.4 - 2) GiB / 256 MiB = 49.6 -> 49.
PRED = {"vit_tiny": 214, "vit_small": 49}


def make_record(model="vit_tiny_patch16_224", batch=16, workers=2, status="ok", sps=None, peak="linear",
                total=TOTAL, device="cpu", steps=12, warmup=3, loss=True, label=None):
    """A minimal result record with the fields the charts read."""
    a, b = MEM.get(model, (GIB, 64 * MIB))
    if sps is None:  # throughput grows with batch, more workers help a little, small is slower
        sps = (100.0 if "tiny" in model else 40.0) * math.log2(batch) * (1 + 0.1 * workers)
    step_s = batch / sps
    series_steps = [step_s * 5] + [step_s] * (steps - 1)  # one slow first warm-up step
    rec = {
        "schema_version": 1,
        "status": status,
        "error": None if status == "ok" else f"{status} at batch {batch}",
        "config": {
            "model": {"encoder_type": model, "num_hierarchies": 2, "predictor": {"depth": 2}},
            "data": {"batch_size": batch, "num_workers": workers, "image_size": 224},
            "bench": {"variant": "reference", "precision": "fp32", "device": device, "warmup_steps": warmup},
        },
        "env": {"backend": device, "device_name": device.upper(), "fingerprint_id": "abc123def456"},
        "metrics": {
            "it_per_s": sps / batch,
            "samples_per_s": sps,
            "step_time_s": {"median": step_s},
            "peak_device_bytes": (a + b * batch) if peak == "linear" else peak,
            "device_total_bytes": total,
            "batch_size": {"requested": batch, "achieved": batch},
        },
        "series": {
            "warmup_steps": warmup,
            "step_time_s": series_steps,
            "loss": [3.0 - 0.1 * i for i in range(steps)] if loss else None,
        },
    }
    if status != "ok":
        rec["metrics"] = {}
        rec["series"] = {}
    if label:
        rec["sweep"] = {"label": label}
    return rec


def grid(**kw):
    """2 models x 3 batches x 2 worker counts = 12 ok records."""
    return [make_record(model=m, batch=b, workers=w, **kw)
            for m in MEM for b in (8, 16, 32) for w in (2, 4)]


def assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.01  # something is drawn, not a blank canvas


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("charts") / "img"  # not created yet: render_charts creates it
    return out, render_charts(grid(), out)


def test_all_five_charts_written_as_pngs(full):
    out, charts = full
    assert [c.name for c in charts] == ALL
    for c in charts:
        assert isinstance(c, Chart)
        assert c.path == out / f"{c.name}.png"
        assert_png(c.path)
        assert c.title and "\n" not in c.title
        assert c.caption.endswith(".") and "\n" not in c.caption
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in ALL)


def test_captions_count_records(full):
    _, charts = full
    cap = {c.name: c.caption for c in charts}
    assert "12 ok records in 2 groups" in cap["throughput_vs_batch"]
    assert "the first 8 of 12 ok records with step times" in cap["step_time_over_run"]
    assert "12 ok records in 2 groups" in cap["memory_vs_batch"]
    assert "the first 8 of 12 ok records with a loss series" in cap["loss_curve"]
    assert "12 ok records in 6 groups" in cap["worker_effect"]
    assert "not ok" not in cap["throughput_vs_batch"]


def test_throughput_plots_best_worker_count(full):
    _, charts = full
    chart = charts[0]
    assert "several DataLoader worker counts" in chart.caption and "best" in chart.caption
    series = chart.details["series"]
    assert set(series) == {"vit_tiny", "vit_small"}  # labels name only what varies
    tiny = series["vit_tiny"]
    assert tiny["batch"] == [8, 16, 32]
    assert tiny["workers"] == [4, 4, 4]  # 4 workers is faster in the hand-made data
    assert tiny["samples_per_s"] == pytest.approx([100.0 * math.log2(b) * 1.4 for b in (8, 16, 32)])


def test_worker_effect_lines(full):
    _, charts = full
    series = charts[-1].details["series"]
    assert len(series) == 6
    line = series["vit_small b16"]
    assert line["workers"] == [2, 4]
    assert line["samples_per_s"] == pytest.approx([40.0 * 4 * 1.2, 40.0 * 4 * 1.4])


def test_memory_chart_marks_fit_memory_prediction(full):
    _, charts = full
    chart = next(c for c in charts if c.name == "memory_vs_batch")
    assert chart.details["predicted_max_batch"] == {"vit_tiny": PRED["vit_tiny"], "vit_small": PRED["vit_small"]}
    assert f"vit_tiny {PRED['vit_tiny']}" in chart.caption
    assert f"vit_small {PRED['vit_small']}" in chart.caption
    assert "90%" in chart.caption
    # the same numbers fit_memory gives
    fits = fit_memory(grid())
    assert fits[("CPU", "vit_tiny")]["predicted_max_batch"] == PRED["vit_tiny"]


def test_memory_prediction_capped_by_oom(tmp_path):
    recs = grid() + [make_record(batch=64, status="oom")]
    chart = memory_vs_batch(recs, tmp_path)
    assert chart is not None
    assert chart.details["predicted_max_batch"]["vit_tiny"] == 63  # capped below the OOM batch
    assert chart.details["predicted_max_batch"]["vit_small"] == PRED["vit_small"]
    assert "(1 record not ok excluded)" in chart.caption
    assert "12 ok records" in chart.caption


def test_memory_skipped_without_memory_numbers(tmp_path):
    charts = render_charts(grid(peak=None), tmp_path)
    names = [c.name for c in charts]
    assert "memory_vs_batch" not in names
    assert names == [n for n in ALL if n != "memory_vs_batch"]
    assert not (tmp_path / "memory_vs_batch.png").exists()


def test_worker_chart_skipped_with_one_worker_count(tmp_path):
    recs = [r for r in grid() if r["config"]["data"]["num_workers"] == 2]
    assert worker_effect(recs, tmp_path) is None
    chart = throughput_vs_batch(recs, tmp_path)
    assert "several DataLoader worker counts" not in chart.caption
    assert "6 ok records" in chart.caption


def test_non_ok_records_excluded(tmp_path):
    bad = [make_record(batch=64, status=s) for s in ("oom", "error", "timeout")]
    # a non-ok record that still carries big numbers must not be plotted either
    crashed = make_record(batch=16, workers=8, sps=1e6)
    crashed["status"] = "crashed"
    recs = grid() + bad + [crashed]
    chart = throughput_vs_batch(recs, tmp_path)
    assert "12 ok records" in chart.caption and "(4 records not ok excluded)" in chart.caption
    plotted = [y for s in chart.details["series"].values() for y in s["samples_per_s"]]
    assert max(plotted) < 1e5
    assert all(64 not in s["batch"] for s in chart.details["series"].values())
    assert worker_effect(recs, tmp_path).details["records"] == 12


def test_only_non_ok_records_give_no_charts(tmp_path):
    out = tmp_path / "none"
    assert render_charts([make_record(status="oom"), make_record(status="error")], out) == []
    assert render_charts([], out) == []
    assert list(out.iterdir()) == []


def test_single_record(tmp_path):
    charts = render_charts([make_record(label="cpu vit_tiny b16 w2 reference fp32 224px")], tmp_path)
    names = [c.name for c in charts]
    assert names == ["throughput_vs_batch", "step_time_over_run", "memory_vs_batch", "loss_curve"]
    for c in charts:
        assert_png(c.path)
        assert "1 ok record" in c.caption
    mem = charts[2]
    assert "no fit" in mem.caption and mem.details["predicted_max_batch"] == {"vit_tiny": None}
    assert charts[1].details["labels"] == ["cpu vit_tiny b16 w2 reference fp32 224px"]


def test_step_time_warmup_and_log_scale(tmp_path):
    recs = [make_record(batch=b, label=f"run b{b}") for b in (8, 16)]
    chart = step_time_over_run(recs, tmp_path)
    assert chart.details["warmup_steps"] == [3, 3]
    assert chart.details["log_y"] is False  # the first step is 5x slower: linear is fine
    assert "warm-up" in chart.caption and "2 ok records with step times" in chart.caption
    recs[0]["series"]["step_time_s"][0] *= 100  # a 500x first step
    chart = step_time_over_run(recs, tmp_path)
    assert chart.details["log_y"] is True and "logarithmic" in chart.caption
    assert chart.details["labels"] == ["run b8", "run b16"]


def test_robust_to_none_and_nan(tmp_path):
    recs = grid()
    recs[0]["metrics"]["samples_per_s"] = None  # falls back to it/s x batch
    recs[1]["metrics"]["samples_per_s"] = float("nan")
    recs[1]["metrics"]["it_per_s"] = None  # no throughput at all: left out
    recs[2]["series"]["step_time_s"] = [None, float("nan"), 0.1, None, 0.2]
    recs[3]["series"]["loss"] = [None] * 12  # nothing finite: no loss line
    recs[4]["metrics"]["peak_device_bytes"] = None
    recs[5]["config"]["model"]["predictor"] = None
    recs.append({"status": "error", "config": None, "env": None, "metrics": None})
    recs.append(None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        charts = render_charts(recs, tmp_path)
        with_warning = [str(w.message) for w in caught if "chart" in str(w.message)]
    assert with_warning == []
    assert [c.name for c in charts] == ALL
    cap = {c.name: c.caption for c in charts}
    assert "11 ok records" in cap["throughput_vs_batch"]
    assert "(2 records not ok excluded)" in cap["throughput_vs_batch"]
    assert "11 ok records with a loss series" in cap["loss_curve"]
    # memory fits split by predictor depth too: recs[5] (predictor unknown) is its own, unfitted group
    assert "11 ok records in 3 groups" in cap["memory_vs_batch"] and "no fit" in cap["memory_vs_batch"]
    tiny = charts[0].details["series"]
    # recs[0] (tiny b8 w2) counted from it/s x batch; recs[5] (no predictor) is its own group
    assert sum(len(s["batch"]) for s in tiny.values()) >= 6


def test_groups_split_by_setup_and_device(tmp_path):
    recs = grid()
    for r in copy.deepcopy(grid()):
        r["config"]["bench"]["precision"] = "bf16"
        r["metrics"]["samples_per_s"] *= 2
        recs.append(r)
    chart = throughput_vs_batch(recs, tmp_path)
    assert set(chart.details["series"]) == {"vit_tiny fp32", "vit_small fp32", "vit_tiny bf16", "vit_small bf16"}
    assert "24 ok records in 4 groups" in chart.caption


def test_loss_curve_smoothed_and_skipped_without_loss(tmp_path):
    recs = [make_record(batch=8, steps=40, label="a"), make_record(batch=16, steps=12, loss=False, label="b")]
    chart = loss_curve(recs, tmp_path)
    assert chart.details["labels"] == ["a"]  # the record without a loss series is left out
    assert chart.details["windows"] == [4] and chart.details["warmup_steps"] == [3]
    assert "1 ok record with a loss series" in chart.caption
    assert loss_curve([recs[1]], tmp_path / "x") is None
    assert not (tmp_path / "x" / "loss_curve.png").exists()
