"""pytest-benchmark regression suite over the pieces of the H-JEPA step.

Options (or environment variables):

* ``--hjepa-size tiny|quick_val`` (``HJEPA_BENCH_SIZE``): tiny (64 px, 2 blocks,
  batch 4; what CI runs) or the validation guide's quick_val (224 px, batch 32).
* ``--hjepa-rounds N`` (``HJEPA_BENCH_ROUNDS``): timed rounds per benchmark.
* ``--hjepa-allow-other-machine``: compare against a baseline saved on another
  device/software stack (refused by default).

Every benchmark is parametrised over the backends (cpu, cuda, mps); unavailable
ones are skipped with the reason.  Accelerator timings use ``pedantic`` rounds
with a device sync inside the timed function, after warm-up rounds.

The machine info saved with each run carries ``hjepa_bench``: the devices and
chips, torch and timm versions, size and precision.  Comparing against a
baseline whose ``hjepa_bench`` identity differs is an error.

Test-only: ``HJEPA_BENCH_TEST_SLOWDOWN_S`` adds a sleep to the full step (used by
the test that proves ``--benchmark-compare-fail`` trips).
"""
from __future__ import annotations

import os

import pytest

SIZES = {
    "tiny": {"data.image_size": 64, "data.batch_size": 4, "model.encoder_depth": 2, "model.predictor.depth": 1},
    "quick_val": {},  # the built-in defaults are the upstream quick_val config
}
IDENTITY_KEYS = ("devices", "torch", "timm", "size", "precision")


def pytest_addoption(parser):
    group = parser.getgroup("hjepa-bench")
    group.addoption("--hjepa-size", choices=sorted(SIZES), default=os.environ.get("HJEPA_BENCH_SIZE", "tiny"),
                    help="benchmark size: tiny (CI) or quick_val (real use); env HJEPA_BENCH_SIZE")
    group.addoption("--hjepa-rounds", type=int, default=int(os.environ.get("HJEPA_BENCH_ROUNDS", "0")) or None,
                    help="timed rounds per benchmark (default: 5 tiny, 10 quick_val)")
    group.addoption("--hjepa-allow-other-machine", action="store_true",
                    help="compare against baselines saved on another device or software stack")


def hjepa_identity(config) -> dict:
    """Device/chip, torch, timm, size and precision of this benchmark session."""
    import timm
    import torch

    from hjepa_bench.measure.env import environment_fingerprint
    from hjepa_bench.plugin.manager import build_plugins

    devices = {}
    for name, backend in sorted(build_plugins().backends().items()):
        if backend.availability().available:
            fp = environment_fingerprint(backend)
            devices[name] = {"device_name": fp.get("device_name"), "device_total_bytes": fp.get("device_total_bytes")}
    return {"devices": devices, "torch": str(torch.__version__), "timm": timm.__version__,
            "size": config.getoption("--hjepa-size"), "precision": "fp32"}


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["hjepa_bench"] = hjepa_identity(config)


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    mine = machine_info.get("hjepa_bench", {})
    theirs = compared_benchmark.get("machine_info", {}).get("hjepa_bench", {})
    diff = [k for k in IDENTITY_KEYS if mine.get(k) != theirs.get(k)]
    if not diff:
        return
    text = "; ".join(f"{k}: now {mine.get(k)!r}, baseline {theirs.get(k)!r}" for k in diff)
    if config.getoption("--hjepa-allow-other-machine"):
        benchmarksession.logger.warning(f"comparing across machines ({text})")
        return
    raise pytest.UsageError(f"the baseline was measured on another machine or software stack ({text}); "
                            "refusing to compare (pass --hjepa-allow-other-machine to compare anyway)")


@pytest.fixture(scope="session")
def size(request) -> str:
    return request.config.getoption("--hjepa-size")


@pytest.fixture(scope="session")
def rounds(request, size) -> int:
    return request.config.getoption("--hjepa-rounds") or (5 if size == "tiny" else 10)


@pytest.fixture(scope="session")
def config_values(size):
    from hjepa_bench.config import resolve_config

    return resolve_config(None, SIZES[size]).values


@pytest.fixture(scope="session", params=["cpu", "cuda", "mps"])
def backend(request):
    from hjepa_bench.plugin.manager import build_plugins

    b = build_plugins().backends()[request.param]
    why = b.availability()
    if not why.available:
        pytest.skip(f"{request.param}: {why.reason}")
    return b


@pytest.fixture
def timed(benchmark, backend, rounds):
    """Time ``fn`` in pedantic rounds with a device sync inside the timed function."""

    def run(fn, warmup_rounds=1):
        def synced():
            out = fn()
            backend.synchronize()
            return out

        return benchmark.pedantic(synced, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)

    return run
