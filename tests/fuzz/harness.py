"""The fuzz harness: run the CLI in-process on generated input and judge the outcome.

Everything goes through ``hjepa_bench.cli.main(argv)`` and through files on disk.  The
few internal names this suite needs are all in the block just below, so a move of
modules (plugin/, hjepa/, measure/, ...) means editing only that block.

How a case is judged (:func:`problems`):

* every case: ``main`` never raises (argparse's ``SystemExit`` is its exit code), prints
  no ``Traceback``, finishes within its time limit (a FIFO given as a file must not
  block) and within a memory allowance (:data:`MEMORY_HEADROOM`);
* an *invalid* case (labelled so by its generator): exit code 2 before any work starts,
  and exactly one ``hjepa-bench: error: ...`` line (or argparse's ``hjepa-bench CMD:
  error: ...``) on stderr, as its last line;
* a *valid* case: no traceback and no hang; exit 0, 1 or 2 are all accepted (``valid``
  means "nothing here may crash", not "this must succeed"), but when it exits 2 the
  error is still one line.

The sentinel trick (:func:`engine_sentinel`, used as one fixture): training is what makes
valid cases slow, so the engine entry points in :data:`ENGINE_ENTRY_POINTS` are wrapped.
While the sentinel is armed, reaching one of them raises :class:`EngineReached` (a
``BaseException``, so no ``except Exception`` in the tool swallows it) *after* every
input of the command has been read and checked: config, flags, data set, model,
checkpoint, options, thresholds, grid, results of a resumed sweep.  For a valid case
that is success ("it would now train"); for an invalid case it is a failure ("the bad
input got through to the work").  A case that needs the real run (e.g. to see that the
result record can still be written) disarms it with ``Case.engine=True``.
"""
from __future__ import annotations

import contextlib
import faulthandler
import importlib
import importlib.metadata
import io
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ============================================================================ internal names
# The only places this suite touches hjepa_bench internals.  Update here when modules move.
CLI_MAIN = ("hjepa_bench.cli", "main")
#: main() builds its argparse parser on every call (~20 ms here); the parser is stateless between
#: parse_args() calls, so the suite builds it once (speed only, see cached_parser)
PARSER_FACTORY = ("hjepa_bench.cli", "build_parser")
#: entry-point group of the built-in plugins (pyproject.toml [project.entry-points.hjepa_bench])
ENTRY_POINT_GROUP = "hjepa_bench"
#: command -> (module, attribute path) of the call that starts the expensive work; every input
#: of the command has been read and checked before it (see the module docstring)
ENGINE_ENTRY_POINTS: dict[str, tuple[str, str]] = {
    # run: after the workload's prepare() built the data set, loader, model and optimizer
    "run": ("hjepa_bench.measure.runner", "_Loop"),
    # sweep: after planning (every grid point resolved) and reading results.jsonl to resume
    "sweep": ("hjepa_bench.measure.sweep", "run_in_child"),
    # validate: after setup() built the data sets, loaders and model
    "validate": ("hjepa_bench.measure.validation_run", "_ValidationRun.train"),
    # eval: after the checkpoint, config and model are loaded and the data sets are built
    "eval": ("hjepa_bench.measure.evaluate", "_extract"),
}
REPO_MARKERS = ("hjepa_bench/",)  # frames of the tool itself, for the crash site
#: what a plugin module written by a case imports (the plugin API)
PLUGIN_API_IMPORTS = "from hjepa_bench import Probe, ReportSection, hookimpl\n"


def golden_checkpoint(validation_run: Any) -> dict[str, Any]:
    """validate's run object, caught at its engine entry point (after setup): a checkpoint
    in the layout validate writes, without training (model_state_dict, config, epoch)."""
    return {"epoch": 1, "model_state_dict": validation_run.trainer.model.state_dict(),
            "config": dict(validation_run.values), "global_step": 0}
# ============================================================================

#: per-case wall-clock limit (s); a case beyond it is a hang
CASE_TIMEOUT_S = float(os.environ.get("HJEPA_FUZZ_TIMEOUT", "8"))
#: limit for cases built around a FIFO: a reader that checks is_file() returns at once
#: (cases built to hang a reader without limits, e.g. an alias bomb, set a short limit too)
FIFO_TIMEOUT_S = 0.75
#: the process may grow by this much during a case (RLIMIT_DATA); beyond it -> MemoryError
MEMORY_HEADROOM = 1536 * 2**20
#: a case stuck where signals cannot reach it: dump every thread's stack and exit
BACKSTOP_S = 120

ERROR_LINE = re.compile(r"^hjepa-bench(?: [a-z][a-z-]*)?: error: \S")


class EngineReached(BaseException):
    """Raised by the armed sentinel when a command starts its expensive work."""

    def __init__(self, command: str, args: tuple = ()):
        super().__init__(f"{command}: the engine was reached")
        self.command = command
        self.call_args = args  # what the engine was called with (see golden_checkpoint)


class CaseTimeout(BaseException):
    """Raised in the main thread when a case runs past its limit."""


# --------------------------------------------------------------------------- cases
class Special:
    """A file-system object that is not a plain file with content."""

    def __init__(self, kind: str, size: int = 0, target: str = ""):
        self.kind, self.size, self.target = kind, size, target  # fifo | dir | sparse | symlink

    def __repr__(self) -> str:
        size = f", {self.size}" if self.size else ""
        target = f", {self.target!r}" if self.target else ""
        return f"Special({self.kind!r}{size}{target})"


FIFO, DIRECTORY = Special("fifo"), Special("dir")


class TorchSave:
    """A file written with ``torch.save(obj)`` (checkpoints)."""

    def __init__(self, obj: Any, describe: str):
        self.obj, self.describe = obj, describe

    def __repr__(self) -> str:
        return f"TorchSave({self.describe})"


@dataclass
class Case:
    """One generated input: argv (``{d}`` = the case folder) and the files it names."""

    target: str  # the generator family, e.g. "config", "flags:sweep"
    valid: bool  # the label, by construction
    argv: list[str]
    files: dict[str, Any] = field(default_factory=dict)  # relative path -> bytes | str | Special | TorchSave
    label: str = ""  # what was done, for the catalog
    engine: bool = False  # disarm the sentinel: really run the work
    timeout: float | None = None
    warn_line: int | None = None  # when it exits 0, stderr must name this line (a skipped bad record)
    check: Callable[[Outcome, Path], list[str]] | None = None  # extra oracle

    def __repr__(self) -> str:
        files = {k: (v if not isinstance(v, (bytes, str)) or len(v) < 300 else f"<{len(v)} bytes>")
                 for k, v in self.files.items()}
        return (f"Case({self.target}, {'valid' if self.valid else 'invalid'}, {self.label!r}, argv={self.argv}, "
                f"files={files})")


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None = None
    out: str = ""
    err: str = ""
    exc: BaseException | None = None
    tb: str = ""
    site: str = ""
    hang: bool = False
    engine: bool = False
    engine_args: tuple = ()
    seconds: float = 0.0


# --------------------------------------------------------------------------- running
def _main() -> Callable[[list[str]], int]:
    module, name = CLI_MAIN
    return getattr(importlib.import_module(module), name)


class _Sentinel:
    armed = False  # armed only inside invoke(); other tests in the session call through


SENTINEL = _Sentinel()


def _resolve(module: str, attr: str) -> tuple[Any, str, Any]:
    obj: Any = importlib.import_module(module)
    parts = attr.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    return obj, parts[-1], getattr(obj, parts[-1])


@contextlib.contextmanager
def engine_sentinel() -> Iterator[_Sentinel]:
    """Wrap every engine entry point: raise EngineReached while armed, else call through."""
    saved = []
    for command, (module, attr) in ENGINE_ENTRY_POINTS.items():
        owner, name, original = _resolve(module, attr)

        def wrapper(*args: Any, _original: Any = original, _command: str = command, **kwargs: Any) -> Any:
            if SENTINEL.armed:
                raise EngineReached(_command, args)
            return _original(*args, **kwargs)

        setattr(owner, name, wrapper)
        saved.append((owner, name, original))
    try:
        yield SENTINEL
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@contextlib.contextmanager
def cached_entry_points() -> Iterator[None]:
    """Speed only: every ``main()`` call scans all installed distributions for plugin entry
    points (0.2-0.6 s here).  Serve the tool's own scan (calls from its package) from the
    distributions that declare its entry-point group, read once; every other caller gets
    the real scan."""
    md = importlib.metadata

    class _Frozen:  # what the manager reads of a distribution, read once
        def __init__(self, dist: Any):
            self.entry_points = list(dist.entry_points)
            self.metadata = {"Name": dist.metadata["Name"]}
            self.version = dist.version

    keep = [_Frozen(d) for d in md.distributions() if any(ep.group == ENTRY_POINT_GROUP for ep in d.entry_points)]
    original = md.distributions
    package = CLI_MAIN[0].split(".")[0]

    def distributions(**kw: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if kw or not caller.startswith(package):  # only the tool's own plugin scan is served from the cache
            return original(**kw)
        return iter(keep)

    md.distributions = distributions  # type: ignore[assignment]
    try:
        yield
    finally:
        md.distributions = original  # type: ignore[assignment]


@contextlib.contextmanager
def cached_parser() -> Iterator[None]:
    """Speed only: build the CLI's argparse parser once for the whole suite, for command lines that
    load no ``-p`` plugin (the fuzzed ones); a command line with ``-p`` gets its own parser (the
    context may stay open for the whole session, and later tests load plugins that add flags)."""
    owner, name, original = _resolve(*PARSER_FACTORY)
    parser = original()
    setattr(owner, name, lambda plugins=(): original(plugins) if plugins else parser)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _vm_data() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # not Linux: no allowance (a runaway allocation then hits the time limit)


@contextlib.contextmanager
def _memory_allowance() -> Iterator[None]:
    used = _vm_data()
    if used is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = used + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


def _repo_root() -> str:
    module = importlib.import_module(CLI_MAIN[0].split(".")[0])
    return str(Path(module.__file__).resolve().parents[1]).replace(os.sep, "/") + "/"


def crash_site(exc: BaseException) -> str:
    """The innermost frame of the tool itself: ``hjepa_bench/x.py:123 (function)``; a frame
    of a case's own plugin module counts too (it names the plugin that broke)."""
    root, site = _repo_root(), ""
    for fs in traceback.extract_tb(exc.__traceback__):
        path = fs.filename.replace(os.sep, "/")
        if path.startswith(root) and path[len(root):].startswith(REPO_MARKERS):
            site = f"{path[len(root):]}:{fs.lineno} ({fs.name})"
        elif "/fuzz_plugin_" in path:
            site = f"the case's plugin {Path(path).name}:{fs.lineno} ({fs.name})"
    return site or "outside hjepa_bench"


def invoke(argv: list[str], *, timeout: float = CASE_TIMEOUT_S, engine: bool = False) -> Outcome:
    """``main(argv)`` with captured output, a time limit and a memory allowance."""
    main = _main()
    res = Outcome(argv=list(argv))
    out, err = io.StringIO(), io.StringIO()
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    SENTINEL.armed = not engine
    faulthandler.dump_traceback_later(BACKSTOP_S, exit=True)
    t0 = time.perf_counter()
    try:
        with _memory_allowance(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                res.rc = main(list(argv))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except SystemExit as exc:  # argparse
        res.rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except EngineReached as exc:
        res.engine = True
        res.engine_args = exc.call_args
    except CaseTimeout as exc:
        res.hang = True
        res.site = crash_site(exc)
    except BaseException as exc:
        res.exc = exc
        res.tb = traceback.format_exc()
        res.site = crash_site(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old_handler)
        SENTINEL.armed = False
    res.seconds = time.perf_counter() - t0
    res.out, res.err = out.getvalue(), err.getvalue()
    return res


def materialize(case: Case, folder: Path) -> list[str]:
    """Write the case's files into ``folder``; return argv with ``{d}`` filled in."""
    for rel, content in case.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Special):
            if content.kind == "fifo":
                os.mkfifo(path)
            elif content.kind == "dir":
                path.mkdir(exist_ok=True)
            elif content.kind == "sparse":
                with open(path, "wb") as fh:
                    fh.truncate(content.size)
            elif content.kind == "symlink":
                os.symlink(content.target.replace("{d}", str(folder)), path)
            else:
                raise ValueError(content.kind)
        elif isinstance(content, TorchSave):
            import torch

            torch.save(content.obj, path)
        elif isinstance(content, bytes):
            path.write_bytes(content.replace(b"{d}", str(folder).encode()))
        else:
            path.write_text(content.replace("{d}", str(folder)))
    return [a.replace("{d}", str(folder)) for a in case.argv]


def problems(case: Case, res: Outcome, folder: Path | None = None) -> list[str]:
    """What is wrong with this outcome (empty: the case passes).  Each entry starts with
    a kind ("traceback", "hang", ...) and is stable enough to group cases by."""
    found: list[str] = []
    if res.exc is not None:
        found.append(f"traceback: {type(res.exc).__name__} at {res.site}")
    elif "Traceback (most recent call last)" in res.err:
        found.append("traceback printed on stderr")
    if res.hang:
        found.append(f"hang: no answer within the time limit (stuck at {res.site})")
    if res.exc is not None or res.hang:
        return found
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ERROR_LINE.match(ln)]
    if not case.valid:
        if res.engine:
            found.append("accepted: the invalid input got through to the work (no error before it started)")
        elif res.rc != 2:
            found.append(f"accepted: exit {res.rc} on invalid input"
                         + (" (status: error)" if res.rc == 1 and "status: error" in res.out + res.err else ""))
    if res.rc == 2 and not res.engine and (len(errors) != 1 or lines[-1] != errors[0]):
        found.append(f"message: exit 2 with {len(errors)} error line(s) on stderr "
                     f"({'last line is not the error' if errors else 'no hjepa-bench: error line'})")
    if case.warn_line is not None and res.rc == 0 and not res.engine \
            and not re.search(rf"\bline {case.warn_line}\b", res.err):
        found.append(f"silent: exit 0 and no word about the bad line {case.warn_line}")
    if case.check is not None and folder is not None:
        found.extend(case.check(res, folder))
    return found


# --------------------------------------------------------------------------- a fuzz target
@dataclass
class Finding:
    problem: str
    case: Case
    outcome: Outcome


class Target:
    """Runs the cases of one fuzz target and collects what they find."""

    def __init__(self, name: str, base: Path, defaults: dict[str, Any] | None = None):
        self.name, self.base = name, base
        self.defaults = defaults or {}  # files every case gets (the golden inputs), unless it writes its own
        self.cases = 0
        self.valid = 0
        self.findings: list[Finding] = []
        self.seconds = 0.0

    def _outside(self) -> set[str]:
        """What is in the folders above the case folders (a case must not write there)."""
        seen = set()
        for d in (self.base, self.base.parent, self.base.parent.parent):
            seen |= {str(p) for p in d.iterdir()}
        return seen

    def run(self, case: Case) -> Outcome:
        before = self._outside()
        folder = Path(tempfile.mkdtemp(prefix="c", dir=self.base))
        cwd = os.getcwd()
        added_path = str(folder)
        sys.path.insert(0, added_path)  # -p plugin modules written by a case
        try:
            own = {k.split("/")[0] for k in case.files}
            defaults = {k: v for k, v in self.defaults.items() if k.split("/")[0] not in own}
            materialize(Case(case.target, case.valid, [], defaults), folder)
            argv = materialize(case, folder)
            os.chdir(folder)  # default output folders land in the case folder
            timeout = case.timeout or (FIFO_TIMEOUT_S if _has_fifo(case) else CASE_TIMEOUT_S)
            res = invoke(argv, timeout=timeout, engine=case.engine)
            found = problems(case, res, folder)
            escaped = sorted(self._outside() - before - {str(folder)})
            if escaped:
                found.append(f"escaped: wrote {escaped[0]} outside the case folder")
                for e in escaped:
                    shutil.rmtree(e, ignore_errors=True) if os.path.isdir(e) else os.unlink(e)
            for problem in found:
                self.findings.append(Finding(problem, case, res))
        finally:
            os.chdir(cwd)
            if added_path in sys.path:
                sys.path.remove(added_path)
            shutil.rmtree(folder, ignore_errors=True)
        self.cases += 1
        self.valid += case.valid
        self.seconds += res.seconds
        RECORDER.add(self.name, case, res, [f.problem for f in self.findings if f.outcome is res])
        return res

    def summary(self) -> str:
        groups: dict[str, list[Finding]] = {}
        for f in self.findings:
            groups.setdefault(f"{f.problem} [{f.case.target}]", []).append(f)
        lines = [f"fuzz target {self.name}: {self.cases} cases ({self.valid} valid), "
                 f"{len(self.findings)} findings in {len(groups)} groups, {self.seconds:.1f} s in main()"]
        for key, fs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            smallest = min(fs, key=lambda f: len(repr(f.case)))
            lines.append(f"- {key}: {len(fs)} case(s); e.g. {smallest.case.label!r}: argv {smallest.outcome.argv}")
            if smallest.outcome.rc is not None or smallest.outcome.err:
                lines.append(f"    exit {smallest.outcome.rc}; stderr tail: {smallest.outcome.err.strip()[-300:]!r}")
        return "\n".join(lines)

    def assert_clean(self) -> None:
        assert not self.findings, self.summary()


def _has_fifo(case: Case) -> bool:
    return any(isinstance(v, Special) and v.kind == "fifo" for v in case.files.values())


class _Recorder:
    """Every case's outcome, written as JSON lines when HJEPA_FUZZ_RECORD names a file
    (to sort the findings by their cause)."""

    def __init__(self) -> None:
        self.path = os.environ.get("HJEPA_FUZZ_RECORD")
        self.counts: dict[str, int] = {}

    def add(self, target: str, case: Case, res: Outcome, found: list[str]) -> None:
        self.counts[target] = self.counts.get(target, 0) + 1
        if not self.path:
            return
        files = {}
        for k, v in case.files.items():
            if isinstance(v, bytes):
                v = v.decode("utf-8", "backslashreplace")
            files[k] = v[:2000] if isinstance(v, str) else repr(v)
        row = {"target": target, "family": case.target, "valid": case.valid, "label": case.label,
               "argv": res.argv, "files": files, "rc": res.rc, "engine": res.engine, "hang": res.hang,
               "exc": None if res.exc is None else type(res.exc).__name__, "site": res.site,
               "err": res.err[-600:], "problems": found, "seconds": round(res.seconds, 3),
               "tb": res.tb[-3000:]}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


RECORDER = _Recorder()
