"""``hjepa-bench analyze --follow``: a training log followed while the trainer writes it.

:class:`LogTail` reads what was appended to the file since the last read (like ``tail -F``): bytes
are decoded incrementally (a UTF-8 character split between two reads is kept whole), a file
replaced at the same path (rotation: another inode) is read from its start once the old one is
drained, and a file that got shorter (truncated in place) is read again from its start.
:class:`~hjepa_bench.analysis.log_parse.LogStream` parses the complete segments (a bar refresh
ended by a carriage return, a line ended by a line end) and holds the unfinished rest.

:func:`follow` polls the file, and at most every ``interval`` seconds analyses what it holds
(:func:`~hjepa_bench.analysis.log_speed.analyze_log`,
:func:`~hjepa_bench.analysis.log_follow.live_status`): one status line (rewritten in place on a
terminal; printed when it changed otherwise) and a one-line warning the first time each of the
guide's flags appears.  It ends at the trainer's completion line, after ``stop_after_idle``
seconds without new output, or at Ctrl-C, and says why; the caller then writes the report
``analyze`` writes.
"""
from __future__ import annotations

import codecs
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..analysis.log_facts import ERROR_RE
from ..analysis.log_follow import live_status, status_line
from ..analysis.log_parse import LogParseError, LogStream, is_completion
from ..analysis.log_speed import analyze_log
from ..errors import UserError

#: bytes read from the file at most per poll (a huge backlog is read over several polls)
READ_CHUNK = 8 * 2**20


class LogTail:
    """New text of a file that is being appended to (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: Any = None
        self._ino: tuple[int, int] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise UserError(f"log file {self.path} cannot be read ({exc.strerror or type(exc).__name__}).") from None
        st = os.fstat(fh.fileno())
        self._fh, self._ino = fh, (st.st_dev, st.st_ino)
        self._decoder.reset()
        return True

    def read(self) -> tuple[str, str | None]:
        """(the text appended since the last read, ``"rotated"`` / ``"truncated"`` / None)."""
        if self._fh is None and not self._open():
            return "", None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # being rotated: read what the old file still holds
            st = None
        event = None
        if st is not None and (st.st_dev, st.st_ino) != self._ino:
            rest = self._fh.read()  # what was written to the old file before it was replaced
            if rest:
                return self._decoder.decode(rest), None
            self._fh.close()
            self._fh = None
            if not self._open():
                return "", None
            event = "rotated"
        elif st is not None and st.st_size < self._fh.tell():
            self._fh.seek(0)
            self._decoder.reset()
            event = "truncated"
        data = self._fh.read(READ_CHUNK)
        return self._decoder.decode(data) if data else "", event

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class FollowEnd:
    """How following ended, and what was seen."""

    reason: str
    rotated: list[str] = field(default_factory=list)  # "rotated" / "truncated" events, in order
    status: dict[str, Any] | None = None  # the last live status
    warnings: list[str] = field(default_factory=list)  # the warnings printed


class _Display:
    """One status line: rewritten in place on a terminal, printed when it changed otherwise."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.last: str | None = None
        self.open_line = False

    def status(self, line: str) -> None:
        text = f"follow: {line}"
        if self.tty:
            width = max(20, shutil.get_terminal_size((120, 20)).columns - 1)
            self.out.write("\r" + text[:width].ljust(width if self.open_line else 0))
            self.open_line = True
            self.out.flush()
        elif text != self.last:
            print(text, file=self.out, flush=True)
        self.last = text

    def warn(self, text: str) -> None:
        self.end_line()
        print(f"warning: {text}", file=self.err, flush=True)

    def note(self, text: str) -> None:
        self.end_line()
        print(f"follow: {text}", file=self.out, flush=True)

    def end_line(self) -> None:
        if self.open_line:
            self.out.write("\n")
            self.out.flush()
            self.open_line = False


def follow(path: str | Path, *, interval: float = 5.0, stop_after_idle: float | None = None,
           budget_hours: float | None = None, out: TextIO | None = None, err: TextIO | None = None,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> FollowEnd:
    """Follow the log at ``path`` until it ends (module docstring); returns how it ended."""
    display = _Display(out or sys.stdout, err or sys.stderr)
    tail = LogTail(path)
    stream = LogStream()
    end = FollowEnd(reason="")
    warned: set[str] = set()
    last_update = -float("inf")
    last_growth = clock()
    completed = False
    dirty = True

    def warn_once(key: str, text: str) -> None:
        if key not in warned:
            warned.add(key)
            end.warnings.append(text)
            display.warn(text)

    def update() -> None:
        try:
            parsed = stream.snapshot()
        except LogParseError:
            display.status(f"waiting for the trainer's output ({stream.line_no - 1} line(s) read)")
            return
        result = analyze_log(parsed)
        if not result["epochs"]:
            display.status(f"waiting for the first training bar ({stream.line_no - 1} line(s) read)")
            return
        status = live_status(result, budget_hours=budget_hours)
        end.status = status
        for w in status["warnings"]:
            warn_once(w["key"], w["text"])
        display.status(status_line(status))

    try:
        while True:
            text, event = tail.read()
            if event:
                end.rotated.append(event)
                stream.break_line()
                display.note(f"the log was {event}; reading the file at {path} from its start")
            if text:
                last_growth = clock()
                dirty = True
                for seg in stream.feed(text):
                    if is_completion(seg):
                        completed = True
                    m = ERROR_RE.search(seg)
                    if m:
                        warn_once("error", f"the log shows an error: {seg.strip()[:160]}")
            now = clock()
            if dirty and (now - last_update >= interval or completed):
                update()
                last_update, dirty = now, False
            if completed:
                end.reason = "the log says training completed"
                break
            if stream.stopped_at:
                end.reason = f"parsing stopped at {stream.stopped_at}"
                break
            if stop_after_idle is not None and now - last_growth >= stop_after_idle:
                end.reason = f"no new output for {stop_after_idle:g} s (--stop-after-idle)"
                break
            if not text:
                sleep(min(interval, 0.5))
    except KeyboardInterrupt:
        end.reason = "interrupted (Ctrl-C)"
    finally:
        tail.close()
        display.end_line()
    return end
