"""The feature-quality metrics on constructed embeddings, and the ``features`` probe on the
real (tiny) H-JEPA model on the CPU."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import tiny_config

from hjepa_bench.analysis import features as F
from hjepa_bench.analysis.features import feature_quality
from hjepa_bench.builtin import probe_features
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.builtin.workload_hjepa import HJEPAWorkload
from hjepa_bench.hjepa.model import HJEPA
from hjepa_bench.measure.runner import run_benchmark
from hjepa_bench.plugin.api import RunContext
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import check_record, new_record

D = 192


def _json_strict(value) -> str:
    return json.dumps(value, allow_nan=False)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- pure metrics
def test_healthy_gaussian_has_no_flags():
    q = feature_quality(_rng().standard_normal((4 * D, D)))
    assert q["n"] == 4 * D and q["d"] == D and q["n_over_d"] == 4.0
    assert q["rankme_ratio"] > 0.9 and q["rankme_centred_ratio"] > 0.9
    assert q["collapse"] == {"low_rank": False, "low_variance": False, "all_alike": False, "collapsed": False}
    assert q["warnings"] == []
    assert abs(q["std_mean"] - 1 / math.sqrt(D)) < 0.1 / math.sqrt(D)  # healthy ~1/sqrt(D)
    assert 0.9 < q["std_mean_rel"] < 1.1 and q["std_below_floor_frac"] == 0.0
    assert abs(q["mean_cosine"]) < 0.01
    assert -4.2 < q["uniformity"] < -3.5  # about -4 when uniform in high dimension
    assert q["effective_rank_source"] == "centred"
    _json_strict(q)


def test_dimensional_collapse_is_low_rank():
    rng = _rng(1)
    z = rng.standard_normal((4 * D, 5)) @ rng.standard_normal((5, D))  # rank 5 in D = 192
    q = feature_quality(z)
    assert q["collapse"]["low_rank"] and q["collapse"]["collapsed"]
    assert q["rankme_centred"] < 5.5 and q["effective_rank"] < F.LOW_RANK_FRAC * D


def test_complete_collapse_is_all_alike_and_low_rank():
    rng = _rng(2)
    z = rng.standard_normal(D) + 1e-4 * rng.standard_normal((4 * D, D))  # one vector + tiny noise
    q = feature_quality(z)
    flags = q["collapse"]
    assert flags["all_alike"] and flags["low_rank"] and flags["low_variance"] and flags["collapsed"]
    assert q["mean_cosine"] > 0.999 and q["rankme"] < 2
    assert q["effective_rank_source"].startswith("uncentred")  # centred spectrum is only noise
    assert q["uniformity"] > -0.01


def test_shared_offset_lowers_uncentred_rankme_only():
    rng = _rng(3)
    base = rng.standard_normal((4 * D, D))
    plain = feature_quality(base)
    shifted = feature_quality(base + 5.0 * rng.standard_normal(D))
    assert shifted["rankme"] < 0.5 * plain["rankme"]
    assert shifted["rankme_centred_ratio"] > 0.9
    assert abs(shifted["rankme_centred"] - plain["rankme_centred"]) < 1e-6 * D  # centring removes it exactly


def test_thresholds_are_in_the_entry():
    t = feature_quality(_rng().standard_normal((64, 8)))["thresholds"]
    assert t["low_rank_frac"] == F.LOW_RANK_FRAC and t["all_alike_cosine"] == F.ALL_ALIKE_COSINE
    assert t["std_floor"] == pytest.approx(F.STD_FLOOR_REL / math.sqrt(8))
    assert t["min_n_over_d"] == F.MIN_N_OVER_D and t["low_variance_dim_frac"] == F.LOW_VARIANCE_DIM_FRAC


def test_too_few_samples_warns():
    q = feature_quality(_rng().standard_normal((2 * D, D)))
    assert any("RankMe is unreliable" in w for w in q["warnings"])


def test_rankme_of_equal_singular_values_is_d():
    assert F.rankme(np.eye(16)) == pytest.approx(16, rel=1e-4)
    assert F.rankme(np.outer(np.ones(10), np.arange(1.0, 7.0))) == pytest.approx(1.0, rel=1e-4)


def test_mean_cosine_and_uniformity_match_brute_force():
    zn = F.l2_normalise(_rng(4).standard_normal((50, 6)) + 0.5)
    cos = zn @ zn.T
    brute_cos = (cos.sum() - np.trace(cos)) / (50 * 49)
    assert F.mean_cosine(zn) == pytest.approx(brute_cos, rel=1e-10)
    iu = np.triu_indices(50, k=1)
    d2 = np.sum((zn[:, None, :] - zn[None, :, :]) ** 2, axis=-1)[iu]
    assert F.uniformity(zn) == pytest.approx(math.log(np.mean(np.exp(-2 * d2))), rel=1e-10)


def test_uniformity_subsample_is_deterministic():
    zn = F.l2_normalise(_rng(5).standard_normal((F.UNIFORMITY_MAX_ROWS + 300, 8)))
    assert F.uniformity(zn) == F.uniformity(zn)


def test_non_finite_features_give_no_metrics_and_valid_json():
    z = _rng().standard_normal((64, 8))
    z[3, 2] = np.nan
    q = feature_quality(z)
    assert q["finite"] is False and q["rankme"] is None and q["collapse"]["collapsed"] is None
    _json_strict(q)


def test_accepts_torch_tensors_and_rejects_bad_shapes():
    q = feature_quality(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))
    assert isinstance(q["rankme"], float) and isinstance(q["collapse"]["collapsed"], bool)
    with pytest.raises(ValueError):
        feature_quality(np.zeros(5))
    with pytest.raises(ValueError):
        feature_quality(np.zeros((1, 5)))


# --------------------------------------------------------------------------- the probe
class _Workload:
    """The part of a PreparedWorkload the probe uses."""

    def __init__(self, model):
        self._model = model

    def model(self):
        return self._model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return HJEPA.from_config(tiny_config())


def _ctx(model, **overrides) -> RunContext:
    return RunContext(config=tiny_config(**overrides), backend=CPUBackend(), workload=_Workload(model),
                      env={"backend": "cpu"})


def test_features_n_default_and_override():
    assert probe_features.features_n({"bench": {}}, 192) == 768
    assert probe_features.features_n({"bench": {}}, 32) == 256
    assert probe_features.features_n({"bench": {"features_n": 100}}, 192) == 100
    with pytest.raises(ValueError):
        probe_features.features_n({"bench": {"features_n": 1}}, 192)


def test_probe_measures_the_target_encoder(tiny_model):
    tiny_model.train()
    ctx = _ctx(tiny_model, **{"bench.features_n": 96})
    record = new_record(ctx.config, ctx.env)
    entry = probe_features.FeaturesProbe().finish(ctx, record)
    assert entry["measured"] is True
    assert entry["n_images"] == 96 and entry["n"] == 96 and entry["d"] == D
    assert entry["extract_s"] > 0 and entry["forward_s"] > 0 and entry["metrics_s"] > 0
    assert entry["extract_s"] >= entry["forward_s"]
    assert entry["rankme"] is not None and 1 <= entry["rankme"] <= 96
    assert set(entry["collapse"]) == {"low_rank", "low_variance", "all_alike", "collapsed"}
    assert any("RankMe is unreliable" in w for w in entry["warnings"])  # 96 < 4 * 192
    assert "initialisation" in entry["note"]
    assert tiny_model.target_encoder.training  # mode restored
    _json_strict(entry)


def test_probe_without_model_says_why():
    entry = probe_features.FeaturesProbe().finish(_ctx(None), {})
    assert entry["measured"] is False and "no model" in entry["reason"]


def test_plugin_registers_a_costly_probe_and_a_section():
    plugins = build_plugins(objects=[("probe_features_test", probe_features)])
    probe = plugins.probes()["features"]
    assert probe.cost == "costly"
    assert "features" not in [p.name for p in plugins.select_probes(None)]
    assert "features" in [s.name for s in plugins.report_sections()]


def test_probe_in_a_real_run_and_the_report_section():
    config = tiny_config(**{"bench.features_n": 64, "bench.max_steps": 3})
    record = run_benchmark(config, CPUBackend(), HJEPAWorkload(), [probe_features.FeaturesProbe()],
                           {"backend": "cpu", "device_name": "test cpu"})
    check_record(record)
    entry = record["probes"]["features"]
    assert record["status"] == "ok" and entry["status"] == "ok" and entry["measured"] is True
    assert entry["steps_trained"] == len(record["series"]["step_time_s"]) >= 3
    _json_strict(entry)

    section = probe_features.FeaturesSection()
    assert section.render([]) is None
    assert section.render([new_record(config, {})]) is None
    no_model = new_record(config, {"backend": "cpu"})
    no_model["probes"]["features"] = {"status": "ok", "measured": False, "reason": "the workload has no model"}
    text = section.render([record, no_model])
    assert "RankMe/D" in text and "test cpu" in text and "not measured" in text
    assert f"< {F.LOW_RANK_FRAC:g} D" in text
