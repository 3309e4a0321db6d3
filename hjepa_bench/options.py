"""Full-training options: the validation guide's A, B and C, and user-defined ones.

An option is an upstream-format config (the quick_val defaults with the option's
keys on top) plus what the decision matrix needs to judge it: the time window it
is meant for, the guide's "choose if" conditions and expected result, and a
priority (higher = more ambitious; the recommendation picks the most ambitious
option that passes and fits).

The guide's options are the upstream configs it was written with, shipped as
presets: A is ``full_20epoch``, B is ``full_100epoch`` and C is A with 50 epochs
and 5 warm-up epochs (the H-JEPA validation guide's decision matrix; see
docs/verdicts.md).

A user file holds ``options:``, a list of mappings with ``name`` and optional
``title``, ``hours: [low, high]``, ``priority``, ``expected``, ``choose_if``,
``config`` (an upstream YAML file the option starts from, relative to the file, or a preset name)
and upstream sections (``model:``, ``data:``, ``training:``, ``checkpoint:``...)
that override it.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .config import preset_names, preset_path, resolve_config, resolve_precision
from .errors import UserError, read_yaml
from .record import short_model_name

#: an option name becomes part of a file name (configs/option_NAME.yaml): no separators, no dots
OPTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
META_KEYS = ("name", "title", "hours", "priority", "expected", "choose_if", "config")


@dataclass
class TrainingOption:
    name: str
    title: str
    sections: dict[str, Any]  # upstream-format overrides on top of ``config`` (or the quick_val defaults)
    hours: tuple[float, float]  # the time window the option is meant for
    priority: int
    expected: str = ""
    choose_if: list[str] = field(default_factory=list)
    config: str | None = None
    source: str = "validation guide"
    candidate: bool = True  # False: projected for information, never recommended (a measured run's own config)
    #: the full run's training / validation images (None: the thresholds' dataset_size / val_size)
    dataset_size: int | None = None
    val_size: int | None = None
    _resolved: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def values(self) -> dict[str, Any]:
        """The resolved upstream config of this option (validated), a copy.  The config file and
        sections are resolved once, the first time (``load_options`` does it when it loads a file)."""
        if self._resolved is None:
            rc = resolve_config(self.config, sections=self.sections)
            if rc.unknown_keys:
                raise UserError(f"unknown config keys: {', '.join(rc.unknown_keys)}.")
            problem = _checkpoint_section(rc.values)
            if problem:
                raise UserError(f"config key {problem}.")
            self._resolved = rc.values
        return copy.deepcopy(self._resolved)

    @property
    def epochs(self) -> int:
        return int(self.values()["training"]["epochs"])

    def model_key(self, values: Mapping[str, Any] | None = None) -> ModelKey:
        """What a measurement must share with the option to project it."""
        v = values or self.values()
        return model_key(v)

    def checkpoint_every_epochs(self) -> int:
        """``checkpoint.save_frequency`` (checked when the config is resolved), else every epoch."""
        return (self.values().get("checkpoint") or {}).get("save_frequency") or 1

    def describe(self) -> str:
        v = self.values()
        m = v["model"]
        return (f"{short_model_name(m['encoder_type'])}, {m['num_hierarchies']} levels, "
                f"predictor depth {m['predictor']['depth']}, {v['training']['epochs']} epochs, "
                f"batch {v['data']['batch_size']}")


#: encoder, depth, levels, predictor depth, heads and MLP ratio, image size
ModelKey = tuple[str, int, int, int, int, float, int]


def model_key(values: Mapping[str, Any]) -> ModelKey:
    """The model config that sets the step time: encoder, depth, levels, predictor, image size."""
    m = values["model"]
    return (m["encoder_type"], int(m.get("encoder_depth", 12)), int(m["num_hierarchies"]),
            int(m["predictor"]["depth"]), int(m["predictor"]["num_heads"]),
            float(m["predictor"]["mlp_ratio"]), int(values["data"]["image_size"]))


def record_matches(option_values: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """A record measures an option when its model config is the option's, it ran the
    ``reference`` step (the upstream step's cost) and the precision the option's
    config gives on that record's device."""
    c = record["config"]  # every field model_key reads is checked by check_record
    if model_key(c) != model_key(option_values):
        return False
    bench = c["bench"]
    if bench.get("variant") != "reference":
        return False
    backend = (record.get("env") or {}).get("backend") or bench.get("device")
    return bool(bench.get("precision") == resolve_precision(option_values, str(backend)))


#: option C: the full_20epoch preset (option A) run for 50 epochs with 5 warm-up epochs
_C_SECTIONS: dict[str, Any] = {"training": {"epochs": 50, "warmup_epochs": 5}}

GUIDE_OPTIONS: tuple[TrainingOption, ...] = (
    TrainingOption(
        name="A", title="Quick baseline (20 epochs)", sections={}, config=str(preset_path("full_20epoch")),
        hours=(2.0, 3.0), priority=1,
        expected="linear probe 70-78% (guide's expectation), ~2.5 h",
        choose_if=["validation loss converges well", "speed ~3.2 it/s or better", "results wanted within 2-3 hours"]),
    TrainingOption(
        name="B", title="Competitive results (100 epochs)", sections={},
        config=str(preset_path("full_100epoch")), hours=(12.0, 14.0), priority=3,
        expected="linear probe 80-85% (guide's expectation), ~12-14 h",
        choose_if=["validation shows stable training", "an overnight run (~12-14 hours) is fine",
                   "publication-quality results wanted"]),
    TrainingOption(
        name="C", title="Extended baseline (50 epochs)", sections=_C_SECTIONS,
        config=str(preset_path("full_20epoch")), hours=(6.0, 7.0), priority=2,
        expected="linear probe 75-80% (guide's expectation), ~6-7 h",
        choose_if=["better than the quick baseline wanted", "no time for 100 epochs",
                   "validation shows good convergence"]),
)


def guide_options() -> list[TrainingOption]:
    return [copy.deepcopy(o) for o in GUIDE_OPTIONS]


class CheckpointSection(BaseModel):
    """Upstream's ``checkpoint:`` section: only ``save_frequency`` changes a projection."""
    model_config = ConfigDict(strict=True)
    save_frequency: int | None = Field(None, ge=1)


def _checkpoint_section(values: Mapping[str, Any]) -> str | None:
    """What is wrong with the config's ``checkpoint:`` section (it sets how often a full run
    writes a checkpoint in the projections), or None."""
    ck = values.get("checkpoint")
    if ck is None:
        return None
    if not isinstance(ck, Mapping):
        return f"checkpoint must be a mapping (save_frequency: N, ...), not {ck!r:.60}"
    try:
        CheckpointSection.model_validate({"save_frequency": ck.get("save_frequency")})
    except ValidationError:
        every = ck.get("save_frequency")
        return f"checkpoint.save_frequency must be a whole number of epochs >= 1, not {every!r:.60}"
    return None


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _window(hours: list[float]) -> list[float]:
    if not 0 <= hours[0] <= hours[1] or hours[1] <= 0:
        raise PydanticCustomError("hours_window", "0 <= low <= high and high > 0")
    return hours


class OptionEntry(BaseModel):
    """The option's own fields (:data:`META_KEYS`) of one entry of an options file's ``options:``
    list, each of its type and in its range (the entry's other keys are upstream sections, checked
    when the option's config is resolved).  A relative ``config`` is read in the folder of the
    validation context ``{"folder": Path}``."""
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    name: str = Field(pattern=f"^{OPTION_NAME.pattern}$")
    title: str | None = None
    expected: str | None = None
    hours: Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_window)] = [0.0, math.inf]
    priority: int = 0
    choose_if: Annotated[list[str] | None, BeforeValidator(_one_or_list)] = None
    config: str | None = None

    @field_validator("config")
    @classmethod
    def _config_file(cls, config: str | None, info: ValidationInfo) -> str | None:
        """The upstream YAML file the option starts from: a path (relative to the options file) or a preset."""
        if config is None:
            return None
        if not config.strip():
            raise PydanticCustomError("config_path", "an empty path")
        folder = Path((info.context or {}).get("folder", "."))
        path = Path(config) if Path(config).is_absolute() else (folder / config).resolve()
        if not path.is_file() and config in preset_names():
            path = preset_path(config)
        if not path.is_file():
            raise PydanticCustomError("config_missing", "{problem}", {
                "problem": f"config {config} is not a file (looked for {path}) and not a preset "
                           f"({', '.join(preset_names())})"})
        return str(path)

    def option_fields(self) -> dict[str, Any]:
        """The TrainingOption fields this entry sets."""
        return {"title": self.title or self.name, "expected": self.expected or "",
                "hours": (float(self.hours[0]), float(self.hours[1])), "priority": self.priority,
                "choose_if": list(self.choose_if or []), "config": self.config}


#: what an option's own field must be, as said when it is not
_FIELD_PROBLEMS = {
    "title": "title must be text",
    "expected": "expected must be text",
    "hours": "hours must be [low, high], two finite numbers of hours with 0 <= low <= high and high > 0",
    "priority": "priority must be a whole number (higher = more ambitious)",
    "choose_if": "choose_if must be a list of conditions (text)",
    "config": "config must be the path of an upstream YAML file",
}


def _option_entry(item: Mapping[str, Any], index: int, where: Path) -> OptionEntry:
    """The ``index``-th entry of the options file ``where``, checked; a bad field is a UserError naming it."""
    try:
        own = {key: value for key, value in item.items() if key in META_KEYS}
        return OptionEntry.model_validate(own, context={"folder": where.parent})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0])
        if field == "name":
            raise UserError(f"option {index} in {where}: the name {str(item['name'])[:80]!r} must be 1 to 64 "
                            "letters, digits, '_' or '-' (it names the file configs/option_NAME.yaml).") from None
        what = (str((error.get("ctx") or {})["problem"]) if error["type"] == "config_missing"
                else f"{_FIELD_PROBLEMS[field]}, not {item[field]!r:.60}")
        raise UserError(f"option {item['name']} in {where}: {what}.") from None


def load_options(path: str | Path | None, *, include_guide: bool = True) -> list[TrainingOption]:
    """The guide's options, plus (or replaced by, on a name clash) those in ``path``.  Every field
    is checked when the file is read, and each option's config is resolved (and validated) then,
    once."""
    options = guide_options() if include_guide else []
    if path is None:
        return options
    p = Path(path)
    data = read_yaml(p, "options file")
    items = data.get("options") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise UserError(f"options file {p} must hold 'options:', a list of options (name:, model:, training:, ...).")
    extra = sorted(str(k) for k in data if k != "options")
    if extra:
        raise UserError(f"options file {p} holds {', '.join(extra)} besides 'options:'; only 'options:' is read.")
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not item.get("name"):
            raise UserError(f"option {i} in {p} must be a mapping with a name.")
        entry = _option_entry(item, i, p)
        name = entry.name
        opt = TrainingOption(name=name, sections={k: v for k, v in item.items() if k not in META_KEYS},
                             source=str(p), **entry.option_fields())
        try:
            opt.values()
        except UserError as exc:
            raise UserError(f"option {name} in {p}: {str(exc).rstrip('.')}.") from None
        options = [o for o in options if o.name != name] + [opt]
    return options


def option_overrides(option: TrainingOption) -> dict[str, Any]:
    """Dotted overrides that make a sweep point measure ``option``'s model config."""
    v = option.values()
    m = v["model"]
    return {"model.encoder_type": m["encoder_type"], "model.num_hierarchies": m["num_hierarchies"],
            "model.predictor.depth": m["predictor"]["depth"], "model.predictor.num_heads": m["predictor"]["num_heads"],
            "model.predictor.mlp_ratio": m["predictor"]["mlp_ratio"], "model.encoder_depth": m.get("encoder_depth", 12),
            "data.image_size": v["data"]["image_size"], "data.batch_size": v["data"]["batch_size"],
            "data.num_workers": v["data"]["num_workers"],
            "loss.hierarchy_weights": list(v["loss"]["hierarchy_weights"]),
            "bench.variant": "reference"}


def config_option(values: Mapping[str, Any], name: str, title: str, hours: tuple[float, float] | None = None,
                  *, dataset_size: int | None = None, val_size: int | None = None) -> TrainingOption:
    """An option that is exactly ``values`` (the config of a logged run, a validation run or a
    measured config), projected for its own epoch count and, when given, its own data sizes."""
    sections = {k: copy.deepcopy(v) for k, v in values.items() if k not in ("bench",)}
    return TrainingOption(name=name, title=title, sections=sections, hours=hours or (0.0, float("inf")),
                          priority=0, expected="", choose_if=["this is the measured run's own config"],
                          source="measured run", candidate=False, dataset_size=dataset_size, val_size=val_size)


#: at most this many own configs get a row of their own (a sweep over many models: the first ones)
MAX_OWN_CONFIGS = 4


def own_config_options(records: Any) -> list[TrainingOption]:
    """One projection-only option per distinct measured config (model config, epochs, data sizes)
    among the ok records of the reference step, except those a sweep measured for a training option
    (that option's row projects them): the full run of the config being measured, named
    ``this`` (``this1``, ``this2``... when there are several)."""
    seen: dict[tuple[ModelKey, int, Any, Any], Mapping[str, Any]] = {}
    for r in records:
        c = r.get("config") or {}
        if r.get("status") != "ok" or (c.get("bench") or {}).get("variant") != "reference":
            continue
        group = (r.get("sweep") or {}).get("group") or []
        if len(group) > 2 and group[1] == "option":  # an option's own config: projected as that option
            continue
        b = c["bench"]
        key = (model_key(c), int(c["training"]["epochs"]), b.get("dataset_size"), b.get("val_size"))
        seen.setdefault(key, c)
    items = list(seen.items())[:MAX_OWN_CONFIGS]
    out = []
    for i, ((_, epochs, train, val), c) in enumerate(items):
        name = "this" if len(items) == 1 else f"this{i + 1}"
        values = copy.deepcopy(dict(c))
        if train is not None and val is None:
            val = int(round(0.2 * int(train)))
        out.append(config_option(values, name, f"this config for {epochs} epochs"
                                 + (f" on {train:,} images" if train is not None else ""),
                                 dataset_size=train, val_size=val))
    return out


# --------------------------------------------------------------------------- ready-to-run YAML
def option_config(row: Mapping[str, Any], option: TrainingOption) -> dict[str, Any]:
    """The option's upstream-format config with the recommended values filled in."""
    v = copy.deepcopy(option.values())
    v.pop("bench", None)  # hjepa-bench's own section; upstream has none
    if v["model"].get("encoder_depth", 12) == 12:
        v["model"].pop("encoder_depth", None)
    if row.get("batch") is not None:
        v["data"]["batch_size"] = int(row["batch"])
    advised = (row.get("workers_choice") or {}).get("workers")  # the report's one worker advice
    if advised is not None or row.get("workers") is not None:
        v["data"]["num_workers"] = int(advised if advised is not None else row["workers"])
    v["training"]["warmup_epochs"] = row["warmup"]["warmup_epochs"]
    v["training"]["lr"] = float(row["lr"]["lr"])
    backend = (row.get("machine") or "").split(" ")[0] or None
    if backend:
        v["device"] = backend
    ranks = int(row.get("world_size") or 1)
    if ranks > 1:  # measured as a data-parallel job: upstream's own section for it
        v["distributed"] = {"enabled": True, "backend": "nccl" if backend == "cuda" else "gloo", "world_size": ranks}
    v.setdefault("logging", {})["experiment_name"] = f"hjepa_option_{option.name}"
    return v


def config_header(row: Mapping[str, Any], option: TrainingOption) -> str:
    lines = [f"# H-JEPA full training: option {option.name}, {option.title}",
             f"# Written by hjepa-bench from measurements on {row.get('machine') or 'no machine (not measured)'}."]
    ranks = int(row.get("world_size") or 1)
    if ranks > 1:
        lines.append(f"# measured as a data-parallel job of {ranks} processes (DDP): batch_size is per process "
                     f"({ranks} x {row.get('batch')} images per step); launch with torchrun --nproc-per-node {ranks}")
    if row.get("measured") and row.get("status") == "ok":
        lines += [f"# batch_size {row['batch']}: {row['batch_choice']['reason']}",
                  f"# num_workers {row['workers_choice'].get('workers', row['workers'])}: "
                  f"{row['workers_choice']['reason']}",
                  f"# projected {row['hours']:.1f} h for {row['epochs']} epochs" if row.get("hours") is not None
                  else "# no projection"]
    else:
        lines.append("# batch_size/num_workers: the option's own values (this option was not measured)")
        for advice in row.get("machine_worker_advice") or []:
            lines.append(f"# measured on this machine for another model config: {advice}")
    lines += [f"# lr: {row['lr']['reason']}", f"# warmup_epochs: {row['warmup']['reason']}"]
    return "\n".join("# " + line[2:].replace("\n", " ") if line.startswith("# ") else line for line in lines) + "\n"


def option_yaml(row: Mapping[str, Any], option: TrainingOption) -> str:
    """``configs/option_X.yaml``: the option's upstream-format config with the recommended values of its
    decision-matrix ``row``, under a comment header saying where each value came from."""
    return config_header(row, option) + str(yaml.safe_dump(option_config(row, option), sort_keys=False))
