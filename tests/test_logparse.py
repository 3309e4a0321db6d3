"""Reading an upstream H-JEPA training log: a log built here in the upstream format, with known answers.

The fixture writes what the upstream trainer writes (scripts/train.py, src/trainers/trainer.py of
github.com/jonwiggins/H-JEPA): logging lines, the printed configuration summary, tqdm training bars
joined by carriage returns with a loss/lr postfix refreshed every 50 batches, a validation bar
(leave=False, cleared with spaces) with ``val_loss=``, the multi-line epoch summary, and a tail cut
off in the middle of a bar refresh.  The step times are known (in tenths of a second), so every
expected number below is computed from the counters, not from tqdm's smoothed rate.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hjepa_bench.analysis.log_parse import LogParseError, parse_interval, parse_log, parse_rate
from hjepa_bench.analysis.log_speed import MIN_INTERVAL_S, STALL_FRACTION, WARMUP_FRACTION, analyze_log

SPE = 300  # steps per epoch (the bar total)
LOG_FREQ = 50  # upstream sets the postfix when batch_idx % log_frequency == 0
STALL_AFTER = 170  # epoch 1: a 40 s data-loader stall between step 170 and step 171
STALL_TENTHS = 400
E2_STEPS = 180  # epoch 2 is cut off after step 180 (the refresh of step 181 is truncated)
TS = "2025-11-16 13:41:02"


def t10(epoch: int, k: int) -> int:
    """Time (tenths of a second since the bar started) at which step k of the epoch is done."""
    if k == 0:
        return 0
    if epoch == 1:  # 6 s worker start-up, then 0.4 s/step (2.5 it/s), and the stall
        return 60 + (k - 1) * 4 + (STALL_TENTHS if k > STALL_AFTER else 0)
    return 80 + (k - 1) * 5  # epoch 2: 8 s start-up, then 0.5 s/step (2 it/s)


def el(epoch: int, k: int) -> int:
    """The elapsed seconds tqdm prints (whole seconds, rounded down)."""
    return t10(epoch, k) // 10


def loss_at(g: int) -> float:
    return round(0.9 * math.exp(-g / 400) + 0.1, 4)


def lr_at(g: int) -> float:
    return float(f"{1e-6 + g * 1e-7:.2e}")


def fmt_interval(t: float) -> str:
    m, s = divmod(int(t), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def rate_fmt(rate: float | None) -> str:
    if not rate:
        return "?it/s"
    return f"{1 / rate:5.2f}s/it" if rate < 1 else f"{rate:5.2f}it/s"


def bar(desc: str, n: int, total: int, elapsed: int, rate: float | None, postfix: str = "",
        blocks: str = "#") -> str:
    filled = int(10 * n / total)
    if blocks == "#":
        body = "#" * filled + " " * (10 - filled)
    else:  # unicode blocks, as tqdm draws them on a UTF-8 terminal
        body = ("█" * filled + "▌" + " " * (9 - filled))[:10]
    remaining = fmt_interval((total - n) / rate) if rate else "?"
    pf = f", {postfix}" if postfix else ""
    return (f"{desc}: {100 * n / total:3.0f}%|{body}| {n}/{total} "
            f"[{fmt_interval(elapsed)}<{remaining}, {rate_fmt(rate)}{pf}]")


def epoch_segments(epoch: int, steps: int) -> list[str]:
    """The refreshes of one training bar, as tqdm + the upstream postfix write them."""
    desc = f"Epoch {epoch}/2"
    blocks = "#" if epoch == 1 else "█"
    segs = [bar(desc, 0, SPE, 0, None, blocks=blocks)]
    ema = None
    postfix = ""
    for k in range(1, steps + 1):
        b = k - 1  # the batch whose body runs now; the bar still shows n = b
        if b % LOG_FREQ == 0:
            g = (epoch - 1) * SPE + b
            postfix = f"loss={loss_at(g):.4f}, lr={lr_at(g):.2e}"
            segs.append(bar(desc, b, SPE, el(epoch, k), ema, postfix, blocks))
        x = 10 / (t10(epoch, k) - t10(epoch, k - 1))
        ema = x if ema is None else 0.3 * x + 0.7 * ema  # tqdm's smoothed rate (what the upstream analyzer read)
        segs.append(bar(desc, k, SPE, el(epoch, k), ema, postfix, blocks))
    return segs


VAL_LOSSES = [0.4400, 0.4390, 0.4380, 0.4370, 0.4360, 0.4350, 0.4340, 0.4330, 0.4325, 0.4321]

HEADER = f"""{TS} - __main__ - INFO - Loaded configuration from configs/quick_val.yaml
{TS} - __main__ - INFO - Using device: mps

================================================================================
                         H-JEPA Training Configuration
================================================================================

Model:
  Encoder: vit_tiny
  Embedding dim: 192
  Hierarchies: 2
  Predictor depth: 2

Data:
  Dataset: cifar10
  Image size: 224
  Batch size: 32
  Workers: 4

Training:
  Epochs: 2
  Learning rate: 0.0001
  Warmup epochs: 1
================================================================================

{TS} - __main__ - INFO - Building datasets...
{TS} - __main__ - INFO - Training dataset size: 9600
{TS} - __main__ - INFO - Training batches per epoch: 300
{TS} - __main__ - INFO - Total parameters: 12,051,264
{TS} - __main__ - INFO - Trainable parameters: 6,525,696
{TS} - src.trainers.trainer - INFO - HJEPATrainer initialized
{TS} - src.trainers.trainer - INFO - Training for 2 epochs
{TS} - src.trainers.trainer - INFO - Steps per epoch: 300
{TS} - src.trainers.trainer - INFO - Device: mps
{TS} - src.trainers.trainer - INFO - Starting training...
"""

SUMMARY_1 = f"""{TS} - src.trainers.trainer - INFO -
================================================================================
Epoch 1/2 Summary
================================================================================
Train Loss: 0.4567
Val Loss:   0.4350
Elapsed:    00:03:05
ETA:        00:02:30
================================================================================

"""


def val_line(epoch: int) -> str:
    segs = [bar(f"Validation {epoch}/2", 0, 10, 0, None)]
    for i, v in enumerate(VAL_LOSSES, start=1):
        segs.append(bar(f"Validation {epoch}/2", i, 10, i // 4, 4.1, f"val_loss={v:.4f}"))
    # leave=False: cleared with spaces; the next logging line starts on the same physical line
    return "\r" + "\r".join(segs) + "\r" + " " * 90 + "\r"


def build_log(truncated: bool = True) -> str:
    text = HEADER
    text += "\r" + "\r".join(epoch_segments(1, SPE)) + "\n"
    text += val_line(1) + SUMMARY_1
    segs = epoch_segments(2, E2_STEPS)
    if truncated:
        g = SPE + (E2_STEPS // LOG_FREQ) * LOG_FREQ
        cut = bar("Epoch 2/2", E2_STEPS + 1, SPE, el(2, E2_STEPS + 1), 2.0,
                  f"loss={loss_at(g):.4f}, lr={lr_at(g):.2e}", blocks="█")
        text += "\r" + "\r".join(segs) + "\r" + cut[:len(cut) - 25]  # cut mid-refresh: no ']' and no line end
    else:
        text += "\r" + "\r".join(segs) + "\n"
    return text


@pytest.fixture(scope="module")
def log_text() -> str:
    return build_log()


@pytest.fixture(scope="module")
def parsed(log_text):
    return parse_log(log_text)


@pytest.fixture(scope="module")
def result(parsed):
    return analyze_log(parsed)


# --------------------------------------------------------------------------- small parsers
def test_interval_and_rate_fields():
    assert parse_interval("01:50") == 110
    assert parse_interval("1:02:03") == 3723
    assert parse_interval("2d 1:00:00") == 2 * 86400 + 3600
    assert parse_interval("?") is None
    assert parse_rate(" 3.14it/s") == pytest.approx(3.14)
    assert parse_rate("3.65s/it") == pytest.approx(1 / 3.65)
    assert parse_rate("?it/s") is None


# --------------------------------------------------------------------------- parsing the fixture
def test_info_facts(parsed):
    assert parsed.info == {
        "device": "mps", "encoder_type": "vit_tiny", "num_hierarchies": 2, "predictor_depth": 2,
        "image_size": 224, "batch_size": 32, "num_workers": 4, "epochs": 2, "lr": 0.0001, "warmup_epochs": 1,
        "dataset_size": 9600, "total_params": 12_051_264, "trainable_params": 6_525_696, "steps_per_epoch": 300,
    }


def test_bars_split_into_training_and_validation(parsed, log_text):
    # 1 start + 300 steps + 6 postfix refreshes; 1 + 180 + 4 in epoch 2; the cut refresh is not read
    assert len(parsed.train) == (1 + SPE + 6) + (1 + E2_STEPS + 4)
    assert {p.epoch for p in parsed.train} == {1, 2}
    assert all(p.total == SPE and p.epochs_total == 2 for p in parsed.train)
    assert max(p.n for p in parsed.train if p.epoch == 2) == E2_STEPS
    assert len(parsed.val) == 11
    assert [v["val_loss"] for v in parsed.val][-1] == pytest.approx(0.4321)
    assert all(v["epoch"] == 1 and v["total"] == 10 for v in parsed.val)
    assert parsed.bar_refreshes == len(parsed.train) + len(parsed.val)
    assert parsed.lines_total == log_text.count("\n") + 1
    assert parsed.logging_lines == 13  # 12 header lines + the summary's logging line


def test_rates_first_refresh_unknown_and_s_per_it_inverted(parsed):
    first = parsed.train[0]
    assert (first.n, first.elapsed_s, first.rate_it_per_s, first.loss) == (0, 0.0, None, None)
    step1 = next(p for p in parsed.train if p.epoch == 1 and p.n == 1)
    assert step1.rate_it_per_s == pytest.approx(1 / 6.0)  # printed as '6.00s/it'
    assert step1.loss == pytest.approx(loss_at(0)) and step1.lr == pytest.approx(lr_at(0))
    assert any(p.rate_it_per_s is not None and p.rate_it_per_s > 1 for p in parsed.train)


def test_truncated_tail_is_reported_not_read(parsed, log_text):
    assert parsed.stopped_at is not None
    assert parsed.stopped_at.startswith(f"line {log_text.count(chr(10)) + 1}:")
    assert "cut off" in parsed.stopped_at and "truncated" in parsed.stopped_at


def test_epoch_summary(parsed):
    assert parsed.epoch_summaries == [{"epoch": 1, "epochs_total": 2, "train_loss": 0.4567, "val_loss": 0.435,
                                       "run_elapsed_s": 185.0, "line_no": parsed.epoch_summaries[0]["line_no"]}]


# --------------------------------------------------------------------------- speed
def test_epoch_speed_from_counters(result):
    e1, e2 = result["epochs"]
    assert (e1["epoch"], e1["steps"], e1["total_steps"], e1["complete"]) == (1, SPE, SPE, True)
    assert e1["elapsed_s"] == el(1, SPE) == 165
    assert e1["it_per_s"] == pytest.approx(SPE / 165)
    # the smoothed rate the bar showed at the end: 2.50 it/s, far from the 1.82 it/s the counters give
    assert e1["bar_it_per_s"] == pytest.approx(2.5, abs=0.01)
    assert abs(e1["bar_it_per_s"] - e1["it_per_s"]) > 0.5
    assert (e2["epoch"], e2["steps"], e2["total_steps"], e2["complete"]) == (2, E2_STEPS, SPE, False)
    assert e2["elapsed_s"] == el(2, E2_STEPS) == 97
    assert e2["it_per_s"] == pytest.approx(E2_STEPS / 97)
    assert result["epochs_completed"] == 1 and result["epochs_planned"] == 2


def test_injected_stall_found_with_its_duration(result):
    e1, e2 = result["epochs"]
    assert len(e1["stalls"]) == 1 and e2["stalls"] == []
    stall = e1["stalls"][0]
    assert (stall["from_step"], stall["to_step"]) == (STALL_AFTER, STALL_AFTER + 1)
    assert stall["seconds"] == el(1, STALL_AFTER + 1) - el(1, STALL_AFTER) == 41
    assert abs(stall["seconds"] - STALL_TENTHS / 10) <= 1.5  # the injected 40 s, at tqdm's 1-s resolution
    assert stall["it_per_s"] < STALL_FRACTION * e1["median_interval_it_per_s"]
    assert stall["excess_s"] == pytest.approx(41 - 1 / 2.5)
    assert result["overall"]["stall_count"] == 1 and result["overall"]["stall_time_s"] == 41


def test_warmup_separated_per_epoch(result):
    e1, e2 = result["epochs"]
    # the first interval of >= 10 s ends at the first step printed at 10 s
    k1 = min(k for k in range(1, SPE + 1) if el(1, k) >= MIN_INTERVAL_S)
    k2 = min(k for k in range(1, E2_STEPS + 1) if el(2, k) >= MIN_INTERVAL_S)
    assert (e1["warmup_steps"], e1["warmup_s"]) == (k1, 10) == (11, 10)
    assert (e2["warmup_steps"], e2["warmup_s"]) == (k2, 10) == (5, 10)
    assert e1["median_interval_it_per_s"] == pytest.approx(2.5)
    assert e2["median_interval_it_per_s"] == pytest.approx(2.0)
    assert k1 / 10 < WARMUP_FRACTION * 2.5
    # steady = steps / time without warm-up and the stall
    assert e1["steady_it_per_s"] == pytest.approx((SPE - 11 - 1) / (165 - 10 - 41))
    assert e2["steady_it_per_s"] == pytest.approx((E2_STEPS - 5) / (97 - 10))
    ov = result["overall"]
    assert (ov["steps"], ov["elapsed_s"]) == (SPE + E2_STEPS, 165 + 97)
    assert ov["it_per_s"] == pytest.approx(480 / 262)
    assert ov["steady_it_per_s"] == pytest.approx((288 + 175) / (114 + 87))
    assert ov["warmup"]["steps"] == 16 and ov["warmup"]["seconds"] == 20
    assert ov["warmup"]["epochs_with_warmup"] == [1, 2]
    # steady intervals (>= 10 s, the partial before the stall and the tail merged into their neighbours):
    # epoch 1: 9 x 25 steps / 10 s, 34 steps / 13 s (136..170), 29 / 11 (271..300); epoch 2: 7 x 20 / 10, 35 / 17
    spp = np.array([0.4] * 9 + [13 / 34, 11 / 29] + [0.5] * 7 + [17 / 35])
    assert ov["step_time_cv"] == pytest.approx(spp.std(ddof=1) / spp.mean())
    assert (e1["interval_count"], e2["interval_count"]) == (13, 9)


# --------------------------------------------------------------------------- loss, lr, val
def test_loss_points_are_distinct_postfix_values_at_global_steps(result):
    steps = [b for b in range(0, SPE, LOG_FREQ)] + [SPE + b for b in range(0, E2_STEPS, LOG_FREQ)]
    assert steps == [0, 50, 100, 150, 200, 250, 300, 350, 400, 450]
    assert result["loss"]["points"] == [[g, loss_at(g)] for g in steps]
    assert result["lr"] == [[g, lr_at(g)] for g in steps]


def test_loss_start_end_from_smoothed_windows(result):
    loss = result["loss"]
    ys = [p[1] for p in loss["points"]]
    assert loss["window"] == 3
    assert loss["start"] == pytest.approx(sum(ys[:3]) / 3)
    assert loss["end"] == pytest.approx(sum(ys[-3:]) / 3)
    assert loss["start"] != pytest.approx(ys[0]) and loss["end"] != pytest.approx(ys[-1])
    assert loss["decrease_pct"] == pytest.approx((loss["start"] - loss["end"]) / loss["start"] * 100)
    assert loss["smoothed"][0] == [100, pytest.approx(sum(ys[:3]) / 3)]
    assert len(loss["smoothed"]) == len(ys) - 2
    assert (loss["non_finite"], loss["diverged"], loss["trend"]) == (0, False, "decreasing")
    assert loss["noise_pct"] is not None


def test_smooth_window_argument(parsed):
    loss = analyze_log(parsed, smooth_window=2)["loss"]
    ys = [p[1] for p in loss["points"]]
    assert loss["window"] == 2 and loss["start"] == pytest.approx((ys[0] + ys[1]) / 2)


def test_val_loss_prefers_the_summary_mean(result):
    assert result["val_loss"] == [[1, 0.435]]
    assert result["val_loss_source"] == {"1": "summary"}
    assert result["val_bars"][0]["last_val_loss"] == pytest.approx(0.4321)


def test_result_is_json_and_carries_rules(result):
    json.dumps(result, allow_nan=False)
    assert result["rules"]["stall_fraction"] == STALL_FRACTION
    assert result["rules"]["warmup_fraction"] == WARMUP_FRACTION
    assert result["rules"]["min_interval_s"] == MIN_INTERVAL_S
    assert result["info"]["total_params"] == 12_051_264
    assert result["stopped_at"] and "truncated" in result["stopped_at"]


# --------------------------------------------------------------------------- other logs
def test_upstream_example_bar_counter_speed_not_smoothed_rate():
    text = (f"{TS} - __main__ - INFO - Total parameters: 12,051,264\n"
            "\rEpoch 1/5:  18%|###       | 283/1562 [01:50<08:20, 3.14it/s, loss=0.0042, lr=1.60e-05]\n")
    res = analyze_log(parse_log(text))
    (e,) = res["epochs"]
    assert e["it_per_s"] == pytest.approx(283 / 110) and e["it_per_s"] == pytest.approx(2.5727, abs=1e-4)
    assert e["bar_it_per_s"] == pytest.approx(3.14)
    assert e["steady_it_per_s"] is None and e["warmup_steps"] is None  # one interval: no split
    assert res["loss"]["points"] == [[283, 0.0042]]
    assert res["loss"]["start"] is None  # too few points for the windows: not invented
    assert res["epochs_planned"] == 5 and res["stopped_at"] is None


def test_one_line_summary_no_total_bar_and_unnumbered_val_bar():
    text = ("\rEpoch 3/4: 120it [00:40, 3.00it/s, loss=0.5000, lr=1.00e-04]\n"
            "\rVal: 5it [00:02, 2.50it/s, val_loss=0.4800]\r     \r"
            f"{TS} - src.trainers.trainer - INFO - Epoch 3/4 - train_loss: 0.5100, val_loss: 0.4700\n")
    p = parse_log(text)
    assert (p.train[0].n, p.train[0].total, p.train[0].epoch) == (120, None, 3)
    assert p.val[0]["epoch"] == 3 and p.val[0]["val_loss"] == pytest.approx(0.48)
    assert p.epoch_summaries[0]["train_loss"] == 0.51 and p.epoch_summaries[0]["val_loss"] == 0.47
    res = analyze_log(p)
    assert res["val_loss"] == [[3, 0.47]]
    assert res["epochs"][0]["it_per_s"] == pytest.approx(3.0)


def test_non_finite_loss_counted_and_diverged():
    segs = [f"Epoch 1/1: {k:3d}%|#| {k}/100 [00:{k // 2:02d}<00:10, 2.00it/s, loss={v}, lr=1.00e-04]"
            for k, v in [(10, "0.5000"), (20, "0.4000"), (30, "nan"), (40, "0.3000")]]
    res = analyze_log(parse_log("\r" + "\r".join(segs) + "\n"))
    loss = res["loss"]
    assert loss["non_finite"] == 1 and loss["diverged"] is True and loss["trend"] == "diverged"
    assert [20 + 10, None] in loss["points"]
    json.dumps(res, allow_nan=False)


def test_bar_restart_uses_last_run():
    text = ("\rEpoch 1/2:  10%|#| 10/100 [00:20<03:00, 0.50it/s]\n"
            "\rEpoch 1/2:  5%|#| 5/100 [00:02<03:00, 2.50it/s]\n")
    res = analyze_log(parse_log(text))
    assert res["epochs"][0]["steps"] == 5 and res["epochs"][0]["elapsed_s"] == 2
    assert any("restarted" in w for w in res["warnings"])


def test_logging_only_log_has_no_speed():
    text = f"{TS} - __main__ - INFO - Total parameters: 1,000\n{TS} - __main__ - INFO - Using device: cpu\n"
    res = analyze_log(parse_log(text))
    assert res["epochs"] == [] and res["overall"]["it_per_s"] is None and res["overall"]["steady_it_per_s"] is None
    assert res["info"] == {"total_params": 1000, "device": "cpu"}


def test_garbage_after_valid_log_is_cut_off():
    good = build_log(truncated=False)
    lines_good = good.count("\n")
    text = good + "\x00\x01\x02PK\x03\x04 junk \x00\x00\n" + f"{TS} - __main__ - INFO - Total parameters: 999\n"
    p = parse_log(text)
    assert p.stopped_at is not None and p.stopped_at.startswith(f"line {lines_good + 1}:")
    assert "binary" in p.stopped_at
    assert p.info["total_params"] == 12_051_264  # the line after the garbage is not read
    res = analyze_log(p)
    assert [e["steps"] for e in res["epochs"]] == [SPE, E2_STEPS]
    assert res["epochs"][1]["elapsed_s"] == 97


def test_untruncated_log_has_no_stop():
    assert parse_log(build_log(truncated=False)).stopped_at is None


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("text", ["", "   \n\n\t\n"])
def test_empty_log_raises(text):
    with pytest.raises(LogParseError, match="empty"):
        parse_log(text)


def test_binary_with_nul_bytes_raises():
    text = bytes(range(256)).decode("latin-1") * 8
    with pytest.raises(LogParseError, match=r"binary content \(NUL bytes\)"):
        parse_log(text)


def test_binary_without_nul_raises():
    junk = "".join(chr(c) for c in [*range(1, 9), *range(14, 32), *range(0x7F, 0xA0)])
    with pytest.raises(LogParseError, match="non-printable"):
        parse_log((junk * 20 + "\n") * 3)


def test_unrelated_text_raises():
    readme = ("# My project\n\nA tool that does things.\n\n## Install\n\n    pip install my-project\n\n"
              "Batch size: 32 is the default. Epochs: 5.\n2025-11-16 13:41:02 - app - INFO - server started\n")
    with pytest.raises(LogParseError, match="does not look like an H-JEPA training log") as exc:
        parse_log(readme)
    assert "line(s)" in str(exc.value)


def test_a_log_record_is_a_valid_result_record(result):
    """The log's record is built by record.new_record and passes the schema (a log has no data wait:
    null), with the per-interval spread of seconds per step."""
    from hjepa_bench.measure.log_record import log_record, log_values
    from hjepa_bench.record import check_record

    record = log_record(result, log_values(result["info"], None, {}), "train.log")
    check_record(record)
    st = record["metrics"]["step_time_s"]
    assert st["p10"] <= st["p90"] and st["iqr"] >= 0 and record["metrics"]["data_wait_frac"] is None
    assert record["sweep"]["label"] == "log train.log" and record["env"]["fingerprint_id"] == "log:train.log"


# --------------------------------------------------------------------------- stalls and start-up in the verdicts
PS_SPE, PS_RATE, PS_STALL_S, PS_EVERY, PS_STARTUP_S, PS_EPOCHS, PS_BATCH = 1562, 3.0, 30.0, 500, 8.0, 3, 32


def periodic_stall_times(per_epoch: bool) -> list[list[float]]:
    """Exact completion time of every step of each epoch: PS_STARTUP_S of worker start-up, then
    PS_RATE it/s, and a PS_STALL_S stall after every PS_EVERY-th step (of the run, or of each epoch)."""
    out = []
    for epoch in range(PS_EPOCHS):
        off, t, times = epoch * PS_SPE, PS_STARTUP_S, []
        for k in range(1, PS_SPE + 1):
            n_done = k - 1  # the stall comes after step n_done
            if n_done and ((n_done if per_epoch else off + n_done) % PS_EVERY == 0):
                t += PS_STALL_S
            t += 1 / PS_RATE
            times.append(t)
        out.append(times)
    return out


def periodic_stall_log(times: list[list[float]]) -> str:
    """The upstream log of that run: logging lines and one tqdm bar per epoch refreshed every step."""
    text = (f"{TS} - __main__ - INFO - Using device: mps\n"
            f"{TS} - __main__ - INFO - Training dataset size: {PS_SPE * PS_BATCH}\n"
            f"{TS} - __main__ - INFO - Training batches per epoch: {PS_SPE}\n"
            f"{TS} - src.trainers.trainer - INFO - Training for {PS_EPOCHS} epochs\n"
            f"{TS} - src.trainers.trainer - INFO - Starting training...\n")
    for e, ts in enumerate(times, start=1):
        desc = f"Epoch {e}/{PS_EPOCHS}"
        segs = [bar(desc, 0, PS_SPE, 0, None)]
        segs += [bar(desc, k, PS_SPE, int(t), PS_RATE) for k, t in enumerate(ts, start=1)]
        text += "\r" + "\r".join(segs) + "\n"
    return text


@pytest.mark.parametrize("per_epoch", [False, True],
                         ids=["every-500-steps-of-the-run", "every-500-batches-of-an-epoch"])
def test_stalls_and_startup_are_in_the_speed_criterion_and_the_projection(tmp_path, per_epoch):
    """A log at 3 it/s with a 30 s stall every 500 steps and 8 s of start-up per epoch: the criterion's
    it/s is steps / wall time (not the steady 3 it/s), the projection of the logged run lands within its
    band of the run's real time, the steady rate is shown beside it, and the stalls are 'every 500 steps'."""
    from hjepa_bench.analysis.criteria import checklist, success_criteria
    from hjepa_bench.analysis.projection import project_record
    from hjepa_bench.measure.log_record import analyze_log_file
    from hjepa_bench.thresholds import DEFAULTS

    times = periodic_stall_times(per_epoch)
    log = tmp_path / "train.log"
    log.write_text(periodic_stall_log(times))
    la = analyze_log_file(str(log), None, {"data.batch_size": PS_BATCH})
    ov = la.result["overall"]
    steps = PS_EPOCHS * PS_SPE
    truth_s = sum(ts[-1] for ts in times)  # the run's real training time
    assert ov["stall_count"] == 9 and ov["steady_it_per_s"] == pytest.approx(PS_RATE, rel=0.01)
    assert ov["stall_period_steps"] == PS_EVERY

    # the criterion: steps / wall time of the bars, the steady rate beside it
    wall_ips = steps / sum(int(ts[-1]) for ts in times)
    assert la.facts.it_per_s == pytest.approx(wall_ips)
    assert la.facts.it_per_s == pytest.approx(steps / truth_s, rel=0.002)
    perf = next(c for c in success_criteria(la.facts, DEFAULTS) if c["id"] == "performance")
    assert perf["value"] == round(wall_ips, 3) and perf["value"] < 0.9 * PS_RATE
    assert f"{wall_ips:.2f} it/s" in perf["evidence"]
    assert f"steady rate {ov['steady_it_per_s']:.2f} it/s" in perf["evidence"]
    assert la.record["metrics"]["it_per_s"] == pytest.approx(wall_ips)

    # the projection of the logged run (its epochs, its data set) within its band of the real time
    proj = project_record(la.record, epochs=PS_EPOCHS, dataset_size=la.dataset_size)
    assert proj["total_steps"] == steps
    total = proj["total_s"]
    assert total["mid"] == pytest.approx(truth_s, rel=0.002)
    assert total["low"] <= truth_s <= total["high"]

    # the stalls' period in the checklist
    logging = next(i for s in checklist(la.facts, DEFAULTS) for i in s["items"] if "logging" in i["name"])
    assert f"every {PS_EVERY} steps" in logging["evidence"]


def test_log_lr_advice_uses_the_logged_lr_and_says_nothing_in_warmup():
    """The bars' postfix shows the LR the run applied: a log that ends inside its warm-up epoch (1 of 1
    warm-up epochs, lr 2.6e-05 at its last emission) gets no LR advice; past warm-up, the applied LR is named."""
    from hjepa_bench.analysis.log_facts import log_facts

    in_warmup = HEADER + "\r" + "\r".join(epoch_segments(1, SPE)) + "\n"
    f = log_facts(analyze_log(parse_log(in_warmup)), in_warmup, "warm.log")
    assert f.lr == 1e-4 and f.loss_decrease_pct is not None
    assert f.lr_advice == f"in LR warm-up (lr {lr_at(250):.1e} of 1.0e-04): no LR advice"
    assert f.lr_advice_detail["action"] == "none"
    past = build_log()
    f = log_facts(analyze_log(parse_log(past)), past, "past.log")
    assert f.lr_advice_detail["action"] == "keep" and f"{lr_at(450):.1e} applied" in f.lr_advice
