"""Projections, decision rules, recommendations and criteria on hand-made records with known answers."""
from __future__ import annotations

import pytest
from records_factory import COSTS, FULL_COSTS, GIB, GOOD_LOSS, make_record, option_values, quick_val_values

from hjepa_bench.analysis.criteria import FAIL, NOT_MEASURED, PASS, Facts, checklist, success_criteria
from hjepa_bench.analysis.decision_matrix import (
    decide,
    evaluate_option,
    judge,
    recommend_batch,
    recommend_lr,
    recommend_warmup,
    recommend_workers,
    warmup_range,
)
from hjepa_bench.analysis.projection import mean_band, project, project_record
from hjepa_bench.errors import UserError
from hjepa_bench.options import guide_options, load_options
from hjepa_bench.thresholds import DEFAULTS, load_thresholds

OPTS = {o.name: o for o in guide_options()}


# --------------------------------------------------------------------------- projections
def test_projection_arithmetic_counts_steps_and_per_epoch_costs():
    rec = make_record(option_values("A"), it_per_s=2.0, epoch_costs=FULL_COSTS)
    p = project_record(rec, epochs=20, dataset_size=50_000, val_size=10_000, checkpoint_every_epochs=5)
    assert p["steps_per_epoch"] == 1562 and p["total_steps"] == 31_240
    assert p["train_s"]["mid"] == pytest.approx(31_240 / 2.0)
    ov = p["overheads_s"]
    # 20 train-loader starts + 20 validation-loader starts, 2 s each
    assert ov["worker_startup"] == pytest.approx(40 * 2.0)
    # 20 passes x ceil(10000 / 32) = 313 steps x 0.1 s
    assert ov["validation"] == pytest.approx(20 * 313 * 0.1)
    # upper bound: the validation loss improves every epoch, so every epoch writes (save + 2 copies)
    assert ov["checkpoints"] == pytest.approx(20 * 0.6)
    assert p["overhead_counts"]["checkpoint_writes_scheduled"] == 4
    # option A logs every 50 steps with TensorBoard on, 2 levels, on a CPU (no empty_cache):
    # read-backs every step + postfix at batch_idx 0, 50, ..., 1550 (32 per epoch)
    assert ov["readbacks"] == pytest.approx(31_240 * 0.001 + 20 * 32 * 0.002)
    # scalars at batch_idx 0, 250, ..., 1500 (7 per epoch), 2 + 3 + 4 values each, the 6 collapse
    # metrics at batch_idx 0, 500, 1000, 1500, 5 more per epoch end
    assert ov["scalars"] == pytest.approx((140 * 9 + 80 * 6 + 20 * 5) * 0.0001 + 140 * 0.001)
    assert ov["histograms"] == pytest.approx(20 * 2 * 1.0)  # batch_idx 0 and 1000
    assert ov["collapse"] == pytest.approx(20 * 4 * 0.2)  # batch_idx 0, 500, 1000, 1500
    assert ov["empty_cache"] == 0.0
    # warm-up excess (3 + 2 steps of 0.5 s against 2 steady ones: 1.5 s) + model build 2 s
    assert ov["one_time"] == pytest.approx(1.5 + 2.0)
    fixed = 80 + 626 + 12 + 31.24 + 1.28 + 0.324 + 40 + 16 + 3.5
    assert p["total_s"]["mid"] == pytest.approx(15_620 + fixed)
    assert p["hours"]["mid"] == pytest.approx((15_620 + fixed) / 3600)
    assert p["lower_bound"] is False and p["missing"] == []
    assert p["hours"]["low"] < p["hours"]["mid"] < p["hours"]["high"]


def test_projection_without_epoch_costs_is_a_named_lower_bound():
    rec = make_record(option_values("A"), it_per_s=4.0)
    p = project_record(rec, epochs=10, dataset_size=1000)
    assert p["steps_per_epoch"] == 31 and p["total_steps"] == 310
    assert p["total_s"]["mid"] == pytest.approx(310 / 4.0 + 1.5 / 2)  # + the warm-up excess, measured
    assert p["lower_bound"] is True
    assert set(p["missing"]) == {"worker start-up", "validation pass", "checkpoint writes",
                                 "trainer's periodic work (read-backs, TensorBoard, collapse metrics)"}


def test_persistent_workers_pay_startup_once_and_checkpoint_count_rounds_up():
    p = project(sec_per_step={"mid": 1.0, "low": None, "high": None}, batch_size=10, epochs=7, dataset_size=100,
                costs={**COSTS, "paid_every_epoch": False, "worker_startup_every_epoch": False, "val_batch_size": 10},
                val_size=20, val_every_epochs=1, checkpoint_every_epochs=5)
    assert p["overhead_counts"]["worker_startups"] == 1 + 7
    # every epoch may improve the validation loss: 7 writes (epoch 5 is also scheduled)
    assert p["overhead_counts"]["checkpoint_writes"] == 7
    assert p["overhead_counts"]["checkpoint_writes_scheduled"] == 1
    assert p["overheads_s"]["validation"] == pytest.approx(7 * 2 * 0.1)
    # without validation there is no best checkpoint: only the scheduled write
    q = project(sec_per_step={"mid": 1.0, "low": None, "high": None}, batch_size=10, epochs=7, dataset_size=100,
                costs=COSTS, val_size=0, checkpoint_every_epochs=5)
    assert q["overhead_counts"]["checkpoint_writes"] == 1


def test_band_is_the_bootstrap_interval_of_the_mean():
    times = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.3, 0.7] * 4
    mean, lo, hi = mean_band(times)
    assert mean == pytest.approx(1.0)
    assert lo < 1.0 < hi and hi - lo < 0.3
    assert mean_band([2.0]) == (2.0, None, None)
    assert mean_band([]) == (None, None, None)


# --------------------------------------------------------------------------- option matching
def test_an_option_is_projected_only_from_its_own_model_config():
    # quick_val (predictor depth 2) is not option A (depth 4); B's ViT-Small is never scaled from Tiny
    recs = [make_record(quick_val_values(), it_per_s=3.0, epoch_costs=COSTS)]
    rows = evaluate_option(OPTS["A"], recs, DEFAULTS)
    assert rows[0]["measured"] is False and "hours" not in rows[0]
    rows_b = evaluate_option(OPTS["B"], recs + [make_record(option_values("A"), it_per_s=3.0)], DEFAULTS)
    assert rows_b[0]["measured"] is False
    # the efficient variant does not measure an option (upstream runs the reference step)
    eff = make_record(option_values("A", **{"bench.variant": "efficient"}), it_per_s=9.0)
    assert evaluate_option(OPTS["A"], [eff], DEFAULTS)[0]["measured"] is False


def _rows(recs, budget=None, validation=None, th=DEFAULTS):
    rows = []
    for opt in guide_options():
        for row in evaluate_option(opt, recs, th, budget):
            rows.append(judge(row, th, validation))
    return rows


def _tiny_and_small(tiny_ips, small_ips, **small_kw):
    return [make_record(option_values("A"), it_per_s=tiny_ips, epoch_costs=COSTS),
            make_record(option_values("B"), it_per_s=small_ips, epoch_costs={**COSTS, "val_batch_size": 24},
                        **small_kw)]


def test_B_is_recommended_when_it_is_stable_and_fits_the_budget():
    # B: 100 x 2083 steps at 5 it/s = 11.6 h; budget 14 h
    d = decide(_rows(_tiny_and_small(8.0, 5.0), budget=14))
    assert d["per_machine"][0]["recommended"] == "B"


def test_C_when_B_does_not_fit_but_C_does():
    # B at 2 it/s = 29 h > 8 h; C: 50 x 1562 at 4 it/s = 5.4 h
    d = decide(_rows(_tiny_and_small(4.0, 2.0), budget=8))
    assert d["per_machine"][0]["recommended"] == "C"


def test_A_when_only_the_20_epoch_run_fits():
    # A: 20 x 1562 at 4 it/s = 2.2 h + costs; C = 5.4 h > 3 h
    d = decide(_rows(_tiny_and_small(4.0, 2.0), budget=3))
    assert d["per_machine"][0]["recommended"] == "A"


def test_without_budget_each_option_is_judged_against_its_own_window():
    # 3.5 it/s: A = 2.7 h with costs (window 2-3), C = 6.7 h (6-7), B at 1.2 it/s = 48 h (12-14)
    d = decide(_rows(_tiny_and_small(3.5, 1.2)))
    assert d["per_machine"][0]["recommended"] == "C"
    rows = {r["option"]: r for r in _rows(_tiny_and_small(3.5, 1.2))}
    assert rows["A"]["fits"] and rows["C"]["fits"] and not rows["B"]["fits"]
    # at the guide's 3.2 it/s the per-epoch costs push C (6.8 h of steps) over its 7 h window
    rows = {r["option"]: r for r in _rows(_tiny_and_small(3.2, 1.2))}
    assert rows["C"]["projection"]["train_s"]["mid"] / 3600 < 7 < rows["C"]["hours"]
    assert decide(list(rows.values()))["per_machine"][0]["recommended"] == "A"


def test_a_slow_short_option_never_promotes_a_longer_one():
    # the upstream analyzer's inverted rule: a slow 20-epoch projection led to recommending 100 epochs
    d = decide(_rows(_tiny_and_small(0.2, 0.1), budget=10))
    assert d["per_machine"][0]["recommended"] is None
    assert "never chosen because a shorter one is too slow" in d["per_machine"][0]["reasons"][0]


def test_unstable_or_collapsed_options_are_not_eligible():
    recs = _tiny_and_small(8.0, 5.0, stability_cv_pct=35.0)
    rows = {r["option"]: r for r in _rows(recs, budget=14)}
    assert rows["B"]["eligible"] is False and any("unstable" in x for x in rows["B"]["reasons"])
    assert decide(list(rows.values()))["per_machine"][0]["recommended"] == "C"
    collapsed = _tiny_and_small(8.0, 5.0, features={"collapse": {"collapsed": True, "low_rank": True}})
    assert decide(_rows(collapsed, budget=14))["per_machine"][0]["recommended"] == "C"


def test_a_diverged_validation_blocks_every_option():
    d = decide(_rows(_tiny_and_small(8.0, 5.0), budget=14, validation={"diverged": True}))
    assert d["per_machine"][0]["recommended"] is None


def test_a_real_validation_loss_that_fell_too_little_blocks_but_a_preliminary_one_does_not():
    v = {"loss_decrease_pct": 5.0, "loss_preliminary": False}
    assert decide(_rows(_tiny_and_small(8.0, 5.0), budget=14, validation=v))["per_machine"][0]["recommended"] is None
    v["loss_preliminary"] = True
    assert decide(_rows(_tiny_and_small(8.0, 5.0), budget=14, validation=v))["per_machine"][0]["recommended"] == "B"


def test_each_machine_gets_its_own_row_and_decision():
    cuda_a = option_values("A")
    cuda_a["bench"]["precision"] = "fp16"  # what option A's use_amp gives on CUDA
    recs = _tiny_and_small(8.0, 5.0) + [make_record(cuda_a, it_per_s=0.5, fingerprint="slow", backend="cuda",
                                                    epoch_costs=COSTS)]
    # the same config at fp32 on CUDA is not what option A would run there
    fp32 = make_record(option_values("A"), it_per_s=1.0, fingerprint="slow", backend="cuda")
    assert evaluate_option(OPTS["A"], [fp32], DEFAULTS)[0]["measured"] is False
    rows = _rows(recs, budget=14)
    assert len([r for r in rows if r["option"] == "A"]) == 2
    per = {d["machine"]: d["recommended"] for d in decide(rows)["per_machine"]}
    assert per["cpu (Test CPU)"] == "B" and per["cuda (Test CPU)"] is None


# --------------------------------------------------------------------------- batch, workers, lr, warm-up
def _at(batch, workers, sps, peak=2 * GIB, wait=0.01):
    v = quick_val_values(**{"data.batch_size": batch, "data.num_workers": workers})
    return make_record(v, it_per_s=sps / batch, peak_bytes=peak, data_wait_frac=wait)


def test_batch_is_the_largest_that_fits_and_still_gains():
    recs = [_at(16, 4, 100), _at(32, 4, 120), _at(48, 4, 123), _at(64, 4, 200, peak=31 * GIB)]
    b = recommend_batch(recs, DEFAULTS)
    # 32 gains 20% over 16; 48 gains 2.5% (< 5%); 64 does not fit in 90% of 32 GiB
    assert b["batch"] == 32 and b["measured_counts"] == 4


def test_workers_are_the_fewest_within_a_few_percent_of_the_best():
    recs = [_at(32, 2, 100), _at(32, 4, 120), _at(32, 6, 122), _at(32, 8, 121)]
    w = recommend_workers(recs, 32, DEFAULTS)
    assert w["workers"] == 4 and w["more_needed"] is False
    starving = [_at(32, 2, 50, wait=0.5), _at(32, 4, 80, wait=0.3)]
    w2 = recommend_workers(starving, 32, DEFAULTS)
    # still data-bound at the most workers measured: the one advice is more workers (the guide's 6-8)
    assert w2["measured_choice"] == 4 and w2["workers"] == 6 and w2["more_needed"] is True
    assert "still data-bound with 4 workers" in w2["reason"] and "(not measured)" in w2["reason"]


def test_warmup_and_lr_follow_the_guide_rules():
    assert warmup_range(20) == (2, 4) and warmup_range(100) == (5, 10)
    assert recommend_warmup(4, 20, 0)["warmup_epochs"] == 4
    assert recommend_warmup(2, 20, 3)["warmup_epochs"] == 4  # spikes: the long end
    assert recommend_warmup(1, 100, None)["warmup_epochs"] == 5  # clamped into 5-10
    keep = recommend_lr(1.5e-4, GOOD_LOSS["lr_advice"], 1e-4)
    assert keep["lr"] == 1.5e-4
    noisy = recommend_lr(1.5e-4, {"action": "decrease", "suggested_lr": 5e-5, "trigger": "noise 15% > 10%"}, 1e-4)
    assert noisy["lr"] == pytest.approx(7.5e-5)
    assert recommend_lr(1.5e-4, None, None)["lr"] == 1.5e-4


# --------------------------------------------------------------------------- criteria and checklist
def test_criteria_pass_fail_and_not_measured_carry_their_numbers():
    f = Facts(source="log", subject="x", crashed=False, non_finite=False, epochs_planned=5, epochs_completed=5,
              it_per_s=2.6, step_cv_pct=12.0, loss_start=1.0, loss_end=0.7, loss_decrease_pct=30.0,
              diverged=False, warmup_spikes=0, loss_points=50)
    c = {v["id"]: v for v in success_criteria(f, DEFAULTS)}
    assert c["stability"]["status"] == PASS and c["performance"]["status"] == PASS
    assert c["learning"]["status"] == PASS and "30.0%" in c["learning"]["evidence"]
    assert c["quality"]["status"] == NOT_MEASURED
    f.it_per_s, f.epochs_completed = 2.4, 3
    c = {v["id"]: v for v in success_criteria(f, DEFAULTS)}
    assert c["performance"]["status"] == FAIL and "2.40 it/s" in c["performance"]["evidence"]
    assert c["stability"]["status"] == FAIL and "3 of 5 epochs" in c["stability"]["evidence"]
    f.collapse = {"low_rank": True, "collapsed": True, "effective_rank": 5.0, "d": 192, "rankme_ratio": 0.02,
                  "mean_cosine": 0.99}
    assert {v["id"]: v for v in success_criteria(f, DEFAULTS)}["quality"]["status"] == FAIL
    sections = checklist(f, DEFAULTS)
    assert [s["section"] for s in sections] == ["Training Stability", "Performance Acceptable", "Model Learning",
                                                "System Optimization"]
    items = {i["name"]: i for s in sections for i in s["items"]}
    assert items["Training speed >= 2.5 it/s (minimum)"]["status"] == FAIL
    assert items["MPS compatibility confirmed"]["status"] == NOT_MEASURED


def test_thresholds_come_from_one_place_and_can_be_changed(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("min_it_per_s: 0.5\nmax_step_cv_pct: 30\n")
    th = load_thresholds(p)
    assert th.min_it_per_s == 0.5 and th.max_step_cv_pct == 30.0 and th.min_loss_decrease_pct == 20.0
    f = Facts(source="log", subject="x", it_per_s=1.0, step_cv_pct=25.0, crashed=False, non_finite=False)
    assert {v["id"]: v for v in success_criteria(f, th)}["performance"]["status"] == PASS
    assert {v["id"]: v for v in success_criteria(f, DEFAULTS)}["performance"]["status"] == FAIL
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_its: 1\n")
    with pytest.raises(UserError, match="unknown names: min_its"):
        load_thresholds(bad)


def test_thresholds_are_frozen_and_copied_with_changes(tmp_path):
    """A Thresholds is frozen and hashable; a changed copy leaves the defaults alone; the first bad
    value of a file (in file order) is the one reported, with its domain."""
    from pydantic import ValidationError

    th = DEFAULTS.model_copy(update={"dataset_size": 60_000})
    assert (th.dataset_size, DEFAULTS.dataset_size) == (60_000, 50_000) and hash(th) != hash(DEFAULTS)
    with pytest.raises(ValidationError):
        DEFAULTS.val_size = 5
    p = tmp_path / "t.yaml"
    p.write_text("min_it_per_s: 2\nval_size: -1\nconfidence: 2\n")
    in_domain = r"threshold val_size in .* must be a whole number in \[0, 1e\+09\], not -1\.$"
    with pytest.raises(UserError, match=in_domain):
        load_thresholds(p)
    p.write_text("min_it_per_s: 2\n")
    assert load_thresholds(p).min_it_per_s == 2.0 and isinstance(load_thresholds(p).min_it_per_s, float)


def test_user_options_file(tmp_path):
    p = tmp_path / "opts.yaml"
    p.write_text("options:\n  - name: D\n    title: Small 30 epochs\n    hours: [4, 6]\n    priority: 5\n"
                 "    model: {encoder_type: vit_small_patch16_224, embed_dim: 384, num_hierarchies: 2}\n"
                 "    training: {epochs: 30, warmup_epochs: 3}\n")
    opts = {o.name: o for o in load_options(p)}
    assert set(opts) == {"A", "B", "C", "D"}
    assert opts["D"].epochs == 30 and opts["D"].hours == (4.0, 6.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("options:\n  - name: E\n    model: {encoder_typo: x}\n")
    with pytest.raises(UserError, match="option E"):
        load_options(bad)


def test_preliminary_lr_advice_is_reported_but_not_applied():
    advice = {"action": "increase", "suggested_lr": 1.5e-4, "trigger": "decrease 1.5% < 20%"}
    r = recommend_lr(1.5e-4, advice, 1e-4, preliminary=True)
    # no validation run: the option's own LR, one base LR named
    assert r["lr"] == 1.5e-4 and "no validation run" in r["reason"] and "1.0e-04" not in r["reason"]
    assert recommend_lr(1.5e-4, advice, 1e-4, preliminary=False)["lr"] == pytest.approx(2.25e-4)
    diverging = {"action": "decrease", "suggested_lr": 1e-5, "trigger": "diverged"}
    assert recommend_lr(1.5e-4, diverging, 1e-4, preliminary=True)["lr"] == pytest.approx(1.5e-5)


def test_model_speed_ratios_compare_time_per_sample_across_batches():
    from hjepa_bench.analysis.decision_matrix import model_speed_ratios

    tiny = make_record(option_values("A"), it_per_s=0.2)  # b32: 6.4 samples/s
    small = make_record(option_values("B"), it_per_s=0.1)  # b24: 2.4 samples/s
    ratios = {r["model"]: r for r in model_speed_ratios([tiny, small])}
    assert ratios["vit_small L3 P6"]["slowdown_vs_fastest"] == pytest.approx(6.4 / 2.4)
    assert ratios["vit_tiny L2 P4"]["slowdown_vs_fastest"] == pytest.approx(1.0)


def test_a_benchmarks_preliminary_loss_is_shown_but_not_judged():
    f = Facts(source="sweep", subject="x", crashed=False, non_finite=False, loss_start=3.0, loss_end=2.95,
              loss_decrease_pct=1.5, loss_trend="flat", diverged=False, loss_points=12, loss_preliminary=True)
    c = {v["id"]: v for v in success_criteria(f, DEFAULTS)}
    assert c["learning"]["status"] == NOT_MEASURED and "1.5%" in c["learning"]["evidence"]
    f.diverged = True
    assert {v["id"]: v for v in success_criteria(f, DEFAULTS)}["learning"]["status"] == FAIL


def test_a_logs_own_values_win_and_flags_fill_the_gaps():
    from hjepa_bench.measure.log_record import log_values

    v = log_values({"batch_size": 32, "encoder_type": "vit_small"}, None,
                   {"data.batch_size": 64, "training.epochs": 20})
    assert v["data"]["batch_size"] == 32  # printed by the log
    assert v["model"]["encoder_type"] == "vit_small_patch16_224"
    assert v["training"]["epochs"] == 20  # not printed: the flag


def test_an_option_is_resolved_once(monkeypatch):
    from hjepa_bench import options

    calls = []
    real = options.resolve_config
    monkeypatch.setattr(options, "resolve_config", lambda *a, **k: calls.append(1) or real(*a, **k))
    opt = options.guide_options()[0]
    first = opt.values()
    first["training"]["epochs"] = -1  # callers get a copy
    assert opt.epochs == 20 and opt.describe() and opt.checkpoint_every_epochs() == 5 and len(calls) == 1
