"""Errors the CLI turns into one clear sentence and a non-zero exit."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (flag, config file, data path, device...).

    The message is one sentence that says what is wrong and, where possible,
    what to do.  The CLI prints it and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
