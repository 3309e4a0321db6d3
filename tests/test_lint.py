"""The code is linted and the typed core type-checked, with the configuration in pyproject.toml:
`ruff check` over the repository and `mypy` (strict) over the base, settings, options, plugin and
analysis layers (`[tool.mypy] files`).  Both tools come with the `test` extra."""
from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    res = _run("ruff", "check", "--no-cache", ".")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_passes_on_the_typed_core_and_analysis():
    res = _run("mypy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success" in res.stdout, res.stdout
