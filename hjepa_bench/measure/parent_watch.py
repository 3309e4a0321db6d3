"""The one parent-process watchdog: a process that outlives its parent (SIGKILLed, crashed) acts
instead of running on as an orphan.  Used by a sweep's child, the DDP agent and ranks, and the
Ray executor's clean-up process (a program that imports it).  Imports nothing heavy."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

#: how often the parent is checked (s)
CHECK_S = 0.5


def watch_parent(parent: int, on_orphan: Callable[[], None], interval_s: float = CHECK_S,
                 while_alive: Callable[[], None] | None = None) -> None:
    """Block while ``parent`` is this process's parent, calling ``while_alive`` (if given) every
    ``interval_s`` seconds; then call ``on_orphan``."""
    while os.getppid() == parent:
        if while_alive is not None:
            while_alive()
        time.sleep(interval_s)
    on_orphan()


def start_parent_watch(parent: int, on_orphan: Callable[[], None], interval_s: float = CHECK_S) -> threading.Thread:
    """:func:`watch_parent` in a daemon thread (the process goes on with its work)."""
    thread = threading.Thread(target=watch_parent, args=(parent, on_orphan, interval_s), daemon=True,
                              name="hjepa-bench-parent-watch")
    thread.start()
    return thread
