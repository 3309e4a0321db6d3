"""Pure statistics and the result-record schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hjepa_bench import stats
from hjepa_bench.record import SCHEMA_VERSION, RecordError, check_record, write_json


def test_summarize_known_values():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0 and s["n"] == 5 and s["min"] == 1.0 and s["max"] == 5.0
    assert s["iqr"] == pytest.approx(2.0)
    assert s["cv"] == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1) / 3.0)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)
    assert stats.summarize([])["median"] is None


def test_median_ci_covers_the_true_median():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        x = rng.exponential(1.0, 60)
        lo, hi = stats.median_ci(x)
        hits += lo <= np.log(2) <= hi
    assert 0.90 < hits / 400 <= 1.0


def test_relative_precision_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    small = stats.relative_precision(1 + 0.1 * rng.standard_normal(20))
    large = stats.relative_precision(1 + 0.1 * rng.standard_normal(2000))
    assert large < small and large < 0.01
    assert stats.relative_precision([1.0, 2.0]) == float("inf")


def test_spread_warning():
    assert stats.spread_warning(stats.summarize([1.0] * 10)) is None
    assert "IQR" in stats.spread_warning(stats.summarize([1.0, 1.0, 2.0, 2.0]))


def _record(**kw):
    from records_factory import quick_val_values

    r = {"schema_version": SCHEMA_VERSION, "status": "ok", "config": quick_val_values(), "env": {"backend": "cpu"},
         "params": {"total": 1, "trainable": 1},
         "metrics": {"it_per_s": 1.0, "samples_per_s": 8.0, "data_wait_frac": 0.1, "peak_device_bytes": 10,
                     "step_time_s": {"median": 1.0, "iqr": 0.1, "cv": 0.1, "p10": 0.9, "p90": 1.1, "n": 5}},
         "probes": {}}
    r.update(kw)
    return r


def test_validate_record():
    check_record(_record())
    check_record(_record(status="oom", metrics={}))
    with pytest.raises(RecordError, match="status"):
        check_record(_record(status="fine"))
    with pytest.raises(RecordError, match="metrics.step_time_s.median"):
        bad = _record()
        del bad["metrics"]["step_time_s"]["median"]
        check_record(bad)


def test_an_old_records_not_measured_reads_back_in_the_one_spelling():
    from hjepa_bench.record import dumps, loads

    new = _record()
    new["probes"] = {"stability": {"status": "ok", "criterion_cv_below_limit": "not-measured"},
                     "loss": {"status": "ok", "criterion_loss_decrease_met": "not-measured",
                              "lr_advice": {"action": "not-measured"}}}
    old = {**_record(), "schema_version": 1,
           "probes": {"stability": {"status": "ok", "criterion_cv_lt_20pct": "not-measured"},
                      "loss": {"status": "ok", "criterion_loss_down_20pct": "not-measured",
                               "lr_advice": {"action": "not-measured"}}}}
    for record in (new, old):
        back = loads(dumps(record))
        assert back["probes"]["stability"]["criterion_cv_below_limit"] == "not measured"
        assert back["probes"]["loss"]["criterion_loss_decrease_met"] == "not measured"
        assert back["probes"]["loss"]["lr_advice"]["action"] == "not measured"
    assert new["probes"]["loss"]["lr_advice"]["action"] == "not-measured"  # the reader copies, never edits


def test_a_field_that_does_not_fit_is_one_sentence_naming_it():
    """The sentence names the field's path and what it must be (read from the model), and quotes the value."""
    cases = [
        (lambda r: r["metrics"]["step_time_s"].update(p10=-1),
         "metrics.step_time_s.p10 must be a number >= 0 or null, not -1"),
        (lambda r: r["config"]["data"].update(num_workers=True),
         "config.data.num_workers must be an integer >= 0, not True"),
        (lambda r: r["metrics"].update(batch_size={"achieved": [8, 0]}),
         "metrics.batch_size.achieved must be an integer >= 1 or a list of integers >= 1 or null, not [8, 0]"),
        (lambda r: r["env"].update(backend="a b"),
         "env.backend must be a plain name (1 to 64 letters, digits, '_' or '-'), not \"a b\""),
        (lambda r: r.pop("params"), "params is missing"),
        (lambda r: r.update(probes={"loss": {"error": None}}), "probes.loss.status is missing"),
        (lambda r: r.update(schema_version=SCHEMA_VERSION + 1),
         f"schema_version {SCHEMA_VERSION + 1} is newer than this"),
    ]
    for change, message in cases:
        bad = _record()
        change(bad)
        with pytest.raises(RecordError) as info:
            check_record(bad)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_write_json_is_atomic_and_nan_safe(tmp_path):
    path = write_json(_record(metrics={"x": float("nan")}), tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text())["metrics"]["x"] is None
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_records_share_one_reading():
    from records_factory import make_record, quick_val_values

    from hjepa_bench.analysis.memory import peak_bytes
    from hjepa_bench.record import (
        backend_peak_bytes,
        batch_achieved,
        batch_requested,
        label,
        model_short,
        new_record,
        probe,
        short_model_name,
    )

    r = make_record(quick_val_values(), peak_bytes=2 * 2**30)
    check_record(r)  # the tests' hand-made records are records too
    assert short_model_name("vit_small_patch16_224") == "vit_small" and model_short(r) == "vit_tiny"
    assert batch_requested(r) == batch_achieved(r) == 32 and backend_peak_bytes(r) == peak_bytes(r) == 2 * 2**30
    r["probes"]["memory"]["peak_device_bytes"] = 3 * 2**30  # the memory probe saw more than the backend's peak
    assert peak_bytes(r) == 3 * 2**30 and backend_peak_bytes(r) == 2 * 2**30
    assert probe(r, "memory")["status"] == "ok" and probe(r, "nope") is None
    bare = new_record({"data": {"batch_size": 8, "num_workers": 2}, "model": {"encoder_type": "vit_tiny_patch16_224"},
                       "bench": {"variant": "reference", "precision": "fp32"}}, {"backend": "cpu"})
    assert label(bare) == "cpu vit_tiny b8 w2 reference fp32"
