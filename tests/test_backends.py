"""The cpu/cuda/mps backends and the environment fingerprint (fast, CPU only)."""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from hjepa_bench.measure.env import cpu_model, environment_fingerprint
from hjepa_bench.plugin.api import PRECISIONS, Availability, Backend, MemoryReading, WallClockEvent

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "hjepa_bench" / "builtin"


def load_plugin(name: str):
    """``hjepa_bench.builtin.NAME`` when installed, else the file in ./plugins."""
    try:
        return importlib.import_module(f"hjepa_bench.builtin.{name}")
    except ImportError:
        pass
    mod_name = f"_hjepa_bench_test_plugins.{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, PLUGINS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def registered(module) -> list[Backend]:
    got: list[Backend] = []
    module.hjepa_bench_register_backends(got.append)
    return got


@pytest.fixture(scope="module")
def cpu():
    return load_plugin("backend_cpu").CPUBackend()


@pytest.fixture(scope="module")
def cuda():
    return load_plugin("backend_cuda").CUDABackend()


@pytest.fixture(scope="module")
def mps():
    return load_plugin("backend_mps").MPSBackend()


HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()

CUDA_OOM = torch.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
)
MPS_OOM = RuntimeError(
    "MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.2 GB, "
    "max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool."
)
CPU_OOM = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
)
UNRELATED = RuntimeError("shape mismatch: value tensor of shape [3] cannot be broadcast")


# --------------------------------------------------------------------------- registration
@pytest.mark.parametrize(
    "module, cls, name",
    [
        ("backend_cpu", "CPUBackend", "cpu"),
        ("backend_cuda", "CUDABackend", "cuda"),
        ("backend_mps", "MPSBackend", "mps"),
    ],
)
def test_each_module_registers_one_backend(module, cls, name):
    mod = load_plugin(module)
    backends = registered(mod)
    assert len(backends) == 1
    assert type(backends[0]).__name__ == cls and backends[0].name == name
    assert isinstance(backends[0], Backend)
    assert backends[0].device() == torch.device(name)


# --------------------------------------------------------------------------- cpu
def test_cpu_is_available(cpu):
    assert cpu.availability() == Availability(True, "")
    assert cpu.device() == torch.device("cpu")
    cpu.synchronize()
    assert cpu.has_device_events() is False


def test_cpu_memory_peak_follows_a_big_allocation(cpu):
    cpu.reset_peak_memory()
    before = cpu.memory()
    big = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
    cpu.sample_memory()
    reading = cpu.memory()
    del big
    assert isinstance(reading, MemoryReading)
    assert reading.current_bytes > 0 and reading.total_bytes > 0
    assert reading.peak_bytes >= reading.current_bytes
    assert reading.peak_bytes >= before.current_bytes + 32 * 2**20
    assert reading.total_bytes >= reading.peak_bytes
    assert "rss" in reading.source.lower()
    after = cpu.memory()  # the peak outlives the tensor
    assert after.peak_bytes >= reading.peak_bytes


def test_cpu_wall_clock_event_measures_a_sleep(cpu):
    start, end = cpu.event(), cpu.event()
    assert isinstance(start, WallClockEvent)
    start.record()
    time.sleep(0.02)
    end.record()
    elapsed = start.elapsed_s(end)
    assert 0.015 < elapsed < 1.0


def test_cpu_precisions(cpu):
    precisions = cpu.supported_precisions()
    assert set(precisions) == set(PRECISIONS)
    assert precisions["fp32"] == ""
    assert all(isinstance(v, str) for v in precisions.values())
    # bf16 CPU autocast exists in every torch this project supports
    assert precisions["bf16"] == ""
    assert cpu.supported_precisions() == precisions  # cached, same answer


def test_cpu_grad_scaler(cpu):
    assert cpu.grad_scaler("fp32") is None
    assert cpu.grad_scaler("bf16") is None
    scaler = cpu.grad_scaler("fp16")
    if scaler is not None:
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def test_cpu_fingerprint(cpu):
    fp = cpu.fingerprint()
    assert fp["device_name"] == cpu_model()
    assert fp["device_total_bytes"] > 0


# --------------------------------------------------------------------------- cuda / mps absent
@pytest.mark.parametrize("name", [
    pytest.param("cuda", marks=pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")),
    pytest.param("mps", marks=pytest.mark.skipif(HAS_MPS, reason="an MPS device is present")),
])
def test_a_gpu_backend_unavailable_here(request, name):
    backend = request.getfixturevalue(name)
    avail = backend.availability()
    assert avail.available is False and avail.reason
    if name == "mps" and sys.platform != "darwin":
        assert "macOS" in avail.reason
    precisions = backend.supported_precisions()
    assert set(precisions) == set(PRECISIONS)
    assert all(reason for reason in precisions.values())
    assert backend.grad_scaler("fp16") is None
    assert backend.memory().current_bytes is None
    fp = backend.fingerprint()
    assert "device_name" in fp and "device_total_bytes" in fp


@pytest.mark.parametrize("name", [
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
    pytest.param("mps", marks=pytest.mark.skipif(not HAS_MPS, reason="no MPS device")),
])
def test_a_gpu_backend_on_its_device(request, name):
    backend = request.getfixturevalue(name)
    assert backend.availability().available
    assert backend.supported_precisions()["fp32"] == ""
    backend.reset_peak_memory()
    start, end = backend.event(), backend.event()
    start.record()
    x = torch.randn(1024, 1024, device=name)
    y = x @ x
    end.record()
    backend.sample_memory()
    assert start.elapsed_s(end) > 0
    reading = backend.memory()
    assert reading.peak_bytes >= reading.current_bytes > 0
    if name == "cuda":
        assert isinstance(backend.grad_scaler("fp16"), torch.amp.GradScaler)
    del x, y


# --------------------------------------------------------------------------- out of memory
def test_oom_error_constructors_behave():
    assert isinstance(CUDA_OOM, RuntimeError)
    assert str(CUDA_OOM).startswith("CUDA out of memory")


@pytest.mark.parametrize(
    "exc, owner",
    [(CUDA_OOM, "cuda"), (MPS_OOM, "mps"), (CPU_OOM, "cpu"), (UNRELATED, None),
     (ValueError("CUDA out of memory"), None)],
    ids=["cuda-oom", "mps-oom", "cpu-oom", "unrelated", "not-a-runtime-error"],
)
def test_each_backend_claims_only_its_own_oom(cpu, cuda, mps, exc, owner):
    claims = {b.name: b.is_oom(exc) for b in (cpu, cuda, mps)}
    assert claims == {name: name == owner for name in claims}


def test_wrapped_oom_is_still_recognised(cuda):
    try:
        try:
            raise CUDA_OOM
        except RuntimeError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert cuda.is_oom(outer)


def test_cpu_claims_memory_error(cpu, cuda, mps):
    assert cpu.is_oom(MemoryError())
    assert not cuda.is_oom(MemoryError()) and not mps.is_oom(MemoryError())


def test_real_cpu_allocation_failure_is_oom(cpu, cuda, mps):
    # 4 EiB cannot be allocated anywhere: the allocator refuses at once, nothing is touched.
    rss_before = cpu.memory().current_bytes
    t0 = time.perf_counter()
    with pytest.raises((RuntimeError, MemoryError)) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert time.perf_counter() - t0 < 2.0
    assert cpu.memory().current_bytes < rss_before + 2**30
    assert cpu.is_oom(info.value)
    assert not cuda.is_oom(info.value) and not mps.is_oom(info.value)


# --------------------------------------------------------------------------- environment
ENV_FIELDS = (
    "backend", "device_name", "device_total_bytes", "os", "python", "torch", "timm",
    "cpu_model", "cpu_count_logical", "cpu_count_physical", "total_memory_bytes",
    "hostname_hash", "fingerprint_id",
)


def test_cpu_model_is_a_name():
    name = cpu_model()
    assert isinstance(name, str) and name and name != "unknown"


@pytest.mark.parametrize("fixture", ["cpu", "cuda", "mps"])
def test_environment_fingerprint(request, fixture):
    backend = request.getfixturevalue(fixture)
    env = environment_fingerprint(backend)
    for key in ENV_FIELDS:
        assert key in env, key
    assert env["backend"] == backend.name
    assert env["torch"] == str(torch.__version__)
    assert env["cpu_count_logical"] >= 1
    assert env["total_memory_bytes"] > 0
    import socket

    assert socket.gethostname() not in env.values()  # only its hash is kept
    assert json.loads(json.dumps(env)) == env  # JSON-serialisable, round-trips
    again = environment_fingerprint(backend)
    assert again["fingerprint_id"] == env["fingerprint_id"]
    assert len(env["fingerprint_id"]) >= 8


def test_fingerprint_id_ignores_the_host_but_not_the_software(cpu):
    from hjepa_bench.measure.env import fingerprint_id

    env = environment_fingerprint(cpu)
    assert fingerprint_id({**env, "hostname_hash": "elsewhere"}) == env["fingerprint_id"]
    assert fingerprint_id({**env, "torch": "0.0.1"}) != env["fingerprint_id"]
    assert environment_fingerprint(cpu)["fingerprint_id"] != environment_fingerprint(
        load_plugin("backend_mps").MPSBackend()
    )["fingerprint_id"]


def test_mps_peak_is_sampled_without_a_peak_api(monkeypatch):
    """The MPS memory logic, run on any machine against a faked torch.mps."""
    mod = load_plugin("backend_mps")
    backend = mod.MPSBackend()
    live = {"bytes": 100}
    monkeypatch.setattr(mod, "_check_availability", lambda: Availability(True))
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: live["bytes"])
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 5000)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 10_000, raising=False)
    # this machine's torch.accelerator is not MPS, so the backend must fall back to sampling
    backend.reset_peak_memory()
    live["bytes"] = 900
    backend.sample_memory()
    live["bytes"] = 300
    backend.sample_memory()
    reading = backend.memory()
    readings = (reading.current_bytes, reading.peak_bytes, reading.total_bytes, reading.reserved_bytes)
    assert readings == (300, 900, 10_000, 5000)
    assert "sampled" in reading.source
    backend.reset_peak_memory()
    assert backend.memory().peak_bytes == 300


def test_mps_uses_torch_accelerator_peak_when_it_works_for_mps(monkeypatch):
    mod = load_plugin("backend_mps")
    backend = mod.MPSBackend()
    state = {"live": 100, "peak": 4000}
    monkeypatch.setattr(mod, "_check_availability", lambda: Availability(True))
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: state["live"])
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 5000)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 10_000, raising=False)
    acc = torch.accelerator
    monkeypatch.setattr(acc, "current_accelerator", lambda *a, **k: torch.device("mps"))
    monkeypatch.setattr(acc, "memory_stats", lambda *a: {"allocated_bytes.all.peak": state["peak"]})
    monkeypatch.setattr(acc, "max_memory_allocated", lambda *a: state["peak"])
    monkeypatch.setattr(acc, "memory_allocated", lambda *a: state["live"])
    monkeypatch.setattr(acc, "reset_peak_memory_stats", lambda *a: state.update(peak=state["live"]))
    backend.reset_peak_memory()
    state.update(live=200, peak=2500)  # a spike between samples that sampling would miss
    backend.sample_memory()
    reading = backend.memory()
    assert reading.peak_bytes == 2500 and reading.current_bytes == 200
    assert "torch.accelerator" in reading.source


def _hold_memory(n_bytes: int, ready, done) -> None:
    block = bytearray(n_bytes)  # written: resident, private to this worker
    for i in range(0, n_bytes, 4096):
        block[i] = 1
    ready.set()
    done.wait(30)


def test_cpu_memory_counts_the_workers_of_the_process_tree(cpu):
    """On CPU the DataLoader workers use the same RAM as the step: a child process holding 64 MiB of
    its own memory shows in the reading (a main-process RSS alone would miss it)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    cpu.reset_peak_memory()
    before = cpu.memory()
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_memory, args=(64 * 2**20, ready, done))
    child.start()
    try:
        assert ready.wait(30)
        time.sleep(load_plugin("backend_cpu").CHILDREN_REFRESH_S + 0.2)  # the backend looks for new children
        during = cpu.memory()
    finally:
        done.set()
        child.join(30)
    assert during.current_bytes - before.current_bytes >= 48 * 2**20
    assert during.peak_bytes - before.peak_bytes >= 48 * 2**20
    assert "DataLoader workers" in during.source


# --------------------------------------------------------------------------- older torch / MPS fp16
def test_cuda_fp16_scaler_on_torch_2_2(monkeypatch, cuda):
    """torch 2.2 has no torch.amp.GradScaler (it came in 2.3); its scaler is torch.cuda.amp.GradScaler.
    The backend must hand that one out rather than fail every fp16 run with AttributeError."""
    mod = load_plugin("backend_cuda")
    backend = mod.CUDABackend()
    monkeypatch.setattr(mod, "_check_availability", lambda: Availability(True))
    monkeypatch.delattr(torch.amp, "GradScaler")
    with pytest.warns(UserWarning):  # torch.cuda.amp.GradScaler without CUDA here: disabled, and says so
        scaler = backend.grad_scaler("fp16")
    assert isinstance(scaler, torch.cuda.amp.GradScaler)
    assert backend.grad_scaler("bf16") is None


@pytest.mark.parametrize("version, scaler_runs, supported", [
    ("2.6.0", True, False),  # autocast fp16 works (>= 2.5) but GradScaler("mps") does not exist yet
    ("2.8.0", False, False),  # the scaler is there but failed its fp16 step here
    ("2.8.0", True, True),
])
def test_mps_fp16_needs_a_working_grad_scaler(monkeypatch, version, scaler_runs, supported):
    """On MPS fp16 autocast works from torch 2.5 but GradScaler('mps') only from 2.8: fp16 without loss
    scaling is not the upstream step, so it is unsupported, with the reason, until the scaler works."""
    mod = load_plugin("backend_mps")
    backend = mod.MPSBackend()
    monkeypatch.setattr(mod, "_check_availability", lambda: Availability(True))
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(mod, "probe_precision", lambda device, precision: "")  # autocast fp16 works
    monkeypatch.setattr(mod, "grad_scaler_works", lambda device, sync: scaler_runs)
    why = backend.supported_precisions()["fp16"]
    assert (why == "") is supported
    if not supported:
        assert "GradScaler" in why and version in why


@pytest.mark.parametrize("message", [
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    ("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error (run with NCCL_DEBUG=INFO for details), "
     "NCCL version 2.21.5\nncclUnhandledCudaError: Call to CUDA function failed.\nLast error:\n"
     "Cuda failure 'out of memory'"),
    "NCCL error: unhandled system error\nLast error:\nFailed to CUDA calloc async 4194304 bytes",
], ids=["cudnn", "nccl-cuda-failure", "nccl-calloc"])
def test_cuda_claims_cudnn_and_nccl_out_of_memory(cpu, cuda, mps, message):
    exc = RuntimeError(message)  # torch.distributed.DistBackendError is a RuntimeError
    assert cuda.is_oom(exc)
    assert not cpu.is_oom(exc) and not mps.is_oom(exc)


def test_mps_printed_command_buffer_oom_is_recognised(cuda, mps):
    printed = ("Error: command buffer exited with error status.\n\tThe Metal Performance Shaders operations "
               "encoded on it may not have completed.\n\tError: \n\t(null)\n\tInsufficient Memory "
               "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)\n")
    assert "kIOGPUCommandBufferCallbackErrorOutOfMemory" in mps.printed_oom("some warning\n" + printed)
    assert mps.printed_oom("UserWarning: something else\n") is None
    assert cuda.printed_oom(printed) is None
