"""A clone of the repository stands on its own: nothing in it reads or names a path beside the
checkout, every relative link of the README and docs/ resolves, and CI runs the README's own test
command in a fresh clone."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import REPO

#: what a file must not name: a folder beside the checkout, or the notes the project was designed
#: from (they live outside the repository).  Spelt in pieces so this file does not name them itself.
OUTSIDE = [".." + "/shared", "shared" + "/design", "shared" + "/reference"]
OUTSIDE_NOTES = [name + ".md" for name in ("MEASURING", "HJEPA_STEP", "VALIDATION_LEARNINGS",
                                           "QUALITY_AND_DECISIONS", "STYLE")]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".ini", ".json", ".jsonl", ".tsv", ".sh", ""}
#: [text](target) in markdown, target without a scheme
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def tracked_files() -> list[Path]:
    """The files of the checkout (``git ls-files``; without git, every file outside .git/.venv)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60).stdout
        return [REPO / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__"}
        return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]


def outside_references(name: str, text: str) -> list[str]:
    """``name:line: text`` for each line of ``text`` naming something outside the repository."""
    needles = OUTSIDE + OUTSIDE_NOTES
    return [f"{name}:{i}: {line.strip()[:120]}" for i, line in enumerate(text.splitlines(), 1)
            if any(n in line for n in needles)]


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""


def test_nothing_names_a_path_outside_the_repository():
    """No tracked text file (tests/helpers.py, the README's examples, docstrings) reads or names a
    folder beside the checkout or a design note that is not in the repository."""
    files = [p for p in tracked_files() if p.suffix in TEXT_SUFFIXES and p.is_file()]
    assert any(p.name == "README.md" for p in files) and any(p.name == "helpers.py" for p in files)
    found = [hit for p in files for hit in outside_references(str(p.relative_to(REPO)), read(p))]
    assert found == [], "\n".join(found)


def test_the_scan_catches_each_kind_of_outside_reference():
    text = "\n".join(["ok", "cfg = REPO.parent / 'shared' / 'x'", "see " + ".." + "/shared/x.yaml",
                      "(" + "shared" + "/design/notes.md)", '"""Masks (' + "HJEPA_STEP" + '.md)."""'])
    hits = outside_references("f.py", text)
    assert [h.split(":")[1] for h in hits] == ["3", "4", "5"]


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for md in markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # links in code are code
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same file
            path = target.split("#", 1)[0]
            if not (md.parent / path).exists():
                broken.append(f"{md.relative_to(REPO)}: {target}")
    assert len(markdown_files()) > 5
    assert broken == [], broken


def test_the_readme_is_a_front_page_that_links_the_docs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    linked = set(re.findall(r"\(docs/([\w.-]+\.md)", text))
    assert {"commands.md", "measuring.md", "step.md", "verdicts.md"} <= linked


def test_the_readme_has_an_example_of_every_command():
    from hjepa_bench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in sub.choices if not re.search(rf"^hjepa-bench {re.escape(name)}\b", text, flags=re.M)]
    assert len(sub.choices) >= 10 and missing == []


def quickstart_commands() -> list[str]:
    """The lines of the README's Quickstart code block: the main job, then the test command."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, flags=re.S)
    assert block, "the README has no Quickstart code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_quickstart_is_the_main_job_and_the_whole_test_suite():
    sweep, tests = quickstart_commands()
    assert sweep == "pip install -e . && hjepa-bench sweep"
    # the whole suite, slow tests included (no -m/-k selection)
    assert tests == 'pip install -e ".[test]" && python -m pytest tests benchmarks --benchmark-disable'


def test_ci_runs_the_readme_test_command_in_a_fresh_clone():
    """.ci/run clones the commit into a fresh temporary folder (nothing beside it), makes a venv
    there, and runs exactly the README's test command."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    tests = quickstart_commands()[1]
    assert [line.strip() for line in ci.splitlines() if "pytest" in line and not line.lstrip().startswith("#")] \
        == [tests]
    assert "mktemp -d" in ci and "git clone" in ci and "-m venv" in ci


def test_the_test_tiers_are_registered(pytestconfig):
    """The slow marker is registered and every test has a deadline (pytest-timeout), as pytest loaded them."""
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))
    assert float(pytestconfig.getini("timeout")) > 0
