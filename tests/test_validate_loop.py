"""The validation run (hjepa_bench.measure.validation_run): a real, tiny training run on the CPU and its artifacts."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from helpers import tiny_config

from hjepa_bench.errors import UserError
from hjepa_bench.hjepa.model import HJEPA
from hjepa_bench.hjepa.step import HJEPAStep, lr_at
from hjepa_bench.measure.validation_run import ValidationSettings, run_validation
from hjepa_bench.plugin.manager import build_plugins

SPE = 3  # steps per epoch (capped)


def _values(**overrides):
    return tiny_config(**{"bench.synthetic_size": 48, "data.batch_size": 4, **overrides})


@pytest.fixture(scope="module")
def cpu():
    return build_plugins().backends()["cpu"]


def _settings(tmp_path, **kw):
    base = dict(epochs=2, out_dir=tmp_path / "val", feature_n=24, max_steps_per_epoch=SPE, val_max_batches=2)
    base.update(kw)
    return ValidationSettings(**base)


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory, cpu):
    """One real 2-epoch run shared by the tests that only read its result."""
    tmp = tmp_path_factory.mktemp("ok")
    values = _values()
    values["checkpoint"] = {"save_frequency": 2}  # upstream key: epoch checkpoints every 2 epochs
    seen = []
    settings = _settings(tmp, checkpoint_every_epochs=None)
    result = run_validation(values, cpu, settings, progress=False, on_epoch=seen.append)
    return result, settings, seen, values


def test_ok_run_completes_with_consistent_step_arrays(ok_run):
    result, _settings, seen, _ = ok_run
    assert result["status"] == "ok", result["error"]
    assert result["error"] is None
    assert result["epochs_planned"] == 2 and result["epochs_completed"] == 2
    assert result["steps_per_epoch"] == SPE
    steps = result["steps"]
    lengths = {k: len(v) for k, v in steps.items()}
    assert set(lengths.values()) == {2 * SPE}, lengths
    assert steps["global_step"] == list(range(2 * SPE))
    assert steps["epoch"] == [1] * SPE + [2] * SPE
    assert all(math.isfinite(x) for x in steps["loss"] + steps["grad_norm"])
    assert all(t > 0 for t in steps["step_time_s"]) and all(w >= 0 for w in steps["data_wait_s"])
    assert result["config"]["training"]["epochs"] == 2
    assert result["params"]["total"] > result["params"]["trainable"] > 0
    assert result["device"] == "cpu" and result["precision"] == "fp32"
    assert result["peak_memory_bytes"] and result["peak_memory_bytes"] > 0
    assert result["partial_epoch"] is None
    # epoch summaries, also handed to on_epoch in order
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert [e["epoch"] for e in seen] == [1, 2]
    for e in result["epochs"]:
        assert e["steps"] == SPE and e["complete"] is True
        assert e["it_per_s"] == pytest.approx(e["steps"] / e["elapsed_s"])
        assert 0 <= e["data_wait_frac"] <= 1
        assert e["val_batches"] == 2 and math.isfinite(e["val_loss"])
        assert e["train_loss_mean"] == pytest.approx(
            sum(steps["loss"][(e["epoch"] - 1) * SPE: e["epoch"] * SPE]) / SPE)
        assert e["lr_end"] == steps["lr"][e["epoch"] * SPE - 1]


def test_lr_follows_warmup_then_cosine(ok_run):
    result, _, _, values = ok_run
    lrs = result["steps"]["lr"]
    t = values["training"]
    total, warm = 2 * SPE, int(round(float(t["warmup_epochs"]) * SPE))
    assert warm == SPE  # warm-up spans epoch 1 (warmup_epochs 1)
    expected = [lr_at(i, total, warm, float(t["lr"]), float(t["min_lr"])) for i in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[:warm] == sorted(lrs[:warm]) and lrs[warm - 1] == pytest.approx(float(t["lr"]))
    assert lrs[warm:] == sorted(lrs[warm:], reverse=True) and lrs[-1] < lrs[warm]


def test_checkpoints_upstream_layout_and_strict_load(ok_run):
    result, settings, _, _ = ok_run
    ckpt_dir = settings.out_dir / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.iterdir())
    # save_frequency 2 from the config: epoch 2 only; no temp files left behind
    assert names == ["checkpoint_best.pth", "checkpoint_epoch_2.pth", "checkpoint_latest.pth"], names
    kinds = [(c["kind"], c["epoch"]) for c in result["checkpoints"]]
    assert ("latest", 1) in kinds and ("latest", 2) in kinds and ("epoch", 2) in kinds
    assert ("epoch", 1) not in kinds and any(k == "best" for k, _ in kinds)
    for c in result["checkpoints"]:
        assert c["bytes"] > 0 and c["save_s"] > 0
    latest = torch.load(ckpt_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    epoch2 = torch.load(ckpt_dir / "checkpoint_epoch_2.pth", map_location="cpu", weights_only=False)
    assert latest["epoch"] == 2 and latest["global_step"] == 2 * SPE
    assert set(latest) >= {"epoch", "model_state_dict", "optimizer_state_dict", "scaler_state_dict",
                           "best_val_loss", "config"}
    assert latest["scaler_state_dict"] is None  # fp32
    model = HJEPA.from_config(latest["config"])
    model.load_state_dict(latest["model_state_dict"], strict=True)
    for k, v in epoch2["model_state_dict"].items():
        assert torch.equal(v, latest["model_state_dict"][k]), k
    # the optimizer state loads into a fresh AdamW over the trainable parameters
    opt = torch.optim.AdamW(model.trainable_parameters())
    opt.load_state_dict(latest["optimizer_state_dict"])
    assert len(opt.state) == len(model.trainable_parameters())
    best = torch.load(ckpt_dir / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    val_losses = {e["epoch"]: e["val_loss"] for e in result["epochs"]}
    assert best["epoch"] == min(val_losses, key=val_losses.get)
    assert best["best_val_loss"] == pytest.approx(min(val_losses.values()))


def test_validation_json_and_features(ok_run):
    result, settings, _, _ = ok_run
    path = settings.out_dir / "validation.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(result))  # the returned result is JSON-serialisable and written
    assert (settings.out_dir / "config.yaml").is_file()
    feats = result["features"]
    assert [f["epoch"] for f in feats] == [0, 1, 2]  # baseline, then every epoch
    for f in feats:
        assert f["n"] == 24 and f["d"] == 192 and f["rankme"] is not None and f["rankme"] > 1
        assert "collapse" in f


def test_progress_bar_shows_loss_speed_and_eta(tmp_path, cpu, capsys):
    # the efficient variant: masks come from the MaskCollator in the loader
    result = run_validation(_values(**{"bench.variant": "efficient"}), cpu,
                            _settings(tmp_path, epochs=1, features_at_start=False), progress=True)
    err = capsys.readouterr().err
    assert result["status"] == "ok", result["error"]
    assert len(result["steps"]["loss"]) == SPE and [f["epoch"] for f in result["features"]] == [1]
    assert "epoch 1/1" in err and "loss=" in err and "it/s=" in err and "eta=" in err, err


def test_keyboard_interrupt_after_epoch_one(tmp_path, cpu):
    def stop(summary):
        if summary["epoch"] == 1:
            raise KeyboardInterrupt

    settings = _settings(tmp_path, epochs=3, features_at_start=False)
    result = run_validation(_values(), cpu, settings, progress=False, on_epoch=stop)  # does not raise
    assert result["status"] == "interrupted"
    assert result["epochs_completed"] == 1 and len(result["epochs"]) == 1
    assert len(result["steps"]["loss"]) == SPE
    latest = settings.out_dir / "checkpoints" / "checkpoint_latest.pth"
    assert latest.is_file()
    assert torch.load(latest, map_location="cpu", weights_only=False)["global_step"] == SPE
    assert json.loads((settings.out_dir / "validation.json").read_text())["status"] == "interrupted"


def test_keyboard_interrupt_mid_epoch_saves_what_was_trained(tmp_path, cpu, monkeypatch):
    real = HJEPAStep.__call__
    calls = {"n": 0}

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(HJEPAStep, "__call__", step)
    settings = _settings(tmp_path, epochs=2, max_steps_per_epoch=4, features_at_start=False)
    result = run_validation(_values(), cpu, settings, progress=False)
    assert result["status"] == "interrupted"
    assert result["epochs_completed"] == 0 and result["epochs"] == []
    assert len(result["steps"]["loss"]) == 2
    assert result["partial_epoch"]["steps"] == 2 and result["partial_epoch"]["complete"] is False
    latest = settings.out_dir / "checkpoints" / "checkpoint_latest.pth"
    ckpt = torch.load(latest, map_location="cpu", weights_only=False)  # written by the interrupt path
    assert ckpt["global_step"] == 2
    HJEPA.from_config(ckpt["config"]).load_state_dict(ckpt["model_state_dict"], strict=True)
    assert [c["kind"] for c in result["checkpoints"]] == ["latest"]
    assert not [p for p in latest.parent.iterdir() if p.name.endswith(".tmp")]


def test_divergence_stops_and_keeps_steps_and_fallback_warnings(tmp_path, cpu, monkeypatch):
    real = HJEPAStep.__call__

    def step(self, batch):
        out = real(self, batch)
        warnings.warn("aten::foo is not implemented for MPS; it will fall back to run on the CPU")
        if self.global_step >= 3:
            out.loss = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(HJEPAStep, "__call__", step)
    settings = _settings(tmp_path, epochs=3, features_at_start=False)
    result = run_validation(_values(), cpu, settings, progress=False)
    assert result["status"] == "diverged"
    assert "non-finite loss" in result["error"]
    losses = result["steps"]["loss"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses[:2]) and losses[2] is None
    assert all(len(v) == 3 for v in result["steps"].values())
    assert result["epochs_completed"] == 0 and result["partial_epoch"]["steps"] == 3
    assert any("fall back" in w for w in result["fallback_warnings"]), result["fallback_warnings"]
    assert len(result["fallback_warnings"]) == 1  # de-duplicated
    assert json.loads((settings.out_dir / "validation.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("message,status", [("boom", "error"),
                                            ("DefaultCPUAllocator: can't allocate memory", "oom")])
def test_exceptions_become_error_or_oom(tmp_path, cpu, monkeypatch, message, status):
    real = HJEPAStep.__call__

    def step(self, batch):
        if self.global_step == 1:
            raise RuntimeError(message)
        return real(self, batch)

    monkeypatch.setattr(HJEPAStep, "__call__", step)
    result = run_validation(_values(), cpu, _settings(tmp_path, features_at_start=False), progress=False)
    assert result["status"] == status
    assert message in result["error"]
    assert len(result["steps"]["loss"]) == 1


def test_user_error_propagates(tmp_path, cpu):
    with pytest.raises(UserError):  # 48 samples cannot fill one batch of 64
        run_validation(_values(**{"data.batch_size": 64}), cpu, _settings(tmp_path), progress=False)
    with pytest.raises(UserError):
        run_validation(_values(), cpu, _settings(tmp_path, epochs=0), progress=False)


def test_the_validation_record_is_a_valid_result_record(ok_run):
    from hjepa_bench.measure.validation_record import validation_record
    from hjepa_bench.record import check_record

    result = ok_run[0]
    record = validation_record(result, {"backend": "cpu", "device_total_bytes": 1})
    check_record(record)
    assert record["status"] == "ok"
    assert record["metrics"]["batch_size"]["achieved"] == result["config"]["data"]["batch_size"]


def test_the_validation_record_carries_the_full_stability_analysis(tmp_path, cpu):
    """A real run of 2 x 8 steps: the record's stability entry is the stability probe's full analysis
    of its per-step times (spikes, their period, drift), which the report's stability section and the
    speed-variance criterion then read; not a bare CV."""
    from hjepa_bench.analysis.decision_matrix import step_cv_pct
    from hjepa_bench.analysis.stability import analyze_stability
    from hjepa_bench.builtin.probe_stability import StabilitySection
    from hjepa_bench.measure.validation_record import WARMUP_STEPS, validation_record
    from hjepa_bench.record import check_record

    result = run_validation(_values(), cpu, _settings(tmp_path, max_steps_per_epoch=8, feature_n=16,
                                                      features_at_start=False), progress=False)
    assert result["status"] == "ok", result["error"]
    record = validation_record(result, {"backend": "cpu", "device_total_bytes": 1})
    check_record(record)
    stab = record["probes"]["stability"]
    steps = result["steps"]
    whole = [t + w for t, w in zip(steps["step_time_s"], steps["data_wait_s"])]
    assert record["series"]["step_time_s"] == whole and record["series"]["warmup_steps"] == WARMUP_STEPS
    assert stab == {"status": "ok", **analyze_stability(whole, WARMUP_STEPS)}
    assert stab["n"] >= 10 and stab["spike_count"] is not None and stab["spike_threshold_s"] > 0
    assert stab["degradation"]["p_value"] is not None or stab["degradation"]["change_pct"] == 0.0
    assert stab["verdict"] in ("stable", "unstable") and stab["criterion_cv_below_limit"] in ("pass", "fail")
    assert step_cv_pct(record) == stab["cv_pct"]
    md = StabilitySection().render([record])
    assert md is not None and stab["verdict"] in md
