"""The objects plugins provide: backends, workloads, probes, report sections and executors.

A plugin module implements one or more ``hjepa_bench_register_*`` hooks (see
:mod:`hjepa_bench.plugin.hookspecs`) and calls ``register(obj)`` with instances of the
classes below.  Every method has a working default where one makes sense, so a
plugin overrides only what it needs.

Units: seconds (``*_s``), bytes (``*_bytes``), fractions in [0, 1] (``*_frac``).
"""
from __future__ import annotations

import abc
import argparse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    Protocol,
    get_args,
    runtime_checkable,
)

from ..config import PRECISIONS  # the precisions a step trains in: one list, in the config's schema
from ..errors import UserError
from ..status import VERDICTS

if TYPE_CHECKING:  # torch is imported where a device is used, not by a command that only reads files
    import pydantic
    import torch

    from ..thresholds import Thresholds

#: how the steps of a data-parallel rank treat gradients (``PreparedWorkload.set_grad_sync``)
GRAD_SYNC_MODES = ("sync", "no_sync", "local")


# --------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # why not, in one sentence; empty when available


@dataclass(frozen=True)
class MemoryReading:
    """One memory reading of a backend.  ``None`` means the backend cannot tell."""

    current_bytes: int | None
    peak_bytes: int | None
    total_bytes: int | None
    reserved_bytes: int | None = None  # allocator cache (CUDA reserved, MPS driver)
    source: str = ""  # which API the numbers came from
    #: the most the allocator held at once (reserved: live blocks + cache) since the peak was reset
    peak_reserved_bytes: int | None = None
    #: device memory in use outside torch's allocator now (CUDA context, library workspaces, other processes)
    outside_allocator_bytes: int | None = None


class Checked:
    """Something that may not run here (a backend, an executor): ``availability`` asks
    ``check_availability`` once and remembers."""

    def availability(self) -> Availability:
        """Whether this can run here (``check_availability``, asked once)."""
        if getattr(self, "_availability", None) is None:
            self._availability = self.check_availability()
        return self._availability

    def check_availability(self) -> Availability:
        """Find out whether this can run here, and why not (default: it can)."""
        return Availability(True)


class Backend(Checked, abc.ABC):
    """A device kind torch can train on (cpu, cuda, mps).

    Timing contract: ``synchronize`` waits for all queued work; ``event`` returns
    an object with ``record()`` and ``elapsed_s(other)`` that measures on the
    device timeline (device events where they exist, synced wall time otherwise).

    Shared by every backend: ``availability`` asks ``check_availability`` once and
    remembers; ``supported_precisions`` tries each precision once
    (``precision_reason``: a tiny autocast matmul with backward on the device, unless
    a backend knows better) and remembers; ``is_oom`` recognises the backend's
    out-of-memory error from the class attributes below, in ``exc`` and in what it
    was raised ``from`` (5 levels).
    """

    name: str = ""
    #: RuntimeError message fragments that are this backend's OOM even when another device is named
    definite_oom_markers: tuple[str, ...] = ()
    #: exception types that are always this backend's OOM
    definite_oom_types: tuple[type[BaseException], ...] = ()
    #: message fragments that name another device: that error is not this backend's
    foreign_markers: tuple[str, ...] = ()
    #: exception types that are this backend's OOM (unless another device is named)
    oom_types: tuple[type[BaseException], ...] = ()
    #: RuntimeError message fragments of this backend's OOM (unless another device is named)
    oom_markers: tuple[str, ...] = ()
    #: True when asking this backend for its facts (the precision probes) leaves memory on the device in
    #: the asking process (a CUDA context, cached blocks): a sweep then asks in a child process
    probes_hold_device: bool = False
    #: text the device runtime PRINTS on stderr, without raising, when it runs out of memory (a Metal
    #: command buffer that failed for lack of memory): a sweep reads its child's stderr for it
    printed_oom_markers: tuple[str, ...] = ()

    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @abc.abstractmethod
    def synchronize(self) -> None: ...

    def has_device_events(self) -> bool:
        return False

    def event(self) -> TimingEvent:
        return WallClockEvent(self)

    @abc.abstractmethod
    def memory(self) -> MemoryReading:
        """Current, peak and total memory as this backend measures it."""

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window (before the measured steps)."""

    def sample_memory(self, where: str = "step end") -> None:
        """Called after every step (``where`` = "step end") and by a workload where its memory peaks
        (the H-JEPA step: "forward end", when the activations are live); backends without a peak API
        track the peak here and name the points they sampled in ``MemoryReading.source``."""

    def supported_precisions(self) -> dict[str, str]:
        """Map of precision name -> "" if it works, else why not (one sentence); tried once."""
        if getattr(self, "_precisions", None) is None:
            avail = self.availability()
            if not avail.available:
                self._precisions = {p: avail.reason for p in PRECISIONS}
            else:
                self._precisions = {p: self.precision_reason(p) for p in PRECISIONS}
        return dict(self._precisions)

    def precision_reason(self, precision: str) -> str:
        """"" if ``precision`` trains on this device, else why not: by default, tried on the device."""
        from .precision import probe_precision

        return probe_precision(self.device().type, precision)

    def grad_scaler(self, precision: str) -> Any | None:
        """A GradScaler for fp16 training on this device, or None."""
        return None

    def is_oom(self, exc: BaseException) -> bool:
        """True when ``exc`` (or what it was raised from) is this backend's out-of-memory error."""
        for e in exception_chain(exc):
            msg = str(e)
            if isinstance(e, RuntimeError) and any(m in msg for m in self.definite_oom_markers):
                return True
            if isinstance(e, self.definite_oom_types):
                return True
            if any(m in msg for m in self.foreign_markers):
                continue
            if isinstance(e, self.oom_types):
                return True
            if isinstance(e, RuntimeError) and any(m in msg for m in self.oom_markers):
                return True
        return False

    def printed_oom(self, stderr_text: str) -> str | None:
        """The first line of ``stderr_text`` (what a run printed) that says this device ran out of memory
        without raising (``printed_oom_markers``), or None."""
        for line in stderr_text.splitlines():
            if any(m in line for m in self.printed_oom_markers):
                return line.strip()
        return None

    def fingerprint(self) -> dict[str, Any]:
        """Device facts for the environment fingerprint (name, memory, ...)."""
        return {}


def exception_chain(exc: BaseException | None, depth: int = 5) -> Iterator[BaseException]:
    """``exc`` and what it was raised ``from`` (a wrapped error is still the same error), ``depth`` deep."""
    seen = 0
    while exc is not None and seen < depth:
        yield exc
        exc = exc.__cause__
        seen += 1


class TimingEvent(abc.ABC):
    @abc.abstractmethod
    def record(self) -> None: ...

    @abc.abstractmethod
    def elapsed_s(self, end: TimingEvent) -> float:
        """Seconds from this event to ``end`` (both recorded; may synchronize)."""


class DeviceEvent(TimingEvent):
    """A torch device event (``torch.cuda.Event``, ``torch.mps.event.Event``) made
    with ``enable_timing=True``: timed on the device timeline, no host sync to record."""

    def __init__(self, event: Any):
        self.event = event

    def record(self) -> None:
        self.event.record()

    def elapsed_s(self, end: TimingEvent) -> float:
        assert isinstance(end, DeviceEvent)
        end.event.synchronize()
        return float(self.event.elapsed_time(end.event)) / 1000.0  # ms -> s


class WallClockEvent(TimingEvent):
    """Host wall time taken after a device sync: honest on every backend."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.t: float | None = None

    def record(self) -> None:
        import time

        self._backend.synchronize()
        self.t = time.perf_counter()

    def elapsed_s(self, end: TimingEvent) -> float:
        assert isinstance(end, WallClockEvent) and self.t is not None and end.t is not None
        return end.t - self.t


# --------------------------------------------------------------------------- workloads
class PhaseClock:
    """The phase boundaries of one step: each on the host clock (``time.perf_counter``) and, when the
    runner hands the workload an event factory (``PreparedWorkload.phase_events``: a backend with device
    events), as a device event recorded on the stream at the same point, so the runner can tell how far
    the device lagged behind the host at each boundary.  ``mark()`` opens the step, ``mark(name)`` ends
    the phase ``name``; ``host_s()`` is the host time of each phase."""

    def __init__(self, events: Callable[[], TimingEvent] | None = None):
        self._events = events
        #: (the phase that ends here, "" at the start; host time; the device event or None)
        self.marks: list[tuple[str, float, TimingEvent | None]] = []

    def mark(self, phase: str = "") -> None:
        import time

        event = None
        if self._events is not None:
            event = self._events()
            event.record()
        self.marks.append((phase, time.perf_counter(), event))

    def host_s(self) -> dict[str, float]:
        return {m[0]: m[1] - p[1] for p, m in zip(self.marks, self.marks[1:])}


@dataclass
class StepOutput:
    """What one training step hands back, without forcing a device sync."""

    loss: torch.Tensor  # 0-dim, detached, on the device
    grad_norm: torch.Tensor | None = None  # 0-dim, on the device (pre-clipping)
    host_s: dict[str, float] = field(default_factory=dict)  # named host phases, seconds
    #: the step's phase boundaries (host times and, when asked for, device events): the runner's timeline
    phases: PhaseClock | None = None
    lr: float | None = None  # the learning rate this step applied (None: the workload does not say)
    lr_in_warmup: bool | None = None  # True while the LR schedule is still in its warm-up


@runtime_checkable
class Trainer(Protocol):
    """What the probes use of a workload's trainer (``PreparedWorkload.trainer``), as
    :class:`hjepa_bench.hjepa.step.HJEPAStep` has it.  Optional, read when present: ``device``,
    ``precision``, ``variant``, ``scaler``, ``keep_features`` and ``last_features``."""

    model: Any  # the torch.nn.Module trained
    optimizer: Any  # its torch.optim.Optimizer

    def loss(self, images: Any, masks: Any) -> Any: ...

    def make_masks(self, batch_size: int) -> Any: ...

    def autocast(self) -> AbstractContextManager[Any]: ...


class PreparedWorkload(abc.ABC):
    """A workload built for one config on one device, ready to step."""

    #: samples per step
    batch_size: int = 0
    #: True when fp16 training uses a GradScaler (a non-finite gradient is then
    #: a skipped step, not divergence)
    uses_grad_scaler: bool = False
    #: True when ``step()`` blocks on the device inside its host work (the reference H-JEPA masks
    #: read a result back per sample): its first read-back would wait for the previous step's queued
    #: device work and put that time in a host phase.  The runner then synchronizes just before
    #: ``step()`` and counts that wait as device time (``StepSample.device_wait_s``).  Such a step
    #: syncs anyway, so this costs no overlap; a step that never syncs keeps False.
    syncs_in_step: bool = False
    #: set by the runner when the backend has device events: the factory a step hands to its
    #: :class:`PhaseClock`, so its phase boundaries are also recorded on the device's stream
    phase_events: Callable[[], TimingEvent] | None = None

    # Optional capabilities, None when the workload has none.  Probes use them (``epoch_costs``
    # measures worker start-up on the loader, a validation forward and a checkpoint on the trainer).
    #: the training ``torch.utils.data.DataLoader`` the batches come from
    loader: Any = None
    #: the trainer (:class:`Trainer`: an object like :class:`hjepa_bench.hjepa.step.HJEPAStep`)
    trainer: Trainer | None = None

    @abc.abstractmethod
    def batches(self) -> Iterator[Any]:
        """An endless iterator of batches (as the DataLoader yields them)."""

    @abc.abstractmethod
    def step(self, batch: Any) -> StepOutput:
        """One full training step on ``batch`` (moves it to the device itself)."""

    def params(self) -> dict[str, int]:
        return {"total": 0, "trainable": 0}

    def model(self) -> torch.nn.Module | None:
        return None

    # Data parallelism (``run --nproc-per-node N``): each rank prepares the workload as usual (its
    # DataLoader takes its own shard of the data) and then calls these.
    def data_parallel(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Make ``step`` average the gradients of all ranks: build a module that holds every trainable
        parameter and whose forward computes the loss, and run the step's forward through ``wrap(module)``
        (a ``DistributedDataParallel``).  Wrapping a model whose submodules the step calls directly
        synchronises nothing, and raises nothing.  A workload that cannot run data-parallel says so (this
        default)."""
        raise UserError(f"workload {type(self).__name__} cannot run data-parallel (--nproc-per-node above 1): "
                        "it does not implement data_parallel().")

    def set_grad_sync(self, mode: str) -> None:
        """After ``data_parallel``, how the next steps treat gradients (``GRAD_SYNC_MODES``): ``sync``
        (the default: averaged across the ranks), ``no_sync`` (the same data-parallel step without the
        all-reduce: DDP's ``no_sync``) or ``local`` (the wrapper bypassed: the plain single-process step)."""
        raise UserError(f"workload {type(self).__name__} cannot run data-parallel: it does not implement "
                        "set_grad_sync().")

    def close(self) -> None:  # noqa: B027 - optional: a workload that holds nothing closes nothing
        """Release DataLoader workers and other resources."""


class Workload(abc.ABC):
    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def prepare(self, config: Mapping[str, Any], backend: Backend) -> PreparedWorkload: ...


# --------------------------------------------------------------------------- probes
#: a probe's ``cost``: cheap probes run by default, costly ones only when chosen
ProbeCost = Literal["cheap", "costly"]
PROBE_COSTS: tuple[str, ...] = get_args(ProbeCost)


@dataclass
class RunContext:
    """What a probe sees of a run.  ``artifacts_dir`` is a folder for files a
    probe writes (traces); None when the run keeps no files."""

    config: Mapping[str, Any]
    backend: Backend
    workload: PreparedWorkload
    env: Mapping[str, Any]
    artifacts_dir: str | None = None


@dataclass
class StepSample:
    """One measured step.  ``step_time_s`` is filled when its window closes."""

    index: int  # 0-based, counting warm-up steps
    warmup: bool
    data_wait_s: float
    host_s: float  # wall time from calling step() to its return (dispatch + host work)
    device_wait_s: float = 0.0  # waiting for the previous step's device work before step() (syncs_in_step)
    #: with a device timeline (``StepOutput.phases`` with events): the part of ``host_s`` during which the
    #: device was still busy with work queued before the phase began (the host waited, or overlapped it),
    #: and the part of ``data_wait_s`` during which the device was still busy with earlier steps
    host_wait_s: float | None = None
    data_overlap_s: float | None = None
    step_time_s: float | None = None
    loss: float | None = None
    lr: float | None = None  # the learning rate the step applied (StepOutput.lr)
    lr_in_warmup: bool | None = None
    extra: bool = False  # an extra step run after the measured window for a probe (never timed)


#: the success criteria a probe's verdict can feed (:class:`FactVerdict`), in the report's order
CRITERIA = ("stability", "performance", "learning", "quality", "compatibility")
#: what a verdict says (:data:`hjepa_bench.status.VERDICTS`)
VERDICT_STATUSES = VERDICTS


@dataclass(frozen=True)
class FactVerdict:
    """One fact a probe judged itself (:meth:`Probe.verdicts`): a checklist item that feeds the
    success criterion ``criterion`` (one of :data:`CRITERIA`).  A criterion combines its facts:
    any ``fail`` fails it, all ``pass`` pass it, else it is ``not measured``."""

    criterion: str
    fact: str  # a short name, unique within the probe (the checklist item is "PROBE.fact")
    name: str  # the checklist line: what was checked
    status: str  # one of VERDICT_STATUSES
    evidence: str  # the number behind the verdict, in words
    value: Any = None

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; the criteria are {', '.join(CRITERIA)}")
        if self.status not in VERDICT_STATUSES:
            raise ValueError(f"unknown verdict {self.status!r}; a verdict is {', '.join(VERDICT_STATUSES)}")


class Probe:
    """Observes a run and writes ``record["probes"][name]``.

    Hooks are called in this order: ``start`` once before warm-up, ``after_step``
    after every step (keep it cheap: it runs inside the timed loop), then
    ``finish`` once with the run's result record (metrics and series filled),
    which returns the probe's JSON-serialisable entry (or None for no entry).
    A probe that raises is recorded as ``{"status": "failed", "error": ...}``
    and is not called again; the run and the other probes go on.

    ``cost``: "cheap" probes run by default; "costly" ones only when chosen
    with ``--probes NAME,...`` or ``--probes all``.

    ``headline``: the entry's headline figures, dotted paths into it (``"degradation.change_pct"``):
    the columns ``hjepa-bench export`` gives the probe besides its status and summary; empty: every
    top-level number and true/false of the entry.

    ``extra_steps``: a probe that slows the steps it watches (the profiler) asks for
    steps of its own.  After the measured window closes (metrics and series are
    final), the runner calls ``before_extra_steps`` once, runs the largest request
    of steps, calling ``after_extra_step`` after each (``sample.extra`` is True and
    its index follows the measured steps), then ``finish``.  Those steps are in no
    timing figure, series or other probe's ``after_step``.  A step that fails ends
    them (``metrics.extra_steps["error"]``); the measurement stays as it was.

    A probe judges its own entry and says what it means for a report (pure: data in, data out;
    a report asks the registered probes, each about the entry stored under its name, when the
    entry's status is ok):

    * ``judge(entry, thresholds, record)``: the entry judged with ``thresholds``
      (:class:`hjepa_bench.thresholds.Thresholds`), on a copy the probe may change; ``finish``
      judges with the defaults, a report again with its ``--thresholds``.  Judging twice gives the
      same entry; an entry the judge cannot judge (a shorter one) comes back as it is.
    * ``facts(entry, record)``: the facts of the success criteria and the checklist the entry
      measured, by the field names of :class:`hjepa_bench.analysis.criteria.Facts` (or of
      ``criteria.RECORD_FACTS``: facts the decision matrix reads per record).
    * ``verdicts(entry, thresholds)``: checklist items the probe judges itself
      (:class:`FactVerdict`), each feeding one success criterion.
    * ``advise(entry, advice)``: the entry as a report shows it once the report has given its one
      advice (``{"workers": sentence}``).
    * ``validation_entry(record, result)``: the entry of a validation run (``hjepa-bench
      validate``) from its record (config, env, metrics, series) and its result; None: no entry.

    ``entry_model``: a pydantic model of the entry (a subclass of
    ``hjepa_bench.record_model.ProbeEntry``, extra keys allowed) that types the fields
    readers rely on; an entry ``finish`` returns that does not fit it is recorded as
    ``failed``, and a results line whose entry does not fit is not a valid record.
    None: only the envelope every entry has (``status``, ``error``, ``measured``).
    """

    name: str = ""
    cost: ProbeCost = "cheap"
    description: str = ""
    extra_steps: int = 0
    headline: tuple[str, ...] = ()
    entry_model: type[pydantic.BaseModel] | None = None

    def start(self, ctx: RunContext) -> None:
        pass

    def after_step(self, ctx: RunContext, sample: StepSample) -> None:
        pass

    def before_extra_steps(self, ctx: RunContext) -> None:
        pass

    def after_extra_step(self, ctx: RunContext, sample: StepSample) -> None:
        pass

    def finish(self, ctx: RunContext, record: Mapping[str, Any]) -> dict[str, Any] | None:
        return None

    def summarize(self, entry: Mapping[str, Any]) -> str | None:
        """One line for the CLI summary of a run (None: just "ok")."""
        return None

    def judge(self, entry: dict[str, Any], thresholds: Thresholds,
              record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``entry`` judged with ``thresholds`` (default: as it is)."""
        return entry

    def facts(self, entry: Mapping[str, Any], record: Mapping[str, Any]) -> Mapping[str, Any]:
        """The criteria facts ``entry`` measured, by name (default: none)."""
        return {}

    def verdicts(self, entry: Mapping[str, Any], thresholds: Thresholds) -> Sequence[FactVerdict]:
        """Checklist verdicts of the probe's own, each feeding a success criterion (default: none)."""
        return ()

    def advise(self, entry: Mapping[str, Any], advice: Mapping[str, str]) -> Mapping[str, Any]:
        """``entry`` as the report shows it with the report's advice (default: as it is)."""
        return entry

    def validation_entry(self, record: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any] | None:
        """The entry of a validation run (default: none)."""
        return None


# --------------------------------------------------------------------------- reports
class ReportSection(abc.ABC):
    """A markdown section of a report, rendered from result records."""

    name: str = ""
    title: str = ""
    order: int = 100  # lower comes first

    @abc.abstractmethod
    def render(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        """Markdown body (without the title), or None to leave the section out."""


# --------------------------------------------------------------------------- executors
@dataclass
class DeviceFacts:
    """A device as seen where configs run (this machine, or one node of a cluster), taken there."""

    name: str  # the backend: cpu, cuda, mps, ...
    env: dict[str, Any]  # the environment fingerprint (``measure.env.environment_fingerprint``)
    precisions: dict[str, str]  # precision -> "" when it trains there, else why not
    unavailable: str = ""  # why the backend cannot run there ("" when it can)
    #: data-parallel ranks it can run there (``measure.ddp.ddp_capacity``): None no limit, 0 none (and why)
    ddp_ranks: int | None = 0
    ddp_unavailable: str = ""


@dataclass
class Place:
    """Where configs run, one config at a time: this machine, or one node of a cluster."""

    #: None for this machine (the local executor: result keys as they always were); for a node,
    #: its label, which joins the result key and the record so two identical nodes stay two machines
    label: str | None
    #: the requested devices as resolved there (``auto`` resolved), in order
    devices: dict[str, DeviceFacts]
    #: what ``record["node"]`` gets for configs run there (None: no such field)
    info: dict[str, Any] | None = None


@dataclass
class Job:
    """One config to run at one place.  ``payload`` is the config's (what
    :func:`hjepa_bench.measure.sweep.run_job_here` needs); an executor never looks inside it."""

    key: str
    label: str
    place: str | None  # the Place's label
    device: str
    payload: dict[str, Any]
    timeout_s: float


@dataclass
class Outcome:
    """How a job ended.  ``status``: ``done`` (``record`` is the config's record), ``timeout``,
    ``crashed``, ``error`` or ``oom`` (the driver writes a record with ``detail``), or ``dropped``:
    the job never started (its place left), nothing is recorded and a resume runs it."""

    status: str
    record: dict[str, Any] | None = None
    detail: str = ""


class JobQueue(abc.ABC):
    """The sweep's side of an executor's run (``run_sweep`` implements it).

    ``next_job(place)``: the next config for a free place, or None when that place has no more
    (configs that need no run, unsupported or skipped after an OOM, are recorded inside it, so
    call it only when the place is free: skip-after-OOM depends on the order).
    ``started(job)``: the job's config started.
    ``finished(job, outcome)``: it ended; the record is appended (fsynced) before this returns.
    ``lost(place, why)``: the place left (a dead node); its remaining configs are not run.
    """

    @abc.abstractmethod
    def next_job(self, place: str | None) -> Job | None: ...

    @abc.abstractmethod
    def started(self, job: Job) -> None: ...

    @abc.abstractmethod
    def finished(self, job: Job, outcome: Outcome) -> None: ...

    @abc.abstractmethod
    def lost(self, place: str | None, why: str) -> None: ...


class Executor(Checked, abc.ABC):
    """Runs a sweep's configs somewhere: this machine (``local``, the default), a Ray cluster
    (``ray``), or whatever a plugin adds.  The sweep keeps the results file, resume, skip-done,
    skip-after-OOM and the statuses; an executor only places configs and reports how each ended.

    ``options`` names the flags of ``hjepa-bench sweep`` the executor takes, by their ``dest``: flags its
    plugin adds itself (``hjepa_bench_add_options``; ray: ``address`` for ``--address``, ``ray_nodes``
    for ``--ray-nodes``); another executor's flag given is a user error.
    ``places(devices, backends, plugin_args, options)`` (``options``: dest -> the value given) connects and
    lists where configs run, with each place's facts for the requested devices (names or ``auto``), taken
    there; a device that no place offers is a :class:`hjepa_bench.errors.UserError`.
    ``run(places, queue)`` pulls jobs from ``queue`` for each free place (one config per place at a
    time), runs each job there through :func:`hjepa_bench.measure.sweep.run_job_here` (the config in
    a fresh child process, with its timeout), and reports through ``queue`` as each starts and
    finishes; Ctrl-C stops what runs and propagates.
    ``close()`` releases what ``places`` set up (always called).
    """

    name: str = ""
    description: str = ""
    options: tuple[str, ...] = ()

    @abc.abstractmethod
    def places(self, devices: Sequence[str], backends: Mapping[str, Backend], plugin_args: Sequence[str],
               options: Mapping[str, Any]) -> list[Place]: ...

    @abc.abstractmethod
    def run(self, places: Sequence[Place], queue: JobQueue) -> None: ...

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- command-line flags
#: the title of ``hjepa-bench sweep``'s group of executor flags (``CommandFlags.group``)
EXECUTOR_GROUP = "where the configs run"


class CommandFlags:
    """What ``hjepa_bench_add_options`` receives: the parser of one command (``command``).

    ``add_argument(...)`` adds a flag to the command (:meth:`argparse.ArgumentParser.add_argument`);
    ``group(title)`` is the command's argument group of that title (a new one when it has none), to
    put a flag beside related ones.  The value given lands in the parsed arguments under the flag's
    ``dest`` (an executor names its flags' dests in ``Executor.options`` and gets their values in
    ``places(..., options)``).  ``list_type(kind=str)`` is the commands' flag type of a comma-separated
    list.  ``added`` maps each dest a plugin added to its first option string.
    """

    def __init__(self, command: str, parser: argparse.ArgumentParser,
                 list_type: Callable[..., Callable[[str], list[Any]]]):
        self.command = command
        self.list_type = list_type
        self._parser = parser
        self.added: dict[str, str] = {}

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        return self._record(self._parser.add_argument(*names, **kwargs))

    def group(self, title: str) -> FlagGroup:
        found = next((g for g in self._parser._action_groups if g.title == title), None)
        return FlagGroup(self, found if found is not None else self._parser.add_argument_group(title))

    def _record(self, action: argparse.Action) -> argparse.Action:
        if action.option_strings:
            self.added[action.dest] = action.option_strings[0]
        return action


class FlagGroup:
    """An argument group of a command (:meth:`CommandFlags.group`): ``add_argument`` as the parser's."""

    def __init__(self, flags: CommandFlags, group: Any):
        self._flags, self._group = flags, group

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        return self._flags._record(self._group.add_argument(*names, **kwargs))
