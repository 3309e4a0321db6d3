"""Third-party output the user cannot act on, kept off the terminal and summarised in one line.

Native libraries (kineto under ``torch.profiler``: "gpuGetDeviceCount failed with code 35",
"USDT ... profiler_start", a CPUAllocator warning) write straight to file descriptor 2, below
Python's ``sys.stderr``, so redirecting ``sys.stderr`` does not hide them.  :class:`NativeOutput`
points descriptor 2 at a temporary file while it is active (``os.dup2``) and hands the lines back
when it stops; the caller keeps them (a probe's ``library_output`` entry) and the CLI prints
:func:`hidden_line` for them, or the lines in full with ``-v``.

Only what runs while the capture is active is captured; :func:`restore_all` puts descriptor 2
back if a run was interrupted between ``start`` and ``stop`` (the CLI calls it before it prints).
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

#: at most this many captured lines are kept (the count says how many there were)
MAX_LINES = 200

_ACTIVE: list[NativeOutput] = []


class NativeOutput:
    """Capture what is written to file descriptor 2 between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._file: Any = None
        self.lines: list[str] = []
        self.count = 0

    @property
    def active(self) -> bool:
        return self._saved is not None

    def start(self) -> NativeOutput:
        if self.active:
            return self
        _flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        _ACTIVE.append(self)
        return self

    def stop(self) -> list[str]:
        """Put descriptor 2 back; the captured lines (also in ``lines``; ``count``: all of them)."""
        if not self.active:
            return self.lines
        _flush()
        assert self._saved is not None
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()
        lines = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
        self.count += len(lines)
        self.lines += lines[:max(0, MAX_LINES - len(self.lines))]
        return self.lines

    def __enter__(self) -> NativeOutput:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def restore_all() -> None:
    """Stop every capture still active (an interrupted run), so what follows reaches the terminal."""
    for capture in reversed(list(_ACTIVE)):
        capture.stop()


def entry_output(lines: list[str], count: int) -> dict[str, Any]:
    """A probe entry's ``library_output``: the lines kept and how many there were."""
    return {"lines": list(lines), "count": int(count)}


def hidden_line(name: str, output: Mapping[str, Any]) -> str:
    """One line for captured output: ``profiler: 4 lines of library output hidden; -v shows them``."""
    n = int(output.get("count") or len(output.get("lines") or []))
    return f"{name}: {n} line{'s' if n != 1 else ''} of library output hidden; -v shows them"


def report_library_output(probes: Mapping[str, Any], *, verbose: bool, stream: Any = None) -> None:
    """For each probe entry with captured ``library_output``: its lines in full (``verbose``) or
    :func:`hidden_line` (on ``stream``, default stderr)."""
    stream = stream or sys.stderr
    for name, entry in probes.items():
        output = entry.get("library_output") if isinstance(entry, Mapping) else None
        if not output or not (output.get("count") or output.get("lines")):
            continue
        if verbose:
            lines: Iterable[str] = output.get("lines") or []
            print(f"{name}: library output ({output.get('count')} line(s)):", file=stream)
            for line in lines:
                print(f"  {line}", file=stream)
        else:
            print(hidden_line(name, output), file=stream)
