"""Errors the CLI turns into one clear sentence and a non-zero exit, and the one way every
command reads an input file and checks an output path, so that bad input ends as one.

* :func:`input_file`, :func:`read_bytes`, :func:`read_text`: a file that is missing, a folder,
  a FIFO or device, unreadable, or bigger than the reader's limit is a :class:`UserError`
  (never a hang on a FIFO, a MemoryError on a huge file or an OSError traceback).
* :func:`read_yaml`: the only YAML reader (config, grid, options and thresholds files): the
  size limit above, at most :data:`YAML_MAX_DEPTH` levels of nesting, :data:`YAML_MAX_ALIASES`
  aliases and :data:`YAML_MAX_VALUES` values once aliases are expanded, and plain JSON types
  only (see :func:`read_yaml`).
* :func:`output_path`: an output file or folder that cannot be written is refused before the
  work starts, not after it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from .format import fmt_bytes

#: what a plugin's code may raise that is caught and isolated like any error of that plugin:
#: every exception, and SystemExit (a plugin calling sys.exit must not end the command silently);
#: KeyboardInterrupt keeps its meaning (Ctrl-C stops the command)
PLUGIN_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)

#: size limits of the readers (a bigger file is refused with one sentence)
YAML_MAX_BYTES = 2**20  # config, grid, options and thresholds files are a few kB
JSON_MAX_BYTES = 64 * 2**20  # pytest-benchmark JSON (with --benchmark-save-data: a few MB)
RESULTS_MAX_BYTES = 256 * 2**20  # results.jsonl: about 10,000 records
LOG_MAX_BYTES = 256 * 2**20  # a training log of the upstream trainer
#: YAML structure limits: deeper nesting, more aliases or more values are refused
YAML_MAX_DEPTH = 50
YAML_MAX_ALIASES = 100
YAML_MAX_VALUES = 100_000


class UserError(Exception):
    """Bad input from the user (flag, config file, data path, device...).

    The message is one sentence that says what is wrong and, where possible,
    what to do.  The CLI prints it and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(exc: BaseException | str, limit: int | None = None) -> str:
    """The first line of an exception's message (or of a text), stripped, cut to ``limit``
    characters; "" when it says nothing."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    return text if limit is None else text[:limit]


def error_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: first line`` of an exception (the line cut to ``limit`` characters; just ``Type``
    when its message is empty): how a record or a report names a failure in one line."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}".rstrip(": ").rstrip()


# --------------------------------------------------------------------------- reading
def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def input_file(path: str | Path, what: str, max_bytes: int | None = None) -> Path:
    """``path`` as a Path once it is known to be a readable regular file of at most ``max_bytes``
    (``what`` names it in the sentence: "config file", "checkpoint"...).  Checked with ``stat``,
    so a FIFO is refused without being opened (opening one blocks until a writer comes)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {p}.") from None
    except NotADirectoryError:
        raise UserError(f"{what} {p} does not exist: a part of its path is a file, not a folder.") from None
    except OSError as exc:  # ELOOP, EACCES on a parent, ENAMETOOLONG...
        raise UserError(f"{what} {p} cannot be read ({_reason(exc)}).") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {p} is a folder, not a file.")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {p} is not a regular file (a FIFO, socket or device); give a file.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(f"{what} {p} is {fmt_bytes(st.st_size)}; the limit for a {what} is {fmt_bytes(max_bytes)}.")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {p} is not readable (permission denied).")
    return p


def read_bytes(path: str | Path, what: str, max_bytes: int) -> bytes:
    """The content of the regular file ``path`` (see :func:`input_file`); every failure is one sentence."""
    p = input_file(path, what, max_bytes)
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since the check, open returns at once
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise UserError(f"{what} {p} is not a regular file (a FIFO, socket or device); give a file.")
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be read ({_reason(exc)}).") from None
    if len(data) > max_bytes:  # it grew since the check
        raise UserError(f"{what} {p} is over the limit for a {what} ({fmt_bytes(max_bytes)}).")
    return data


def read_text(path: str | Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark is dropped); not UTF-8 is one sentence."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start} cannot be decoded).") from None


# --------------------------------------------------------------------------- YAML
def _loader() -> type:
    """A SafeLoader that counts nesting depth and aliases while composing, and loads the
    YAML types JSON lacks as JSON types: a timestamp as its ISO text, ``!!binary`` as its
    base64 text, ``!!set`` as what YAML defines it to be (a mapping whose values are null)."""
    import yaml  # type: ignore[import-untyped]
    from yaml.composer import ComposerError  # type: ignore[import-untyped]

    class LimitedLoader(yaml.SafeLoader):  # type: ignore[misc]  # (SafeLoader is Any: yaml has no stubs)
        def __init__(self, stream: str):
            super().__init__(stream)
            self.depth = 0
            self.aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > YAML_MAX_ALIASES:
                    raise ComposerError(None, None, f"more than {YAML_MAX_ALIASES} aliases (*name)",
                                        self.peek_event().start_mark)
                return super().compose_node(parent, index)
            self.depth += 1
            try:
                if self.depth > YAML_MAX_DEPTH:
                    raise ComposerError(None, None, f"nested more than {YAML_MAX_DEPTH} levels deep",
                                        self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_timestamp_text(self, node: Any) -> str:
            text: str = self.construct_yaml_timestamp(node).isoformat()
            return text

        def construct_binary_text(self, node: Any) -> str:
            return "".join(self.construct_scalar(node).split())

    LimitedLoader.add_constructor("tag:yaml.org,2002:timestamp", LimitedLoader.construct_timestamp_text)
    LimitedLoader.add_constructor("tag:yaml.org,2002:binary", LimitedLoader.construct_binary_text)
    LimitedLoader.add_constructor("tag:yaml.org,2002:set", yaml.SafeLoader.construct_yaml_map)
    return LimitedLoader


_LOADER: type | None = None


class _TooBig(Exception):
    pass


def _plain(value: Any, where: str, budget: list[int]) -> Any:
    """A fresh copy of ``value`` in plain JSON types (aliases expanded), within the value budget."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UserError(f"the key {key!r} {where}is not a name (keys must be text)")
            out[key] = _plain(item, f"under {key!r} ", budget)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, where, budget) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise UserError(f"the value {value!r} {where}has no JSON type")


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document ``text`` in plain JSON types (dict with str keys, list, str, int, float,
    bool, None), or a UserError that starts with ``where`` (e.g. "config file c.yaml")."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader()
    loader = None
    try:
        loader = _LOADER(text)
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        said = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = ", ".join(p for p in said if p) or str(exc).splitlines()[0]
        raise UserError(f"{where} is not valid YAML{at}: {problem}.") from None
    finally:
        if loader is not None:
            loader.dispose()
    try:
        return _plain(data, "", [YAML_MAX_VALUES])
    except _TooBig:
        raise UserError(f"{where} holds more than {YAML_MAX_VALUES:,} values once its aliases are expanded; "
                        "write the values out or use fewer aliases.") from None
    except UserError as exc:
        raise UserError(f"{where}: {exc}.") from None


def read_yaml(path: str | Path, what: str, max_bytes: int = YAML_MAX_BYTES) -> Any:
    """The YAML document in ``path`` in plain JSON types; a missing, special, huge, non-UTF-8,
    broken, too deep or alias-bombed file, or one with non-text keys, is a UserError naming
    ``what`` ("options file", "thresholds file", ...)."""
    text = read_text(path, what, max_bytes)
    return parse_yaml(text, f"{what} {path}")


# --------------------------------------------------------------------------- writing
def output_path(path: str | Path, what: str, *, folder: bool = False) -> Path:
    """``path`` as a Path once it is known it can be written: an existing target is a file
    (``folder``: a folder) and writable; a new one has a writable folder as its nearest
    existing ancestor (no regular file on the way).  Commands call it right after parsing,
    so a bad output path fails before the work, not after it."""
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be written ({_reason(exc)}).") from None
    if st is not None:
        if folder and not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {p} is a file, not a folder; give a folder (it is created if missing).")
        if not folder and stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {p} is a folder; give a file path.")
        if not folder and not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} {p} is not a regular file (a FIFO, socket or device); give a file path.")
        if not os.access(p, os.W_OK | (os.X_OK if folder else 0)):
            raise UserError(f"{what} {p} is not writable (permission denied).")
        why = _try_write(p if folder else p.parent, p if not folder else None)
        if why:
            raise UserError(f"{what} {p} is not writable ({why}).")
        return p
    ancestor = p.absolute().parent
    while True:
        try:
            st = os.stat(ancestor)
            break
        except (FileNotFoundError, NotADirectoryError):
            if ancestor.parent == ancestor:
                raise UserError(f"{what} {p} cannot be created (no existing folder above it).") from None
            ancestor = ancestor.parent
        except OSError as exc:
            raise UserError(f"{what} {p} cannot be created ({ancestor}: {_reason(exc)}).") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {p} cannot be created: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p} cannot be created: the folder {ancestor} is not writable.")
    why = _try_write(ancestor)
    if why:
        raise UserError(f"{what} {p} cannot be created: nothing can be written in {ancestor} ({why}).")
    return p


def _try_write(folder: Path, existing: Path | None = None) -> str | None:
    """Check by trying, not by asking (``os.access`` says yes to root in /proc): open ``existing``
    for appending (nothing is written), and create and remove a file and a folder in ``folder``
    (what a command writes there: its files and folders such as a report's configs/).  None when
    that worked, else why not."""
    import tempfile

    try:
        if existing is not None:
            with open(existing, "ab"):
                pass
        fd, name = tempfile.mkstemp(prefix=".hjepa-bench-check-", dir=folder)
        os.close(fd)
        os.unlink(name)
        os.rmdir(tempfile.mkdtemp(prefix=".hjepa-bench-check-", dir=folder))
    except OSError as exc:
        return _reason(exc)
    return None
