"""The folders show the architecture: every import goes down the layer table, never up, and
there is no import circle (docs/layout.md).

The imports of every module of ``hjepa_bench/`` are read with ``ast``
(function-level imports included), so a lazy import cannot hide an upward arrow.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hjepa_bench"

#: The layers, bottom first.  A module may import its own layer (no circle) and the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("hjepa_bench.errors", "hjepa_bench.format", "hjepa_bench.stats", "hjepa_bench.status")),
    ("settings", ("hjepa_bench.thresholds", "hjepa_bench.record", "hjepa_bench.record_model", "hjepa_bench.config")),
    ("options", ("hjepa_bench.options",)),
    ("plugin", ("hjepa_bench.plugin", "hjepa_bench")),  # "hjepa_bench": the package's __init__ (re-exports)
    ("analysis", ("hjepa_bench.analysis",)),
    ("hjepa", ("hjepa_bench.hjepa",)),
    ("measure", ("hjepa_bench.measure",)),
    ("report", ("hjepa_bench.report",)),
    ("builtin plugins", ("hjepa_bench.builtin",)),
    ("commands", ("hjepa_bench.commands",)),
    ("cli", ("hjepa_bench.cli", "hjepa_bench.__main__")),
)
CLI_MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = ["hjepa_bench", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of the table"
    return rank


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that ``module`` imports (``from pkg import mod`` counts as mod)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "hjepa_bench" or n.startswith("hjepa_bench."))
    return {n for n in out if n != module}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t in imports(m, p, known) if t in known} for m, p in known.items()}


def test_every_module_has_a_layer():
    for m in modules():
        layer(m)


def test_no_upward_import():
    upward = []
    for m, targets in graph().items():
        for t in targets:
            if layer(t) > layer(m):
                upward.append(f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})")
    assert not upward, "imports that go up the layer table:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            # a package's __init__ imported by its own submodules is not a circle Python trips on
            if m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_the_cli_is_thin():
    lines = (PACKAGE / "cli.py").read_text().count("\n")
    assert lines < CLI_MAX_LINES, f"cli.py has {lines} lines; commands belong in hjepa_bench/commands/"


def test_a_known_upward_import_is_caught(tmp_path):
    """The checker itself: a core module importing the report layer is flagged."""
    assert layer("hjepa_bench.measure.runner") < layer("hjepa_bench.report.sections")
    assert layer("hjepa_bench.analysis.report_data") < layer("hjepa_bench.commands.common")
    path = tmp_path / "m.py"
    path.write_text("from ..report.sections import render_report\n")
    found = imports("hjepa_bench.measure.m", path, {"hjepa_bench.report.sections": path})
    assert found == {"hjepa_bench.report.sections"}
