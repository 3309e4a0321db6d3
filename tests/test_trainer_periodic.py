"""The upstream trainer's periodic work (hjepa_bench.hjepa.periodic) and the projections that count it:
the counting rules checked on real tiny validation runs (log_frequency, disabled loggers, best-checkpoint
writes, the TensorBoard event files they write), the validation run's self-check, and the projection of
the measured config's own full run (run, report)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import TINY_FLAGS, run_cli, tiny_config

from hjepa_bench.analysis.periodic import LoggingPlan, periodic_counts
from hjepa_bench.analysis.projection import own_config_projection, project_record
from hjepa_bench.analysis.selfcheck import self_check
from hjepa_bench.hjepa.periodic import collapse_metrics
from hjepa_bench.measure.env import environment_fingerprint
from hjepa_bench.measure.validation_record import WARMUP_STEPS, validation_record
from hjepa_bench.measure.validation_run import ValidationSettings, run_validation
from hjepa_bench.options import config_option
from hjepa_bench.plugin.manager import build_plugins

SPE = 6
EPOCHS = 2


@pytest.fixture(scope="module")
def cpu():
    return build_plugins().backends()["cpu"]


def _run(tmp, cpu, **logging):
    values = tiny_config(**{"bench.synthetic_size": 48, **logging})
    settings = ValidationSettings(epochs=EPOCHS, out_dir=tmp / "val", feature_n=16, max_steps_per_epoch=SPE,
                                  val_max_batches=2, feature_every_epochs=0, features_at_start=False)
    return run_validation(values, cpu, settings, progress=False), settings


@pytest.fixture(scope="module")
def logged(tmp_path_factory, cpu):
    """A real run that logs every step (log_frequency 1) to TensorBoard."""
    return _run(tmp_path_factory.mktemp("logged"), cpu, **{"logging.log_frequency": 1})


@pytest.fixture(scope="module")
def silent(tmp_path_factory, cpu):
    """A real run with TensorBoard (and W&B) disabled, log_frequency 2."""
    return _run(tmp_path_factory.mktemp("silent"), cpu, **{"logging.log_frequency": 2,
                                                           "logging.tensorboard.enabled": False})


def test_counting_rules_match_what_a_real_run_did(logged):
    result, _settings = logged
    assert result["status"] == "ok", result["error"]
    plan = LoggingPlan.from_config(result["config"])
    assert plan == LoggingPlan(log_frequency=1, tensorboard=True, wandb=False)
    expected = periodic_counts(plan, SPE, EPOCHS, levels=2, empty_cache=False)
    did = result["periodic_counts"]
    # every step reads back; batch_idx 0 and 5 log scalars (5 x 1); only batch_idx 0 does histograms
    # (20 x 1) and the collapse metrics (10 x 1); the CPU has no cache to empty
    assert expected["readback"] == did["readback"] == EPOCHS * SPE
    assert expected["postfix"] == did["postfix"] == EPOCHS * SPE
    assert expected["scalar_events"] == did["scalars"] == EPOCHS * 2
    assert expected["histograms"] == did["histograms"] == EPOCHS
    assert expected["collapse"] == did["collapse"] == EPOCHS
    assert expected["empty_cache"] == did["empty_cache"] == 0
    assert did["epoch_scalars"] == EPOCHS


def test_tensorboard_files_hold_what_was_counted(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, settings = logged
    acc = EventAccumulator(str(settings.out_dir / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    model_params = [n for n, p in torch.nn.Module.named_parameters(_model(result)) if p.requires_grad]
    grads = [t for t in tags["histograms"] if t.startswith("gradients/")]
    # one histogram per parameter with a gradient, at batch_idx 0 of each epoch
    assert sorted(grads) == sorted(f"gradients/{n}" for n in model_params)
    assert [e.step for e in acc.Histograms(grads[0])] == [0, SPE]
    # scalars at batch_idx 0 and 5 of each epoch: global steps 0, 5, 6, 11
    assert [e.step for e in acc.Scalars("train/lr")] == [0, 5, SPE, SPE + 5]
    # the collapse metrics of batch_idx 0 join that step's scalars only (upstream's loss_dict.update)
    assert [e.step for e in acc.Scalars("train/context_rank")] == [0, SPE]
    assert len(acc.Scalars("val/loss")) == EPOCHS and len(acc.Scalars("train/hierarchy/level_1_loss")) == 2 * EPOCHS


def _model(result):
    from hjepa_bench.hjepa.model import HJEPA
    return HJEPA.from_config(result["config"])


def test_a_disabled_logger_costs_nothing(silent, logged):
    result, settings = silent
    assert result["status"] == "ok", result["error"]
    assert not (settings.out_dir / "tensorboard").exists()
    did = result["periodic_counts"]
    assert did["scalars"] == 0 and did["histograms"] == 0
    # the collapse metrics run in the step, whatever the loggers: batch_idx 0 of each epoch (10 x 2 > 6)
    assert did["collapse"] == EPOCHS and did["readback"] == EPOCHS * SPE and did["postfix"] == EPOCHS * 3
    # projected with each run's own config, from the same measured costs: the silent config pays no
    # TensorBoard work, the logged one does (count x the measured cost)
    rec = validation_record(logged[0], environment_fingerprint(build_plugins().backends()["cpu"]))
    costs = rec["probes"]["epoch_costs"]["periodic"]
    assert costs["histograms_s"] > 0 and costs["scalar_s"] > 0 and costs["collapse_s"] > 0
    on = project_record(rec, epochs=3, dataset_size=4 * SPE, val_size=8, logging=logged[0]["config"])
    off = project_record(rec, epochs=3, dataset_size=4 * SPE, val_size=8, logging=result["config"])
    assert on["overheads_s"]["histograms"] == pytest.approx(3 * costs["histograms_s"])
    assert off["overheads_s"]["histograms"] == 0.0 and off["overheads_s"]["scalars"] == 0.0
    assert off["overheads_s"]["collapse"] == pytest.approx(3 * costs["collapse_s"])
    assert on["total_s"]["mid"] > off["total_s"]["mid"]
    # W&B cannot be measured here: a config that enables it gets a named lower bound
    wb = project_record(rec, epochs=3, dataset_size=4 * SPE, val_size=8,
                        logging={"logging": {"wandb": {"enabled": True}, "tensorboard": {"enabled": False}}})
    assert wb["lower_bound"] and any("Weights & Biases" in m for m in wb["missing"])


def test_one_save_per_epoch_best_and_epoch_files_are_copies(logged):
    result, _settings = logged
    ck = result["checkpoints"]
    saves = [c for c in ck if c["copy_of"] is None]
    assert [(c["kind"], c["epoch"]) for c in saves] == [("latest", e) for e in range(1, EPOCHS + 1)]
    val = [e["val_loss"] for e in result["epochs"]]
    improved = [i == 0 or v < min(val[:i]) for i, v in enumerate(val)]
    assert [e["best"] for e in result["epochs"]] == improved
    best = [c["epoch"] for c in ck if c["kind"] == "best"]
    assert best == [i + 1 for i, b in enumerate(improved) if b]
    assert all(c["copy_of"] == "checkpoint_latest.pth" for c in ck if c["kind"] == "best")
    # the projection counts one write per epoch (upper bound: every epoch improves) of save + 2 copies
    rec = validation_record(result, environment_fingerprint(build_plugins().backends()["cpu"]))
    p = project_record(rec, epochs=4, dataset_size=4 * SPE, val_size=8, checkpoint_every_epochs=2)
    assert p["overhead_counts"]["checkpoint_writes"] == 4 and p["overhead_counts"]["checkpoint_writes_scheduled"] == 2
    counted = project_record(rec, epochs=4, dataset_size=4 * SPE, val_size=8, checkpoint_every_epochs=2,
                             checkpoint_writes=3)
    assert counted["overheads_s"]["checkpoints"] == pytest.approx(3 / 4 * p["overheads_s"]["checkpoints"])


def test_self_check_projects_from_the_first_steps_and_compares(logged):
    result, _ = logged
    check = result["self_check"]["check"]
    assert check is not None and check["first_steps"] == SPE - WARMUP_STEPS
    assert [r["epoch"] for r in check["epochs"]] == list(range(1, EPOCHS + 1))
    for r in check["epochs"]:
        e = result["epochs"][r["epoch"] - 1]
        assert r["measured_s"] == e["wall_s"] > 0
        assert r["error_pct"] == pytest.approx(100 * (r["projected_s"] - r["measured_s"]) / r["measured_s"])
    run = check["run"]
    assert run["measured_s"] == pytest.approx(result["train_wall_s"])
    assert run["projected_s"] == pytest.approx(sum(r["projected_s"] for r in check["epochs"]))
    assert check["projection"]["missing"] == []
    # the parts add up to the measured epochs
    assert sum(p["measured_s"] for p in check["parts"]) == pytest.approx(sum(e["wall_s"] for e in result["epochs"]))
    # the same function names the cost it did not foresee when a part took far longer than projected
    slow = json.loads(json.dumps(result))
    slow["epochs"][1]["val_s"] += 50.0
    slow["epochs"][1]["wall_s"] += 50.0
    slow["train_wall_s"] += 50.0
    bad = self_check(slow, WARMUP_STEPS)
    assert bad["unforeseen"]["part"] == "validation" and "not foreseen" in bad["unforeseen"]["text"]
    assert bad["epochs"][1]["error_pct"] < -10


def test_collapse_metrics_are_upstream_s():
    torch.manual_seed(0)
    ctx, tgt = torch.randn(4, 16, 8), torch.randn(4, 16, 8)
    m = collapse_metrics(ctx, tgt)
    flat = ctx.reshape(4, -1)
    sv = torch.linalg.svdvals(flat)
    p = sv / sv.sum()
    assert m["context_rank"] == pytest.approx(math.exp(float(-(p * torch.log(p + 1e-8)).sum())), rel=1e-5)
    assert m["context_std"] == pytest.approx(float(flat.std()))
    assert m["target_norm"] == pytest.approx(float(tgt.reshape(4, -1).norm(dim=1).mean()))
    # only the first 100 rows go into the SVD
    big = collapse_metrics(torch.randn(150, 3), torch.randn(150, 3))
    assert 1.0 <= big["context_rank"] <= 3.0


def test_validation_option_projects_the_run_it_ran(logged):
    """Option V is projected for the run that ran (its own train set size and steps per epoch),
    not for a default data set size."""
    result, _ = logged
    rec = validation_record(result, environment_fingerprint(build_plugins().backends()["cpu"]))
    v = dict(result["config"])
    opt = config_option(v, "V", "this validation run", dataset_size=result["train_size"], val_size=result["val_size"])
    from hjepa_bench.analysis.decision_matrix import evaluate_option
    from hjepa_bench.thresholds import DEFAULTS
    row = evaluate_option(opt, [rec], DEFAULTS)[0]
    assert result["train_size"] == SPE * 4 and result["val_size"] == 2 * 4
    assert row["projection"]["steps_per_epoch"] == SPE and row["projection"]["epochs"] == EPOCHS


def test_run_prints_and_report_shows_the_own_config_projection(tmp_path):
    rec_path = tmp_path / "sweep" / "results.jsonl"
    rec_path.parent.mkdir()
    res = run_cli("run", *TINY_FLAGS, "--probes", "epoch_costs", "--dataset-size", "1280", "--val-size", "256",
                  "--json", str(tmp_path / "r.json"), "--trace-dir", str(tmp_path / "traces"))
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("this config:"))
    # quick_val's 5 epochs of 1,280 images at batch 4
    assert line.startswith("this config: 5 epochs x 320 steps -> ")
    assert "of which logging" in line and "validation" in line
    rec = json.loads((tmp_path / "r.json").read_text())
    p = own_config_projection(rec)
    assert p["steps_per_epoch"] == 320 and p["val_size"] == 256 and p["missing"] == []
    rec_path.write_text(json.dumps(rec) + "\n")
    res = run_cli("report", str(rec_path.parent), "--no-charts")
    assert res.returncode == 0, res.stderr
    md = (rec_path.parent / "report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| this ") and "b4" in ln and "320" in ln)
    assert "| 5 " in row
