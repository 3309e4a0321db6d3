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
    """Was: tests/helpers.py read ../shared/reference, the README's examples passed
    --config ../shared/..., and docstrings cited design notes that are not in the repository."""
    files = [p for p in tracked_files() if p.suffix in TEXT_SUFFIXES and p.is_file()]
    assert any(p.name == "README.md" for p in files) and any(p.name == "helpers.py" for p in files)
    found = [hit for p in files for hit in outside_references(str(p.relative_to(REPO)), read(p))]
    assert found == [], "\n".join(found)


def test_the_scan_catches_each_kind_of_outside_reference():
    text = "\n".join(["ok", "cfg = REPO.parent / 'shared' / 'x'", "see " + ".." + "/shared/x.yaml",
                      "(" + "shared" + "/design/notes.md)", '"""Masks (' + "HJEPA_STEP" + '.md)."""'])
    hits = outside_references("f.py", text)
    assert [h.split(":")[1] for h in hits] == ["3", "4", "5"]
