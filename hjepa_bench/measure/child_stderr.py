"""What a sweep's child process prints on stderr: kept in a file while the child runs, passed on to
the parent's stderr when it ends, and read for an out-of-memory the device printed without raising
(``Backend.printed_oom``: a Metal command buffer aborted for lack of memory)."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def capture(path: str) -> None:
    """(In the child) send file descriptor 2, where the device runtime prints too, to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)


def pass_on(path: str) -> str:
    """The child's stderr, written to ours (the user sees what the child printed, once it ended)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
    return text


def printed_oom(text: str, device: str, plugin_args: Sequence[str]) -> str | None:
    """The line of ``text`` where the backend ``device`` printed that it ran out of memory, or None."""
    if not text:
        return None
    from ..plugin.manager import build_plugins

    try:
        return build_plugins(list(plugin_args)).backends()[device].printed_oom(text)
    except Exception:
        return None
