"""``hjepa-bench sweep``: a grid of configs, each in its own child process.

* The grid comes from the CLI and/or a YAML file; each point is the base config
  (upstream YAML) plus overrides.  Every value is checked before anything runs
  (:meth:`SweepSpec.check`): an invalid one is a usage error.  Valid points a
  backend cannot run (a precision it lacks, a device missing at a node) are recorded
  ``unsupported``.
* ``nproc_per_node`` is a grid dimension like the others: a point above 1 is a data-parallel
  job, which its child launches through torchrun (:mod:`hjepa_bench.measure.ddp`); a point the
  device cannot run that way (mps, more ranks than GPUs) is ``unsupported``.
* Every config runs in a fresh child process (multiprocessing's ``spawn``, as on
  macOS) with a wall-clock deadline: ``ok | oom | diverged | error`` come from the
  child; ``timeout`` ("timed out (benchmark)") and ``crashed`` (exit code or signal) from
  the parent.  Without ``--timeout`` the deadline is the start-up allowance until the child
  reports its warm-up, then what its measured step time and ``min_steps`` need
  (:mod:`hjepa_bench.analysis.policy`); ``--timeout`` is a fixed wall-clock limit.
  After an OOM, larger batches of the same model are ``skipped`` (switchable).
* Records are appended to ``DIR/results.jsonl`` as each config finishes; running
  again with the same ``--out`` (or ``--resume``) skips configs already recorded,
  identified by a hash of the resolved config and the environment fingerprint
  (plus the node label on a cluster).
* Where the configs run is an executor's business (``--executor``, a plugin hook):
  ``local`` runs them one after the other on this machine, ``ray`` on every node of a
  Ray cluster.  The bookkeeping above stays here (:class:`_Sweep`), whatever the executor.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..analysis import policy
from ..config import (
    DEFAULT_SWEEP_OUT,
    DEFAULTS,
    check_value,
    default_workers,
    is_finite_number,
    resolve_config,
    resolve_model_name,
    resolve_precision,
)
from ..errors import UserError, read_yaml
from ..plugin.api import Backend, DeviceFacts, Job, JobQueue, Outcome, Place
from ..plugin.manager import Plugins, build_plugins, probe_names
from ..record import new_record, node_label, short_model_name
from . import child_stderr
from .ddp import Launch, ddp_capacity, default_timeout, ranks_unsupported, run_job
from .parent_watch import start_parent_watch
from .results import ResultsFile, config_key, entry_models
from .runner import RunHooks

DEFAULT_OUT = DEFAULT_SWEEP_OUT


@dataclass
class SweepSpec:
    """The grid and the per-config budgets.  List fields are grid dimensions;
    ``None`` in a list means "the base config's value"."""

    devices: list[str] = field(default_factory=lambda: ["auto"])
    models: list[str | None] = field(default_factory=lambda: ["vit_tiny"])
    batch_sizes: list[int | None] = field(default_factory=lambda: [16, 32])
    # default worker counts: 2 and 4, never above the cores available (a value given is kept)
    workers: list[int | None] = field(default_factory=lambda: sorted({default_workers(w) for w in (2, 4)}))
    hierarchies: list[int | None] = field(default_factory=lambda: [None])
    predictor_depths: list[int | None] = field(default_factory=lambda: [None])
    variants: list[str | None] = field(default_factory=lambda: ["reference"])
    precisions: list[str | None] = field(default_factory=lambda: [None])
    img_sizes: list[int | None] = field(default_factory=lambda: [None])
    nproc_per_node: list[int | None] = field(default_factory=lambda: [None])  # >1: data-parallel (torchrun)
    encoder_depth: int | None = None
    config: str | None = None
    workload: str | None = None
    data: str | None = None
    data_path: str | None = None
    limit_samples: int | None = None
    dataset_size: int | None = None  # the projected full run's training images (bench.dataset_size)
    val_size: int | None = None
    persistent_workers: bool | None = None
    # the measuring budgets: None is the config's default, as on ``hjepa-bench run`` (the same flag
    # means the same on both commands): bench.warmup_steps, min_steps, max_steps, max_time_s
    warmup_steps: int | None = None
    min_steps: int | None = None
    max_steps: int | None = None
    max_time_s: float | None = None
    timeout_s: float | None = None  # fixed per config wall clock; default: follows the warm-up (policy.py)
    skip_after_oom: bool = True
    probes: list[str] | None = None  # None: the cheap probes
    # decision-matrix options whose model config is measured too (each at its own batch and
    # workers, 224 px, reference step): names, or ["all"] / ["none"]; options_file adds user options
    options: list[str] = field(default_factory=lambda: ["all"])
    options_file: str | None = None
    #: statuses whose recorded configs run again in place (``--retry``): see RETRY
    retry: list[str] = field(default_factory=list)

    GRID = ("devices", "models", "batch_sizes", "workers", "hierarchies", "predictor_depths", "variants",
            "precisions", "img_sizes", "nproc_per_node")
    #: grid dimension -> the config key its values override
    DIM_KEYS = {"models": "model.encoder_type", "batch_sizes": "data.batch_size", "workers": "data.num_workers",
                "hierarchies": "model.num_hierarchies", "predictor_depths": "model.predictor.depth",
                "variants": "bench.variant", "precisions": "bench.precision", "img_sizes": "data.image_size",
                "nproc_per_node": "bench.nproc_per_node"}
    #: field -> the config key it overrides at every point (None: the base config's value)
    COMMON_KEYS = {"encoder_depth": "model.encoder_depth", "workload": "bench.workload", "data": "bench.data",
                   "data_path": "bench.data_path", "limit_samples": "bench.limit_samples",
                   "dataset_size": "bench.dataset_size", "val_size": "bench.val_size",
                   "persistent_workers": "bench.persistent_workers", "warmup_steps": "bench.warmup_steps",
                   "min_steps": "bench.min_steps", "max_steps": "bench.max_steps", "max_time_s": "bench.max_time_s"}
    MAX_TIMEOUT_S = 1e7
    #: what ``--retry`` takes: a record status, or ``short`` (ok, but fewer steps than its minimum)
    RETRY = ("timeout", "error", "oom", "crashed", "diverged", "skipped", "unsupported", "short")

    def timeout(self) -> float:
        """``--timeout``, else the start-up allowance a child has until it reports its warm-up."""
        if self.timeout_s is not None:
            return float(self.timeout_s)
        return default_timeout(self.max_time_s if self.max_time_s is not None else DEFAULTS["bench"]["max_time_s"])

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepSpec:
        p = Path(path)
        data = read_yaml(p, "grid file") or {}
        if not isinstance(data, dict):
            raise UserError(f"grid file {p} must hold a mapping (devices:, batch_sizes:, ...).")
        spec = cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"grid file {p} has unknown keys: {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(known))}).")
        for key, value in data.items():
            if key in cls.GRID and not isinstance(value, list):
                value = [value]
            setattr(spec, key, value)
        spec.check_fields(f"grid file {p}")  # on read: a flag given too does not hide a bad value
        return spec

    def common_overrides(self) -> dict[str, Any]:
        """The overrides every point shares (dotted config keys)."""
        return {key: getattr(self, name) for name, key in self.COMMON_KEYS.items()}

    def check(self, where: str = "sweep") -> None:
        """Check every field (:meth:`check_fields`) and the base config on its own (a grid value such
        as the default model must not hide an error in the file), then resolve each distinct grid
        value once, at the grid point that takes the first value of every other dimension (so each
        error is one of a real point), before anything runs.  :func:`plan` then resolves every point."""
        self.check_fields(where)
        if self.config is not None:
            resolve_config(self.config)
        first = {**self.common_overrides(), **{key: getattr(self, name)[0] for name, key in self.DIM_KEYS.items()}}
        try:
            resolve_config(self.config, first)  # the first point: the base config and the shared settings
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        for name, key in self.DIM_KEYS.items():
            for value in dict.fromkeys(v for v in getattr(self, name)[1:] if v is not None):
                try:
                    resolve_config(self.config, {**first, key: value})
                except UserError as exc:
                    raise UserError(f"{where}: {name} {value!r}: {exc}") from None

    def check_fields(self, where: str) -> None:
        """Each field's type, and each grid value by the config's check of the key it overrides
        (config.SCHEMA): an invalid one is a UserError naming it (``where``: the file or "sweep")."""
        def fail(name: str, problem: str) -> None:
            raise UserError(f"{where}: {name} {problem}.")

        def text_list(name: str, value: Any, *, empty: bool = False) -> None:
            if not isinstance(value, list) or not (value or empty) or not all(isinstance(v, str) for v in value):
                fail(name, f"must be a {'' if empty else 'non-empty '}list of names, not {value!r:.60}")

        for name in self.GRID:
            values = getattr(self, name)
            if name == "devices":
                text_list(name, values)
                continue
            if not isinstance(values, list) or not values:
                fail(name, f"must be a non-empty list, not {values!r:.60}")
            for value in values:
                if value is not None:
                    self._check(where, name, self.DIM_KEYS[name], value)
        for name, key in self.COMMON_KEYS.items():
            if getattr(self, name) is not None:
                self._check(where, name, key, getattr(self, name))
        for name in ("config", "options_file"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                fail(name, f"must be a file name, not {getattr(self, name)!r:.60}")
        t = self.timeout_s
        if t is not None and not (is_finite_number(t) and 0 < t <= self.MAX_TIMEOUT_S):
            fail("timeout_s", f"must be a number of seconds in (0, {self.MAX_TIMEOUT_S:g}], not {t!r:.60}")
        if not isinstance(self.skip_after_oom, bool):
            fail("skip_after_oom", f"must be true or false, not {self.skip_after_oom!r:.60}")
        if self.probes is not None:
            text_list("probes", self.probes, empty=True)
        text_list("options", self.options)
        text_list("retry", self.retry, empty=True)
        bad = [r for r in self.retry if r not in self.RETRY]
        if bad:
            fail("retry", f"takes {', '.join(self.RETRY)}, not {', '.join(bad)}")

    @staticmethod
    def _check(where: str, name: str, key: str, value: Any) -> None:
        try:
            check_value(key, value)
        except UserError as exc:
            raise UserError(f"{where}: {name}: {exc}") from None

    @classmethod
    def from_flags(cls, args: Any) -> SweepSpec:
        """The spec of ``hjepa-bench sweep``: ``--grid`` (or the defaults), the flags on top (the
        list flags arrive as lists), validated."""
        spec = cls.from_yaml(args.grid) if args.grid else cls()
        lists = {
            "devices": args.device, "models": args.models, "batch_sizes": args.batch_sizes, "workers": args.workers,
            "hierarchies": args.hierarchies, "predictor_depths": args.predictor_depths, "variants": args.variants,
            "precisions": args.precisions, "img_sizes": args.img_size,
            "nproc_per_node": getattr(args, "nproc_per_node", None),
        }
        for name, value in lists.items():
            if value is not None:
                setattr(spec, name, value)
        for name in ("config", "workload", "data", "data_path", "limit_samples", "persistent_workers", "encoder_depth",
                     "warmup_steps", "min_steps", "max_steps", "dataset_size", "val_size"):
            if getattr(args, name, None) is not None:
                setattr(spec, name, getattr(args, name))
        if args.max_time is not None:
            spec.max_time_s = args.max_time
        if args.timeout is not None:
            spec.timeout_s = args.timeout
        if args.no_skip_after_oom:
            spec.skip_after_oom = False
        if args.probes is not None or args.profile:
            spec.probes = probe_names(args.probes, args.profile)
        if args.options is not None:
            spec.options = args.options
        if args.options_file is not None:
            spec.options_file = args.options_file
        if getattr(args, "retry", None) is not None:
            spec.retry = args.retry
        spec.check(f"sweep (grid file {args.grid} and flags)" if args.grid else "sweep")
        return spec


@dataclass
class Point:
    index: int
    device: str
    overrides: dict[str, Any]
    label: str
    group: tuple  # everything but the batch size (for skip-after-OOM)
    batch_size: int = 0
    values: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    unsupported: str | None = None  # why it cannot run here
    place: str | None = None  # the executor's place (a node label), None on this machine
    decides: bool = False  # it measures a decision-matrix option's own config: it runs first


def check_grid(spec: SweepSpec, plugins: Plugins) -> None:
    """What can be checked before any executor connects: device and model names."""
    backends = plugins.backends()
    for name in spec.devices:
        if name != "auto" and name not in backends:
            raise UserError(f"unknown device {name!r}; known devices: {', '.join(sorted(backends))} (or auto).")
    for m in spec.models:
        if m is not None:
            resolve_model_name(m)  # an unknown model is a user error, not an unsupported point


def check_data(points_values: Any) -> None:
    """A data set the configs read is checked before the first child starts (a missing CIFAR-10
    folder is a usage error, as on ``run``, not an error recorded for every config)."""
    paths = {(v["bench"].get("data_path") or v["data"].get("data_path")) for v in points_values
             if v["bench"].get("data") == "cifar10"}
    if paths:
        from ..hjepa.data import cifar_folder

        for path in sorted(paths, key=str):
            if not path:
                raise UserError("--data cifar10 needs --data-path DIR (the unpacked python version of CIFAR-10).")
            cifar_folder(path, train=True)


def device_facts(backend: Backend, plugin_args: Sequence[str] = ()) -> DeviceFacts:
    """``backend`` as this process sees it: the environment fingerprint, the precisions that
    train on it, or why it cannot run (an executor takes these where the configs will run).

    A backend whose probes leave memory on the device in the process that asks
    (``Backend.probes_hold_device``: a CUDA context and cached blocks) is asked in a spawned child
    (plugins built from ``plugin_args``), so the children that measure have the device to themselves."""
    if getattr(backend, "probes_hold_device", False) and backend.availability().available:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            return pool.submit(_device_facts_here, backend.name, list(plugin_args)).result()
    return _facts(backend)


def _device_facts_here(name: str, plugin_args: list[str]) -> DeviceFacts:
    """(In a spawned child) the facts of the backend ``name``."""
    return _facts(build_plugins(plugin_args).backends()[name])


def _facts(backend: Backend) -> DeviceFacts:
    from .env import environment_fingerprint

    why = backend.availability()
    ranks, no_ranks = ddp_capacity(backend)
    return DeviceFacts(name=backend.name, env=environment_fingerprint(backend),
                       precisions=backend.supported_precisions() if why.available else {},
                       unavailable="" if why.available else (why.reason or "not available"),
                       ddp_ranks=ranks, ddp_unavailable=no_ranks)


def plan(spec: SweepSpec, place: Place) -> list[Point]:
    """Expand the grid into points with resolved configs and keys for one place (no running).
    The place's devices are already resolved, with facts taken there."""
    devices = list(place.devices)
    common = spec.common_overrides()
    points: list[Point] = []
    seen: set[str] = set()  # resolved configs already planned
    dims = [devices, spec.models, spec.hierarchies, spec.predictor_depths, spec.variants, spec.precisions,
            spec.img_sizes, spec.nproc_per_node, spec.workers, sorted(spec.batch_sizes, key=lambda b: (b is None,
                                                                                                       b or 0))]
    for device, model, levels, pdepth, variant, precision, img, nproc, workers, batch in itertools.product(*dims):
        overrides = {**common, "model.encoder_type": model, "model.num_hierarchies": levels,
                     "model.predictor.depth": pdepth, "bench.variant": variant, "bench.precision": precision,
                     "data.image_size": img, "bench.nproc_per_node": nproc, "data.num_workers": workers,
                     "data.batch_size": batch}
        point = Point(index=len(points), device=device, overrides=overrides, label="",
                      group=(device, model, levels, pdepth, variant, precision, img, workers, nproc))
        try:
            rc = resolve_config(spec.config, overrides)
        except UserError as exc:  # a combination of valid values that does not fit: a usage error too
            given = ", ".join(f"{k} {v}" for k, v in overrides.items() if v is not None and k not in common)
            raise UserError(f"the grid point {device}, {given}: {exc}") from None
        values = rc.values
        values["bench"]["precision"] = resolve_precision(values, device)
        values["bench"]["device"] = device
        same = json.dumps(values, sort_keys=True, default=str)
        if same in seen:  # null (the config's value) next to that value, or a model's alias: measured once
            continue
        seen.add(same)
        # the one reason a valid point is recorded unsupported: this device cannot run it (here)
        point.unsupported = _unsupported_here(place.devices[device], values)
        point.values, point.warnings = values, rc.warnings()
        v = point.values
        point.batch_size = int(batch or v["data"]["batch_size"])
        point.label = (f"{device} {short_model_name(v['model']['encoder_type'])} "
                       f"b{batch or v['data']['batch_size']} "
                       f"w{workers if workers is not None else v['data']['num_workers']} "
                       f"{variant or v['bench']['variant']} {precision or v['bench']['precision']} "
                       f"{img or v['data']['image_size']}px")
        if levels is not None or pdepth is not None:
            point.label += f" L{levels or v['model']['num_hierarchies']} P{pdepth or v['model']['predictor']['depth']}"
        if int(v["bench"].get("nproc_per_node", 1)) > 1:
            point.label += f" {v['bench']['nproc_per_node']} ranks"
        _place_point(point, place, {"values": v, "unsupported": point.unsupported, "overrides": overrides})
        points.append(point)
    for device in devices:
        for opt in selected_options(spec):
            for nproc in spec.nproc_per_node:
                point = _option_point(opt, device, {**common, "bench.nproc_per_node": nproc}, place, len(points))
                same = [p for p in points if _same_measurement(p, point)]
                for p in same or [point]:
                    p.decides = True  # what decides the recommendation is measured first
                if not same:
                    points.append(point)
    return points


def _unsupported_here(facts: DeviceFacts, values: Mapping[str, Any]) -> str | None:
    """Why a resolved config cannot run on this device at this place (None: it can): the device is
    missing there, its precision does not train there, or its data-parallel ranks cannot run there."""
    if facts.unavailable:
        return f"device {facts.name} is not available: {facts.unavailable.rstrip('.')}"
    precision = values["bench"]["precision"]
    why = facts.precisions.get(precision, "unknown precision")
    if why:
        return f"precision {precision} does not run on {facts.name}: {why}"
    nproc = int(values["bench"].get("nproc_per_node", 1))
    why = ranks_unsupported(facts.name, nproc, facts.ddp_ranks, facts.ddp_unavailable) if nproc > 1 else ""
    return f"{nproc} data-parallel processes on {facts.name}: {why}" if why else None


def _place_point(point: Point, place: Place, identity: dict[str, Any]) -> None:
    """The point's environment and key at ``place``; a node's label joins the key and the label."""
    point.env = place.devices[point.device].env
    point.key = config_key(_measured_identity(identity), point.env, node=place.label)
    point.place = place.label
    if place.label is not None:
        point.label += f" on {place.label}"


#: how long a config is measured, not what is measured: left out of its key, so that a config run
#: again with other limits (--retry ... --max-time 120) replaces its earlier record
BUDGET_KEYS = ("warmup_steps", "min_steps", "max_steps", "max_time_s", "target_rel_precision")


def _measured_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(identity, default=str))
    for key in BUDGET_KEYS:
        ((out.get("values") or {}).get("bench") or {}).pop(key, None)
        (out.get("overrides") or {}).pop(f"bench.{key}", None)
    return out


def retry_matches(record: Mapping[str, Any], retry: Sequence[str]) -> bool:
    """Whether ``--retry`` names what happened to ``record`` (its status, or ``short``)."""
    return record.get("status") in retry or ("short" in retry and policy.shortfall(record) is not None)


def _same_measurement(a: Point, b: Point) -> bool:
    """Two points time the same step: equal configs apart from the training schedule
    (epochs, warm-up, LR), which does not change the cost of a step."""
    def strip(v: dict[str, Any] | None) -> dict[str, Any]:
        v = json.loads(json.dumps(v or {}))
        for key in ("epochs", "warmup_epochs", "lr", "min_lr"):
            v.get("training", {}).pop(key, None)
        for section in ("checkpoint", "evaluation", "logging"):
            v.pop(section, None)
        v.get("model", {}).get("ema", {}).pop("momentum_warmup_epochs", None)
        return v
    return a.device == b.device and a.unsupported == b.unsupported and strip(a.values) == strip(b.values)


def selected_options(spec: SweepSpec) -> list[Any]:
    """The options whose configs the sweep measures (``spec.options``: names, all or none)."""
    from ..options import load_options

    names = [str(n) for n in (spec.options or [])]
    if not names or names == ["none"]:
        return []
    options = load_options(spec.options_file)
    if names == ["all"]:
        return options
    known = {o.name: o for o in options}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown option {', '.join(unknown)}; known options: {', '.join(known)} (or all, none).")
    return [known[n] for n in names]


def _option_point(opt: Any, device: str, common: dict[str, Any], place: Place, index: int) -> Point:
    """A point measuring ``opt``'s own model config at its batch and workers (reference step)."""
    from ..options import option_overrides

    base = opt.values()
    overrides = {**{k: v for k, v in common.items() if k != "model.encoder_depth"}, **option_overrides(opt)}
    if opt.source == "validation guide":  # the guide's worker count is a default: not above the cores here
        overrides["data.num_workers"] = default_workers(overrides["data.num_workers"])
    rc = resolve_config(None, overrides, base=base)
    values = rc.values
    values["bench"]["precision"] = resolve_precision(values, device)
    values["bench"]["device"] = device
    m, d = values["model"], values["data"]
    nproc = int(values["bench"].get("nproc_per_node", 1))
    label = (f"{device} option {opt.name}: {short_model_name(m['encoder_type'])} b{d['batch_size']} "
             f"w{d['num_workers']} reference {values['bench']['precision']} {d['image_size']}px "
             f"L{m['num_hierarchies']} P{m['predictor']['depth']}" + (f" {nproc} ranks" if nproc > 1 else ""))
    point = Point(index=index, device=device, overrides=overrides, label=label,
                  group=(device, "option", opt.name, nproc), batch_size=int(d["batch_size"]), values=values,
                  warnings=rc.warnings())
    point.unsupported = _unsupported_here(place.devices[device], values)
    _place_point(point, place, {"values": values, "unsupported": point.unsupported, "overrides": overrides})
    return point


# --------------------------------------------------------------------------- the child
def _child_main(payload: dict[str, Any], result_path: str, parent_pid: int) -> None:
    """Runs in the spawned child: measure one config, write its record to ``result_path``; its stderr
    (file descriptor 2: what the device runtime prints too) goes to ``payload["stderr_path"]`` if given."""
    if payload.get("stderr_path"):
        child_stderr.capture(payload["stderr_path"])
    start_parent_watch(parent_pid, lambda: os._exit(3))  # the parent is gone: no orphan runs on
    # A spawned child inherits "spawn" as its default start method; DataLoader workers
    # must start the way they do in a normal run on this platform (fork on Linux).
    if payload.get("start_method"):
        mp.set_start_method(payload["start_method"], force=True)
    from ..record import write_json
    from .runner import run_benchmark

    values, env = payload["values"], payload["env"]
    nproc = int(values["bench"].get("nproc_per_node", 1))
    t_start = time.monotonic()
    try:
        if nproc > 1:  # a data-parallel job: torchrun, started from this child, runs the ranks
            record = run_job(values, env, device=payload["device"], plugin_args=payload["plugins"],
                             probes=payload["probes"], warnings=payload["warnings"], launch=Launch(nproc),
                             timeout_s=payload.get("timeout_s") or default_timeout(values["bench"]["max_time_s"]),
                             artifacts_dir=payload["artifacts_dir"])
        else:
            plugins = build_plugins(payload["plugins"])
            backend = plugins.backends()[payload["device"]]
            workload = plugins.workload(values["bench"]["workload"])
            probes = plugins.select_probes(payload["probes"])
            extra = max((int(getattr(p, "extra_steps", 0) or 0) for p in probes), default=0)
            record = run_benchmark(values, backend, workload, probes, env,
                                   warnings=payload["warnings"], artifacts_dir=payload["artifacts_dir"],
                                   hooks=_WarmupReport(result_path + WARM_SUFFIX, t_start, extra))
    except UserError as exc:
        record = new_record(values, env, payload["warnings"])
        record["error"] = str(exc)
    write_json(record, result_path)


#: the child writes its warm-up report next to its result file, under this suffix
WARM_SUFFIX = ".warm"
#: ... and, before that, its first warm-up step's time under this one
FIRST_SUFFIX = ".first"


class _WarmupReport(RunHooks):
    """In the child: after the warm-up, tell the parent the warm-up's step times and the measured
    loop's hard cap (written atomically), so that the parent's deadline follows the config."""

    def __init__(self, path: str, t_start: float, extra_steps: int):
        self.path, self.t_start, self.extra_steps = path, t_start, extra_steps

    def _write(self, path: str, data: dict[str, Any]) -> None:
        with open(path + ".tmp", "w") as fh:
            json.dump({**data, "extra_steps": self.extra_steps, "child_s": time.monotonic() - self.t_start}, fh)
        os.replace(path + ".tmp", path)

    def first_step(self, step_s: float) -> None:
        self._write(self.path + FIRST_SUFFIX, {"step_s": step_s})

    def warmed_up(self, step_times_s: list[float], cap_s: float) -> None:
        self._write(self.path, {"warmup_step_s": step_times_s, "cap_s": cap_s})


@dataclass
class ChildOutcome:
    record: dict[str, Any] | None
    status: str  # "done", "timeout", "crashed", "oom" (printed on the child's stderr: _printed_oom)
    detail: str = ""


def run_in_child(payload: dict[str, Any], timeout_s: float) -> ChildOutcome:
    """Run one config in a spawned child with a wall-clock timeout (:func:`_run_child`).  The child's
    stderr is passed on when it ends and read for an out-of-memory the device printed without raising."""
    with tempfile.TemporaryDirectory(prefix="hjepa-bench-stderr-") as tmp:
        stderr_path = os.path.join(tmp, "stderr.txt")
        try:
            outcome = _run_child(dict(payload, stderr_path=stderr_path), timeout_s)
        except BaseException:
            child_stderr.pass_on(stderr_path)
            raise
        return _printed_oom(payload, outcome, child_stderr.pass_on(stderr_path))


def _printed_oom(payload: Mapping[str, Any], outcome: ChildOutcome, text: str) -> ChildOutcome:
    """When the child's stderr ``text`` holds the device's printed (not raised) out-of-memory, the config ran
    out of memory: a child that died or hung then, or a record measured on after it, is ``oom``, and the
    error says where that was seen (the record keeps its numbers)."""
    if outcome.record is not None and outcome.record.get("status") == "oom":
        return outcome
    line = child_stderr.printed_oom(text, payload["device"], payload.get("plugins") or [])
    if line is None:
        return outcome
    why = f"out of memory on {payload['device']}, printed on the child's stderr, not raised ({line[:160]})"
    if outcome.record is None:
        return ChildOutcome(None, "oom", f"{why}; then {outcome.status}: {outcome.detail}")
    record = dict(outcome.record)
    record["error"] = (f"{why}; the run went on as {record.get('status')!r}"
                       + (f" ({record['error']})" if record.get("error") else "")
                       + ", so its numbers include device work that never ran")
    record["status"] = "oom"
    return ChildOutcome(record, outcome.status, outcome.detail)


def _run_child(payload: dict[str, Any], timeout_s: float) -> ChildOutcome:
    """Run one config in a spawned child with a wall-clock deadline: ``timeout_s`` when the payload
    says ``fixed_timeout`` (``--timeout``), else ``timeout_s`` until the child reports its first
    warm-up step, then what its step time needs (:func:`hjepa_bench.analysis.policy.child_deadline_s`)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="hjepa-bench-") as tmp:
        result = os.path.join(tmp, "record.json")
        proc = ctx.Process(target=_child_main, args=(payload, result, os.getpid()), name="hjepa-bench-config")
        t0 = time.monotonic()
        proc.start()
        deadline, why = float(timeout_s), "its fixed --timeout" if payload.get("fixed_timeout", True) else \
            "the start-up allowance (no warm-up step reported)"
        follow = not payload.get("fixed_timeout", True)
        first = follow
        derived: float | None = None  # the deadline the first step set (it replaces the allowance)
        bench = payload["values"]["bench"]
        try:
            while proc.is_alive():
                now = time.monotonic() - t0
                if first and os.path.exists(result + WARM_SUFFIX + FIRST_SUFFIX):
                    first = False
                    try:
                        with open(result + WARM_SUFFIX + FIRST_SUFFIX) as fh:
                            got = json.load(fh)
                        step = float(got["step_s"])
                        deadline = derived = (policy.deadline_after_first_step_s(
                            first_at_s=now, step_s=step, warmup_steps=int(bench["warmup_steps"]),
                            max_time_s=float(bench["max_time_s"]), min_steps=int(bench["min_steps"]),
                            extra_steps=int(got.get("extra_steps") or 0)))
                        why = f"the deadline its first step set: {now:.0f} s to its first step of {step:.1f} s"
                    except (OSError, ValueError, KeyError, TypeError):
                        pass
                if follow and os.path.exists(result + WARM_SUFFIX):
                    follow = False
                    try:
                        with open(result + WARM_SUFFIX) as fh:
                            warm = json.load(fh)
                        step = policy.median(warm.get("warmup_step_s") or [])
                        deadline = max(derived or 0.0, policy.child_deadline_s(
                            warmed_at_s=now, startup_s=now, cap_s=float(warm["cap_s"]), step_s=step,
                            extra_steps=int(warm.get("extra_steps") or 0)))
                        why = (f"the deadline its warm-up set: {now:.0f} s to warm up, steps of "
                               f"{step or 0:.2f} s, a measuring cap of {float(warm['cap_s']):.0f} s")
                    except (OSError, ValueError, KeyError, TypeError):
                        pass  # keep the start-up allowance
                if now >= deadline:
                    _stop(proc)
                    return ChildOutcome(None, "timeout", f"timed out (benchmark): no result after {deadline:.0f} s "
                                                         f"({why}); the child was killed")
                proc.join(min(0.5, max(0.01, deadline - now)))
        except BaseException:
            _stop(proc)  # Ctrl-C / SIGTERM: stop the child, record nothing
            raise
        code = proc.exitcode
        if code == 0 and os.path.exists(result):
            with open(result) as fh:
                return ChildOutcome(json.load(fh), "done")
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return ChildOutcome(None, "crashed", f"the child died by {name}")
        return ChildOutcome(None, "crashed", f"the child exited with code {code} without a result")


def run_job_here(job: Job) -> Outcome:
    """Run ``job``'s config in a fresh child process of this process, with the job's timeout: what
    every executor does where the config runs.  DataLoader workers in the child start the way they
    do in a normal run on this machine's platform."""
    outcome = run_in_child(dict(job.payload, start_method=mp.get_start_method()), job.timeout_s)
    if outcome.record is not None:
        return Outcome("done", outcome.record)
    return Outcome(outcome.status, None, outcome.detail)


def _stop(proc: mp.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


# --------------------------------------------------------------------------- the sweep
Event = Callable[[dict[str, Any]], None]


def _record_for(point: Point, status: str, detail: str) -> dict[str, Any]:
    record = new_record(point.values or {}, point.env, point.warnings)
    record["status"], record["error"] = status, detail
    record["duration_s"] = 0.0
    return record


def run_sweep(spec: SweepSpec, out: str | Path, plugins: Plugins, plugin_args: Sequence[str] = (),
              on_event: Event | None = None, executor: str = "local",
              executor_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every point not yet recorded in ``out`` through the executor named ``executor`` (a
    registered :class:`hjepa_bench.plugin.api.Executor`); returns a summary dict."""
    emit = on_event or (lambda e: None)
    engine = plugins.executor(executor)
    store = ResultsFile(out, entry_models(plugins))
    check_grid(spec, plugins)
    try:
        places = engine.places(list(spec.devices), plugins.backends(), list(plugin_args),
                               {k: v for k, v in (executor_options or {}).items() if v is not None})
        planned = {place.label: plan(spec, place) for place in places}
        for name in dict.fromkeys(p.values["bench"]["workload"] for points in planned.values() for p in points):
            plugins.workload(name)  # an unknown workload is a usage error here, not a failure in every child
        check_data(p.values for points in planned.values() for p in points)
        loaded = store.load()  # every point resolved before the results file is touched
        sweep = _Sweep(spec, store, places, planned, loaded.records, list(plugin_args), emit)
        emit({"event": "plan", "total": sweep.total, "recorded": sweep.total - sweep.n, "to_run": sweep.n,
              "retry": len(sweep.retried), "first": sum(p.decides for todo in sweep.todo.values() for p in todo),
              "out": str(store.dir), "truncated_tail": loaded.truncated_tail is not None,
              **({"nodes": [p.label for p in places]} if any(p.label is not None for p in places) else {})})
        engine.run(places, sweep)
    finally:
        engine.close()
    ran = sum(sweep.counts.values())
    return {"total": sweep.total, "ran": ran, "recorded_before": sweep.total - sweep.n, "counts": sweep.counts,
            "retried": len(sweep.retried),
            "not_run": sweep.n - ran, "elapsed_s": time.time() - sweep.t_start, "out": str(store.dir),
            "truncated_tail": loaded.truncated_tail}


class _Sweep(JobQueue):
    """The sweep's bookkeeping behind an executor: per place, the points not yet recorded, in
    plan order (larger batches after smaller ones, for skip-after-OOM); every record is appended
    (fsynced) as it arrives, with its ``sweep`` block and, at a cluster node, its ``node`` block."""

    def __init__(self, spec: SweepSpec, store: ResultsFile, places: Sequence[Place],
                 planned: Mapping[str | None, list[Point]], recorded: Sequence[Mapping[str, Any]],
                 plugin_args: list[str], emit: Event):
        self.spec, self.store, self.plugin_args, self.emit = spec, store, plugin_args, emit
        again = [r for r in recorded if retry_matches(r, spec.retry)]
        #: keys run again in place (--retry): their new record replaces the old one
        self.retried = {(r.get("sweep") or {}).get("key") for r in again}
        recorded = [r for r in recorded if not retry_matches(r, spec.retry)]
        done = {(r.get("sweep") or {}).get("key") for r in recorded} - self.retried
        self.info = {p.label: p.info for p in places}
        self.todo: dict[str | None, list[Point]] = {}
        self.total = 0
        for place in places:
            points = planned[place.label]
            self.total += len(points)
            # the options' own configs first (they decide the answer), then the grid in plan order
            self.todo[place.label] = sorted((p for p in points if p.key not in done), key=lambda p: not p.decides)
        self.n = sum(len(v) for v in self.todo.values())
        self.parallel = max(1, len(places))
        self.oom_at: dict[tuple, int] = {}
        for r in recorded:  # OOMs recorded earlier still skip larger batches (at the same place)
            s = r.get("sweep") or {}
            if r["status"] == "oom" and "group" in s and "batch_size" in s:
                self._oom(node_label(r), tuple(s["group"]), s["batch_size"])
        self.jobs: dict[str, Point] = {}
        self.k: dict[str, int] = {}
        self.t0: dict[str, float] = {}
        self.durations: list[float] = []
        #: (step cost, step seconds, start-up seconds) of the first config measured: what the
        #: estimates of the others are scaled from (policy.step_cost)
        self.reference: tuple[float, float, float] | None = None
        self.counts: dict[str, int] = {}
        self.t_start = time.time()

    # ----------------------------------------------------------------- JobQueue
    def next_job(self, place: str | None) -> Job | None:
        todo = self.todo.get(place, [])
        while todo:
            point = todo.pop(0)
            group = _group(point)
            if point.unsupported:
                self._start(point)
                self._record(point, _record_for(point, "unsupported", point.unsupported))
            elif (self.spec.skip_after_oom and (place, group) in self.oom_at
                  and point.batch_size > self.oom_at[(place, group)]):
                self._start(point)
                self._record(point, _record_for(point, "skipped", f"ran out of memory at batch "
                                                f"{self.oom_at[(place, group)]} with the same settings"))
            else:
                payload = {"values": point.values, "env": point.env, "warnings": point.warnings,
                           "device": point.device, "plugins": self.plugin_args, "probes": self.spec.probes,
                           "artifacts_dir": str(self.store.dir / "traces" / point.key),
                           # a data-parallel job stops its torchrun itself a little before the child is killed
                           "timeout_s": self.spec.timeout() - min(15.0, self.spec.timeout() / 4),
                           # without --timeout the deadline follows the child's warm-up (analysis/policy.py)
                           "fixed_timeout": self.spec.timeout_s is not None}
                self.jobs[point.key] = point
                return Job(key=point.key, label=point.label, place=place, device=point.device, payload=payload,
                           timeout_s=self.spec.timeout())
        return None

    def started(self, job: Job) -> None:
        self._start(self.jobs[job.key])

    def finished(self, job: Job, outcome: Outcome) -> None:
        point = self.jobs.pop(job.key)
        if outcome.status == "dropped":
            self.emit({"event": "dropped", "label": point.label, "node": point.place, "why": outcome.detail})
            return
        if point.key not in self.k:
            self._start(point)  # it ended before its start was seen
        if outcome.record is not None:
            record = outcome.record
        else:
            record = _record_for(point, outcome.status, outcome.detail)
        took = time.time() - self.t0.pop(point.key)
        self.durations.append(took)
        self._record(point, record)
        m = record.get("metrics") or {}
        step = (m.get("step_time_s") or {}).get("median")
        if self.reference is None and record.get("status") == "ok" and step and point.values:
            measured = float(m.get("measured_time_s") or 0) + float((m.get("warmup") or {}).get("time_s") or 0)
            self.reference = (policy.step_cost(point.values), float(step), max(0.0, took - measured))
            left = [p for todo in self.todo.values() for p in todo] + \
                [p for p in self.jobs.values()]
            self.emit({"event": "estimate", "configs_left": len(left), "step_s": float(step),
                       "startup_s": self.reference[2], "expected_s": (self.expected_s(left) or 0.0) / self.parallel,
                       "from": point.label})

    def lost(self, place: str | None, why: str) -> None:
        left = self.todo.pop(place, [])
        self.emit({"event": "lost", "node": place, "why": why, "not_run": len(left)})

    # ----------------------------------------------------------------- bookkeeping
    def _start(self, point: Point) -> None:
        k = self.k[point.key] = len(self.k) + 1
        self.t0[point.key] = time.time()
        left = self.n - k + 1
        eta = self.expected_s([point, *(p for todo in self.todo.values() for p in todo)])
        if eta is None and self.durations:
            eta = (sum(self.durations) / len(self.durations)) * left
        if eta is not None:
            eta /= self.parallel
        self.emit({"event": "start", "k": k, "n": self.n, "label": point.label,
                   "elapsed_s": time.time() - self.t_start, "eta_s": eta, **self._node(point)})

    def expected_s(self, points: Sequence[Point]) -> float | None:
        """Expected seconds to measure ``points``, scaled from the first config measured (None before)."""
        if self.reference is None:
            return None
        cost0, step0, startup = self.reference
        total = 0.0
        for p in points:
            if p.unsupported or not p.values:
                continue
            b = p.values["bench"]
            step = step0 * policy.step_cost(p.values) / cost0
            total += policy.expected_config_s(step_s=step, startup_s=startup, warmup_steps=b["warmup_steps"],
                                              min_steps=b["min_steps"], max_steps=b["max_steps"],
                                              max_time_s=b["max_time_s"])
        return total

    def _record(self, point: Point, record: dict[str, Any]) -> None:
        group = _group(point)
        record["sweep"] = {"key": point.key, "label": point.label, "index": point.index,
                           "group": list(group), "batch_size": point.batch_size,
                           "overrides": {k2: v for k2, v in point.overrides.items() if v is not None}}
        if self.info.get(point.place) is not None:
            record["node"] = dict(self.info[point.place])
        if point.key in self.retried:
            self.store.replace(point.key, record)
        else:
            self.store.append(record)
        if record["status"] == "oom":
            self._oom(point.place, group, point.batch_size)
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        self.emit({"event": "done", "k": self.k[point.key], "n": self.n, "label": point.label,
                   "status": record["status"], "error": record.get("error"),
                   "it_per_s": (record.get("metrics") or {}).get("it_per_s"),
                   "elapsed_s": time.time() - self.t_start, **self._node(point)})

    def _oom(self, place: str | None, group: tuple, batch: int) -> None:
        self.oom_at[(place, group)] = min(self.oom_at.get((place, group), 10**9), batch)

    @staticmethod
    def _node(point: Point) -> dict[str, Any]:
        return {} if point.place is None else {"node": point.place}


def _group(point: Point) -> tuple:
    """The point's skip-after-OOM group as it reads back from JSON (lists, not tuples)."""
    return tuple(json.loads(json.dumps(point.group)))


def install_sigterm_handler() -> None:
    """SIGTERM behaves like Ctrl-C: stop the child, keep what is recorded."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def resume_command(argv: Sequence[str]) -> str:
    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return "hjepa-bench " + " ".join(args)

