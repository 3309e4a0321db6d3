"""The plugin interface keeps its promises: every hook is documented and exercised by a test, and
the built-in plugins are one list (pyproject.toml's entry points) that matches the plugins/ folder."""
from __future__ import annotations

import importlib.metadata as md
import inspect
from pathlib import Path

import pytest

from hjepa_bench.plugin import hookspecs
from hjepa_bench.plugin.manager import DIST_NAME, ENTRY_POINT_GROUP

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("hjepa_bench_") and inspect.isfunction(f))


def _pyproject_entry_points() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data["project"]["entry-points"][ENTRY_POINT_GROUP]


def test_the_hooks_are_found():
    assert HOOKS == ["hjepa_bench_register_backends", "hjepa_bench_register_executors", "hjepa_bench_register_probes",
                     "hjepa_bench_register_report_sections", "hjepa_bench_register_workloads"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 5, f"{hook} has no docstring that says what it receives and returns"
    assert list(inspect.signature(getattr(hookspecs, hook)).parameters) == ["register"]
    guide = (REPO / "docs" / "plugins.md").read_text()
    assert f"`{hook}(register)`" in guide, f"the plugin guide (docs/plugins.md) does not list {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    """Some test implements or calls the hook (this file only lists them)."""
    users = [p.name for p in (REPO / "tests").glob("*.py")
             if p.name != Path(__file__).name and hook in p.read_text()]
    assert users, f"no test implements or calls {hook}"


def test_the_builtin_plugins_are_one_list_matching_the_folder():
    eps = _pyproject_entry_points()
    modules = sorted(p.stem for p in (REPO / "plugins").glob("*.py") if p.stem != "__init__")
    assert sorted(v.rsplit(".", 1)[1] for v in eps.values()) == modules
    assert all(v == f"hjepa_bench.plugins.{v.rsplit('.', 1)[1]}" for v in eps.values())
    assert len(set(eps)) == len(eps)


def test_the_installed_entry_points_are_pyprojects():
    try:
        dist = md.distribution(DIST_NAME)
    except md.PackageNotFoundError:
        pytest.skip("hjepa-bench is not installed")
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP}
    assert installed == _pyproject_entry_points(), "reinstall (pip install -e .): the entry points changed"
