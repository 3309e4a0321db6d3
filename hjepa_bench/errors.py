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


def read_yaml(path, what: str):
    """The YAML document in ``path``; a missing file or broken YAML is a UserError
    naming ``what`` ("options file", "thresholds file", ...)."""
    from pathlib import Path

    import yaml

    p = Path(path)
    try:
        return yaml.safe_load(p.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{what} not found: {p}.") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {p} is not a text file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {p} is not valid YAML{where}.") from None
