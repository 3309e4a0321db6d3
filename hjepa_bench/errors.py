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


#: the largest input file a reader takes unless it names its own limit
MAX_INPUT_BYTES = 64 * 2**20


def read_bytes(path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of ``path``.  A missing file, anything that is not a regular file (a folder, a
    FIFO, a device), a file above ``max_bytes`` or one that cannot be read is a UserError naming
    ``what`` ("results file", "benchmark file", ...).  The type and size are checked before
    the file is opened, so a FIFO never blocks and a huge file is never loaded."""
    import os
    import stat
    from pathlib import Path

    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{what} not found: {p}.") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {p} ({exc.strerror or type(exc).__name__}).") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UserError(f"{what} {p} is {kind}; give a file.")
    if st.st_size > max_bytes:
        raise UserError(f"{what} {p} holds {st.st_size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                        f"a {what} may have.")
    try:
        with open(p, "rb") as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {p} ({exc.strerror or type(exc).__name__}).") from None


def read_text(path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """:func:`read_bytes` decoded as UTF-8; a file that is not UTF-8 text is a UserError too."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text.") from None
