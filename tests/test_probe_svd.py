"""The ``svd`` probe: a real run of its ``finish`` on the CPU backend, and the fallback
classification (pure, so it is tested without a Mac)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from helpers import tiny_config

from hjepa_bench.builtin import probe_svd
from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.plugin.api import RunContext
from hjepa_bench.plugin.manager import build_plugins
from hjepa_bench.record import new_record

FALLBACK_TEXT = ("The operator 'aten::linalg_svd' is not currently supported on the MPS backend and will fall "
                 "back to run on the CPU. This may have performance implications.")


class _Workload:
    def __init__(self, model):
        self._model = model

    def model(self):
        return self._model


def _ctx(model, **overrides) -> RunContext:
    return RunContext(config=tiny_config(**overrides), backend=CPUBackend(), workload=_Workload(model),
                      env={"backend": "cpu"})


def _caught(*messages, category=UserWarning):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in messages:
            warnings.warn(m, category)
    return caught


# --------------------------------------------------------------------------- a real CPU run
@pytest.fixture(scope="module")
def cpu_entry():
    ctx = _ctx(torch.nn.Linear(4, 4), **{"bench.svd_rows": 2048})
    entry = probe_svd.SVDProbe().finish(ctx, new_record(ctx.config, ctx.env))
    return entry


def test_cpu_run_records_the_cpu_path_once(cpu_entry):
    e = cpu_entry
    assert e["measured"] is True and e["device"] == "cpu" and e["device_is_cpu"] is True
    assert e["shape"] == [2048, 192] and e["torch_version"] == torch.__version__
    assert [(t["device"], t["dtype"], t["path"]) for t in e["timings"]] == [
        ("cpu", "float32", "cpu"), ("cpu", "float64", "cpu")]
    for t in e["timings"]:
        assert t["median_s"] > 0 and t["warmup_s"] > 0
        assert len(t["times_s"]) == probe_svd.REPEATS and all(x > 0 for x in t["times_s"])
        assert t["detail"] is None
    assert e["feature_eval_cost_s"]["cpu_float64"] > 0
    assert e["feature_eval_cost_s"]["device_svd_estimate"] is None and e["upload_float32_s"] is None
    assert "same" in e["note"]
    json.dumps(e, allow_nan=False)


def test_default_rows_and_no_model():
    assert probe_svd.DEFAULT_ROWS == 25_600
    entry = probe_svd.SVDProbe().finish(_ctx(None), {})
    assert entry["measured"] is False and "no model" in entry["reason"]


# --------------------------------------------------------------------------- classification
def test_fallback_warning_is_cpu_fallback():
    got = probe_svd.classify_svd_path(_caught("some other warning", FALLBACK_TEXT), None, "mps")
    assert got == {"path": "cpu-fallback", "detail": FALLBACK_TEXT}
    assert probe_svd.classify_svd_path([FALLBACK_TEXT], None)["path"] == "cpu-fallback"  # plain strings too


def test_not_implemented_error():
    exc = NotImplementedError("The operator 'aten::linalg_svd' is not currently implemented for the MPS device.")
    got = probe_svd.classify_svd_path([], exc, "mps")
    assert got["path"] == "not-implemented" and "aten::linalg_svd" in got["detail"]


def test_no_warning_is_device_and_cpu_is_cpu():
    assert probe_svd.classify_svd_path(_caught("unrelated"), None, "mps") == {"path": "device", "detail": None}
    assert probe_svd.classify_svd_path([], None, "cuda")["path"] == "device"
    assert probe_svd.classify_svd_path(_caught(FALLBACK_TEXT), None, "cpu")["path"] == "cpu"
    # a fallback-sounding warning of another category is not the MPS fallback
    assert probe_svd.classify_svd_path(_caught(FALLBACK_TEXT, category=DeprecationWarning), None,
                                       "mps")["path"] == "device"


def test_dtype_support():
    assert "float64" in probe_svd.dtype_unsupported(torch.device("mps"), torch.float64)
    assert probe_svd.dtype_unsupported(torch.device("cpu"), torch.float64) is None


def test_device_path_captures_a_fallback_warning(monkeypatch):
    """The capture around the timed device calls (the svd stands in for MPS's fallback)."""
    real_svd = torch.linalg.svd

    def warning_svd(a, full_matrices=True):
        warnings.warn(FALLBACK_TEXT, UserWarning)
        return real_svd(a, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", warning_svd)
    before = torch.is_warn_always_enabled()
    got = probe_svd.time_svd_path(torch.randn(64, 8), "mps", lambda: None)
    assert got["path"] == "cpu-fallback" and got["detail"] == FALLBACK_TEXT and got["median_s"] > 0
    assert torch.is_warn_always_enabled() == before

    def missing_svd(a, full_matrices=True):
        raise NotImplementedError("not implemented for the MPS device")

    monkeypatch.setattr(torch.linalg, "svd", missing_svd)
    got = probe_svd.time_svd_path(torch.randn(64, 8), "mps", lambda: None)
    assert got["path"] == "not-implemented" and got["median_s"] is None


# --------------------------------------------------------------------------- plugin and report
def test_plugin_registers_a_costly_probe_and_a_section():
    plugins = build_plugins(objects=[("probe_svd_test", probe_svd)])
    assert plugins.probes()["svd"].cost == "costly"
    assert "svd" not in [p.name for p in plugins.select_probes(None)]
    assert "svd" in [s.name for s in plugins.report_sections()]


def test_report_section(cpu_entry):
    section = probe_svd.SVDSection()
    config = tiny_config()
    assert section.render([new_record(config, {})]) is None
    record = new_record(config, {"backend": "cpu", "device_name": "test cpu"})
    record["probes"]["svd"] = {"status": "ok", **cpu_entry}
    failed = new_record(config, {"backend": "cpu"})
    failed["probes"]["svd"] = {"status": "failed", "error": "RuntimeError: boom"}
    text = section.render([record, failed])
    assert "test cpu" in text and "2048x192" in text and "float64" in text and "boom" in text


# --------------------------------------------------------------------------- torch 2.14 on MPS
MPS_214_ERROR = "Failed to created pipeline state object"


class _FakeGPU(CPUBackend):
    """A device that is not the CPU (torch's meta device holds the tensors: shapes, no data)."""

    name = "fakegpu"

    def device(self):
        return torch.device("meta")


def test_a_device_svd_that_raises_the_mps_214_error_keeps_the_cpu_rows(monkeypatch):
    """torch 2.14 on MPS: ``linalg.svd`` of more than 8,192 elements raises RuntimeError (pytorch
    issue 195937).  The fake SVD raises it on the device for exactly those inputs; the probe must
    record the device path as an error and still time the CPU rows."""
    real_svd = torch.linalg.svd

    def mps_214_svd(a, full_matrices=True):
        if a.device.type != "cpu" and a.numel() > 8192:
            raise RuntimeError(MPS_214_ERROR)
        return real_svd(a, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", mps_214_svd)
    config = tiny_config(**{"bench.svd_rows": 512})
    ctx = RunContext(config=config, backend=_FakeGPU(), workload=_Workload(torch.nn.Linear(4, 4)),
                     env={"backend": "fakegpu"})
    entry = probe_svd.SVDProbe().finish(ctx, new_record(config, ctx.env))
    device_rows = [t for t in entry["timings"] if t["device"] == "meta"]
    cpu_rows = [t for t in entry["timings"] if t["device"] == "cpu"]
    assert [t["path"] for t in device_rows] == ["error", "error"]
    assert all(MPS_214_ERROR in t["detail"] and t["median_s"] is None for t in device_rows)
    assert [(t["dtype"], t["path"]) for t in cpu_rows] == [("float32", "cpu"), ("float64", "cpu")]
    assert all(t["median_s"] > 0 for t in cpu_rows)
    assert entry["feature_eval_cost_s"]["cpu_float64"] > 0
    assert entry["feature_eval_cost_s"]["device_svd_estimate"] is None
    json.dumps(entry, allow_nan=False)
