"""The verdict statuses, spelled once: a criterion (``criterion_*`` of a probe entry, a row of the
criteria table) passes, fails, or was not measured.  ``NOT_MEASURED`` is also what a report shows
where a figure has no measurement behind it."""
from __future__ import annotations

from typing import Any

PASS = "pass"
FAIL = "fail"
NOT_MEASURED = "not measured"
#: every verdict status
VERDICTS: tuple[str, ...] = (PASS, FAIL, NOT_MEASURED)
#: how records written before the one spelling stored NOT_MEASURED; read back as NOT_MEASURED
OLD_NOT_MEASURED = "not-measured"


def read_status(value: Any) -> Any:
    """A status as read from a record: the old spelling of NOT_MEASURED becomes NOT_MEASURED,
    anything else is returned as it is."""
    return NOT_MEASURED if value == OLD_NOT_MEASURED else value
