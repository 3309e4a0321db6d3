"""Fixtures for the tests (constants and helpers live in helpers.py)."""
from __future__ import annotations

import pytest

from helpers import run_cli, tiny_config


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture
def cli():
    return run_cli
