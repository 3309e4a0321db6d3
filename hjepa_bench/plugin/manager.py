"""The plugin manager and its typed facade.

Plugins come from, in order:

1. the built-ins, :data:`BUILTIN_PLUGINS` (``hjepa_bench.builtin.*``: one list in
   code, so an install can never lack one);
2. the ``hjepa_bench`` entry-point group: third-party packages
   (``HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD=1`` skips them);
3. modules named in ``HJEPA_BENCH_PLUGINS`` (comma separated) or with
   ``hjepa-bench -p MODULE``;
4. ``HJEPA_BENCH_DISABLE_PLUGINS=name,...`` (or ``-p no:NAME``) blocks plugins by
   entry-point or module name.

After loading, ``check_pending`` makes a misspelled hook an error.

The command line is built before the plugins are loaded for the command: :func:`add_plugin_options`
loads only the built-ins in :data:`OPTION_BUILTINS` (light modules: no torch) and the third-party
and requested plugins, and lets each add its flags (``hjepa_bench_add_options``).  The rest of
the code talks to :class:`Plugins`, never to ``pm.hook`` directly.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata as md
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import pluggy

from ..errors import PLUGIN_FAILURES, UserError, first_line
from . import hookspecs
from .api import PROBE_COSTS, Backend, CommandFlags, Executor, Probe, ReportSection, Workload

ENTRY_POINT_GROUP = "hjepa_bench"
DIST_NAME = "hjepa-bench"
ENV_DISABLE_AUTOLOAD = "HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "HJEPA_BENCH_PLUGINS"
ENV_DISABLE = "HJEPA_BENCH_DISABLE_PLUGINS"
#: what ``--device auto`` tries, in order
AUTO_ORDER = ("cuda", "mps", "cpu")

#: the built-in plugins, (name, module), in the order they register
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = tuple((name, f"hjepa_bench.builtin.{module}") for name, module in (
    ("cpu", "backend_cpu"), ("cuda", "backend_cuda"), ("mps", "backend_mps"),
    ("hjepa", "workload_hjepa"),
    ("summary", "section_summary"), ("scaling", "section_scaling"),
    ("stability", "probe_stability"), ("loss", "probe_loss"), ("bottleneck", "probe_bottleneck"),
    ("memory", "probe_memory"), ("features", "probe_features"), ("svd", "probe_svd"), ("flops", "probe_flops"),
    ("profiler", "probe_profiler"), ("epoch_costs", "probe_epoch_costs"),
    ("local", "executor_local"), ("ray", "executor_ray"),
))
#: the built-ins that add command-line flags (``hjepa_bench_add_options``): the only ones imported to
#: build the parser, so each imports nothing heavy (tests/test_plugin_interface.py checks both)
OPTION_BUILTINS: tuple[str, ...] = ("ray",)

T = TypeVar("T")

#: what a plugin's hjepa_bench_add_options may raise: its own failure, or a clash of flags
ADD_OPTIONS_FAILURES: tuple[type[BaseException], ...] = (*PLUGIN_FAILURES, argparse.ArgumentError)


class _Manager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("hjepa_bench_") and callable(getattr(plugin, name, None)):
            # An unmarked function with the hook prefix is still treated as a hook
            # implementation, so a misspelled name fails check_pending().  (pluggy's defaults.)
            return pluggy.HookimplOpts(wrapper=False, hookwrapper=False, optionalhook=False,
                                       tryfirst=False, trylast=False, specname=None)
        return opts


@dataclass
class PluginInfo:
    name: str
    module: str
    origin: str  # "builtin", "entry point of <dist> <version>", "HJEPA_BENCH_PLUGINS", "-p"
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  # set when a register hook failed: the plugin is disabled


#: register hook -> (what ``describe`` calls the objects, their type)
REGISTER_HOOKS: dict[str, tuple[str, type]] = {
    "hjepa_bench_register_backends": ("backends", Backend),
    "hjepa_bench_register_workloads": ("workloads", Workload),
    "hjepa_bench_register_probes": ("probes", Probe),
    "hjepa_bench_register_report_sections": ("report_sections", ReportSection),
    "hjepa_bench_register_executors": ("executors", Executor),
}


class Plugins:
    """Typed facade over the pluggy manager: one method per hook."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo]):
        self.pm = pm
        self.infos = infos
        self._registered: dict[str, list[tuple[str, Any]]] | None = None
        self._cache: dict[str, list[tuple[str, Any]]] = {}

    def _register_all(self) -> dict[str, list[tuple[str, Any]]]:
        """Call every register hook of every plugin once, in registration order.  A plugin whose
        hook raises, or registers something that is not the hook's type or has no name, is
        disabled: nothing it registered is used, ``describe`` shows why, one warning on stderr,
        and every other plugin loads."""
        if self._registered is not None:
            return self._registered
        got: dict[str, list[tuple[str, Any]]] = {}
        failed: dict[str, str] = {}
        for hook_name, (_, kind) in REGISTER_HOOKS.items():
            got[hook_name] = []
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                mine: list[Any] = []
                try:
                    impl.function(register=mine.append)
                    for obj in mine:
                        if not isinstance(obj, kind):
                            raise TypeError(f"it registered {obj!r:.60}, which is not a {kind.__name__}")
                        obj_name = getattr(obj, "name", None)
                        if not isinstance(obj_name, str) or not obj_name:
                            raise TypeError(f"it registered a {kind.__name__} without a name")
                except PLUGIN_FAILURES as exc:  # one broken plugin must not break every command
                    failed.setdefault(impl.plugin_name, f"{hook_name.removeprefix('hjepa_bench_')}: "
                                                        f"{type(exc).__name__}: {first_line(exc, 300)}")
                    continue
                got[hook_name].extend((impl.plugin_name, obj) for obj in mine)
                for obj in mine:
                    _check_cost(obj, impl.plugin_name)
        for info in self.infos:
            if info.name in failed:
                info.error = failed[info.name]
                print(f"warning: plugin {info.name} ({info.module}) is disabled: its hook {info.error}",
                      file=sys.stderr)
        self._registered = {h: [(p, o) for p, o in objs if p not in failed] for h, objs in got.items()}
        return self._registered

    def _collect(self, hook_name: str, kind: type[Any]) -> list[tuple[str, Any]]:
        """What the plugins registered through ``hook_name`` (instances of ``kind``, checked when they
        were registered), with the plugin that registered it.  Names must be unique per kind."""
        if hook_name in self._cache:
            return self._cache[hook_name]
        seen: dict[str, str] = {}
        found = self._register_all()[hook_name]
        for plugin, obj in found:
            if obj.name in seen:
                raise UserError(f"{kind.__name__} {obj.name!r} is registered twice, by {seen[obj.name]} and {plugin}; "
                                "disable one with -p no:NAME.")
            seen[obj.name] = plugin
        self._cache[hook_name] = found
        return found

    def backends(self) -> dict[str, Backend]:
        return {b.name: b for _, b in self._collect("hjepa_bench_register_backends", Backend)}

    def workloads(self) -> dict[str, Workload]:
        return {w.name: w for _, w in self._collect("hjepa_bench_register_workloads", Workload)}

    def workload(self, name: str) -> Workload:
        """The workload registered as ``name``; an unknown name is a UserError."""
        return _registered(self.workloads(), name, "workload")

    def probes(self) -> dict[str, Probe]:
        return {p.name: p for _, p in self._collect("hjepa_bench_register_probes", Probe)}

    def select_probes(self, names: Iterable[str] | None = None) -> list[Probe]:
        """Probes for a run.  ``None`` means ``["cheap"]`` (the default).  Names
        may be probe names or the groups ``cheap``, ``all`` and ``none``."""
        probes = self.probes()
        chosen: dict[str, Probe] = {}
        unknown = []
        for name in ["cheap"] if names is None else [n for n in names if n]:
            if name == "all":
                chosen.update(probes)
            elif name == "cheap":
                chosen.update({n: p for n, p in probes.items() if p.cost == "cheap"})
            elif name in probes:
                chosen[name] = probes[name]
            elif name != "none":
                unknown.append(name)
        if unknown:
            raise UserError(f"unknown probe {', '.join(unknown)}; registered probes: "
                            f"{', '.join(sorted(probes)) or 'none'} (or the groups cheap, all, none).")
        return list(chosen.values())

    def report_sections(self) -> list[ReportSection]:
        sections = [s for _, s in self._collect("hjepa_bench_register_report_sections", ReportSection)]
        return sorted(sections, key=lambda s: (s.order, s.name))

    def executors(self) -> dict[str, Executor]:
        return {e.name: e for _, e in self._collect("hjepa_bench_register_executors", Executor)}

    def executor(self, name: str) -> Executor:
        """The executor registered as ``name``; an unknown or unavailable one is a UserError."""
        executor = _registered(self.executors(), name, "executor")
        why = executor.availability()
        if not why.available:
            raise UserError(f"executor {name} is not available: {why.reason.rstrip('.')}.")
        return executor

    def add_options(self, parsers: Mapping[str, argparse.ArgumentParser],
                    list_type: Callable[..., Callable[[str], list[Any]]]) -> None:
        """Every plugin's ``hjepa_bench_add_options`` on each command's parser (``parsers``: command ->
        parser), in registration order; the flags each command got from plugins become its default
        ``plugin_flags`` (dest -> flag).  A plugin whose flags cannot be added is a UserError."""
        impls = list(reversed(self.pm.hook.hjepa_bench_add_options.get_hookimpls()))
        for command, parser in parsers.items():
            flags = CommandFlags(command, parser, list_type)
            for impl in impls:
                try:
                    impl.function(parser=flags)
                except ADD_OPTIONS_FAILURES as exc:
                    raise UserError(f"plugin {impl.plugin_name} cannot add its flags to {command}: "
                                    f"{type(exc).__name__}: {first_line(exc, 300)}.") from None
            parser.set_defaults(plugin_flags=flags.added)

    def describe(self) -> list[PluginInfo]:
        """Loaded plugins with their hooks, the objects each one registered, and why a plugin
        is disabled (``error``)."""
        by_plugin = {info.name: info for info in self.infos}
        for hook_name, (label, kind) in REGISTER_HOOKS.items():
            for plugin_name, obj in self._collect(hook_name, kind):
                by_plugin[plugin_name].provides.setdefault(label, []).append(obj.name)
        for info in self.infos:
            plugin = self.pm.get_plugin(info.name)
            info.hooks = sorted(c.name for c in (self.pm.get_hookcallers(plugin) or []))
        return self.infos


def _check_cost(obj: Any, plugin: str) -> None:
    """A probe's ``cost`` is one of ``PROBE_COSTS``; another is a UserError."""
    if isinstance(obj, Probe) and obj.cost not in PROBE_COSTS:
        raise UserError(f"probe {obj.name!r} of plugin {plugin} has cost {obj.cost!r}; a probe's cost is "
                        f"{' or '.join(repr(c) for c in PROBE_COSTS)}.")


def _registered(found: Mapping[str, T], name: str, kind: str) -> T:
    """``found[name]``; an unknown name is a UserError that lists the registered ones."""
    if name not in found:
        raise UserError(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(sorted(found))}.")
    return found[name]


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@functools.cache
def _entry_points() -> tuple[tuple[md.EntryPoint, str, str], ...]:
    """(entry point, distribution name, version), deduplicated (read once per process: the parser
    and the command both load plugins)."""
    out, seen = [], set()
    for dist in md.distributions():
        try:
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception:  # a broken dist-info must not break the tool
            continue
        name = dist.metadata["Name"] or "?"
        for ep in eps:
            if (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            out.append((ep, name, dist.version))
    return tuple(out)


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def build_plugins(extra: Iterable[str] = (), *, objects: Iterable[tuple[str, Any]] = (),
                  env: dict[str, str] | None = None, builtins: Iterable[str] | None = None) -> Plugins:
    """Build the manager: the built-ins (only those named in ``builtins`` when given), entry points,
    then ``HJEPA_BENCH_PLUGINS`` and ``extra`` module names (``no:NAME`` blocks a plugin), then
    ``objects`` (name, plugin) registered directly (for tests and embedding)."""
    env = dict(os.environ if env is None else env)
    extra = list(extra)
    blocked = set(_split(env.get(ENV_DISABLE))) | {e[3:] for e in extra if e.startswith("no:")}
    modules = _split(env.get(ENV_PLUGINS)) + [e for e in extra if not e.startswith("no:")]
    autoload = env.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() in ("", "0", "false", "no")

    pm = _Manager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []

    def register(plugin: Any, name: str, module: str, origin: str) -> None:
        if name in blocked or module in blocked:
            return
        if pm.get_plugin(name) is not None or pm.is_registered(plugin):
            return
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise UserError(f"plugin {name} ({module}) is invalid: {exc}.") from None
        infos.append(PluginInfo(name=name, module=module, origin=origin))

    def load(module: str, what: str) -> Any:
        try:
            return importlib.import_module(module)
        except PLUGIN_FAILURES as exc:
            raise UserError(f"cannot load plugin module {module} ({what}): {type(exc).__name__}: {exc}.") from None

    wanted = None if builtins is None else set(builtins)
    for name, module in BUILTIN_PLUGINS:
        if name not in blocked and module not in blocked and (wanted is None or name in wanted):
            register(load(module, "built-in"), name, module, "builtin")
    for ep, dist, version in _entry_points():
        if _normalise(dist) == DIST_NAME or not autoload or ep.name in blocked:
            continue  # (an older install of this package listed its built-ins as entry points)
        try:
            plugin = ep.load()
        except PLUGIN_FAILURES as exc:
            raise UserError(f"cannot load plugin {ep.name} ({ep.value}, from {dist}): "
                            f"{type(exc).__name__}: {exc}.") from None
        register(plugin, ep.name, ep.value, f"entry point of {dist} {version}")
    for module in modules:
        register(load(module, "requested"), module, module, f"{ENV_PLUGINS} / -p")
    for name, plugin in objects:
        register(plugin, name, getattr(plugin, "__name__", type(plugin).__name__), "registered directly")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(f"a plugin implements a hook that does not exist (misspelled?): {exc}.") from None
    return Plugins(pm, infos)


def add_plugin_options(parsers: Mapping[str, argparse.ArgumentParser], extra: Iterable[str],
                       list_type: Callable[..., Callable[[str], list[Any]]],
                       env: dict[str, str] | None = None) -> None:
    """The plugins' own flags on each command's parser (:meth:`Plugins.add_options`), from the
    built-ins in :data:`OPTION_BUILTINS` and every third-party or requested plugin (``extra``: the
    ``-p`` values)."""
    build_plugins(extra, env=env, builtins=OPTION_BUILTINS).add_options(parsers, list_type)


@functools.lru_cache(maxsize=1)
def registered_probes() -> Mapping[str, Probe]:
    """The probes the plugins register with the default settings (the environment's plugins; built
    once): what a report asks when its caller names no probes (``ReportSettings.probes``)."""
    return MappingProxyType(build_plugins().probes())


def auto_order(names: Iterable[str]) -> list[str]:
    """``names`` in the order ``--device auto`` tries them: cuda, mps, cpu, then the others by name."""
    names = set(names)
    return [n for n in dict.fromkeys(AUTO_ORDER + tuple(sorted(names))) if n in names]


def select_backend(plugins: Plugins | Mapping[str, Backend], name: str) -> Backend:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a UserError."""
    backends = plugins.backends() if isinstance(plugins, Plugins) else plugins
    available = [n for n, b in backends.items() if b.availability().available]
    if name == "auto":
        for candidate in auto_order(available):
            return backends[candidate]
        raise UserError("no device is available (not even cpu).")
    if name not in backends:
        raise UserError(f"unknown device {name!r}; known devices: {', '.join(sorted(backends))} (or auto).")
    why = backends[name].availability()
    if not why.available:
        raise UserError(f"device {name} is not available ({why.reason.rstrip('.')}); "
                        f"available: {', '.join(available) or 'none'}.")
    return backends[name]


def probe_names(probes: str | None, profile: bool = False) -> list[str] | None:
    """``--probes NAME,... | all | none``, plus ``--profile`` (adds the profiler); None: the default (cheap)."""
    names = None if probes is None else [n.strip() for n in probes.split(",") if n.strip()]
    if profile:
        names = (names or ["cheap"]) + ["profiler"]
    return names
