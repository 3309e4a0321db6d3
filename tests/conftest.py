"""Fixtures for the tests (constants and helpers live in helpers.py)."""
from __future__ import annotations

import pytest
from helpers import run_cli, tiny_config

#: the deadline of a test marked slow (its own ``timeout`` mark wins); every other test has the
#: default of pyproject.toml's ``timeout``.  A slow test starts clusters, torchrun jobs or sweeps whose
#: child processes have their own timeouts of up to 600 s; this one must not cut them short.
SLOW_TIMEOUT_S = 900


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture
def cli():
    return run_cli
