"""The plugin interface keeps its promises: every hook is documented and exercised by a test, and
the built-in plugins are one list in code that matches the hjepa_bench/builtin/ folder."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from hjepa_bench.plugin import hookspecs
from hjepa_bench.plugin.manager import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, OPTION_BUILTINS, build_plugins

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("hjepa_bench_") and inspect.isfunction(f))


def test_the_hooks_are_found():
    assert HOOKS == ["hjepa_bench_add_options", "hjepa_bench_register_backends", "hjepa_bench_register_executors",
                     "hjepa_bench_register_probes", "hjepa_bench_register_report_sections",
                     "hjepa_bench_register_workloads"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 5, f"{hook} has no docstring that says what it receives and returns"
    params = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    if hook.startswith("hjepa_bench_register_"):
        assert params == ["register"]
    guide = (REPO / "docs" / "plugins.md").read_text()
    call = f"`{hook}({', '.join(params)})`"
    assert call in guide, f"the plugin guide (docs/plugins.md) does not list {call}"


def test_the_builtins_that_add_flags_are_listed_and_light():
    """The parser loads only OPTION_BUILTINS: every built-in with hjepa_bench_add_options is one, and
    none imports torch (every command's --help imports them)."""
    plugins = build_plugins(env={"HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    with_flags = [i.name for i in plugins.describe() if "hjepa_bench_add_options" in i.hooks and i.origin == "builtin"]
    assert with_flags == list(OPTION_BUILTINS)
    modules = [m for n, m in BUILTIN_PLUGINS if n in OPTION_BUILTINS]
    code = f"import sys; [__import__(m) for m in {modules!r}]; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    """Some test implements or calls the hook (this file only lists them)."""
    users = [p.name for p in (REPO / "tests").glob("*.py")
             if p.name != Path(__file__).name and hook in p.read_text()]
    assert users, f"no test implements or calls {hook}"


def test_the_builtin_plugins_are_one_list_matching_the_folder():
    modules = sorted(p.stem for p in (REPO / "hjepa_bench" / "builtin").glob("*.py") if p.stem != "__init__")
    assert sorted(m.rsplit(".", 1)[1] for _, m in BUILTIN_PLUGINS) == modules
    assert all(m.startswith("hjepa_bench.builtin.") for _, m in BUILTIN_PLUGINS)
    assert len({n for n, _ in BUILTIN_PLUGINS}) == len(BUILTIN_PLUGINS)


def test_the_builtins_load_with_no_entry_points_and_this_package_lists_none():
    """An install whose metadata is stale or missing still has every built-in: they come from the code's list.
    The package's own metadata names no entry point (the group is for third-party packages)."""
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert ENTRY_POINT_GROUP not in data["project"].get("entry-points", {})
    plugins = build_plugins(env={"HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert [i.name for i in plugins.describe() if i.origin == "builtin"] == [n for n, _ in BUILTIN_PLUGINS]
