"""Configuration: the upstream H-JEPA YAML format, plus a ``bench`` section.

Upstream's config files load unchanged.  Three of them ship with hjepa-bench as
built-in presets (``hjepa_bench/presets/*.yaml``: quick_val, full_20epoch,
full_100epoch); ``--config`` takes a preset name or a file path (:func:`config_file`).
Every key is classified: *used* (it changes what is run), *no effect* (known,
but it does not change a benchmark, with the reason), or *unknown*.  Keys that
are unknown or have no effect are listed in warnings, never silently ignored.
CLI flags override file values (``apply_overrides``).
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from .errors import UserError, read_yaml
from .stats import is_finite_number  # noqa: F401 - also imported from here by the commands

# Short model names and the ViT facts the step needs.  D = width, heads = encoder heads.
MODELS: dict[str, dict[str, int]] = {
    "vit_tiny_patch16_224": {"embed_dim": 192, "num_heads": 3},
    "vit_small_patch16_224": {"embed_dim": 384, "num_heads": 6},
    "vit_base_patch16_224": {"embed_dim": 768, "num_heads": 12},
    "vit_large_patch16_224": {"embed_dim": 1024, "num_heads": 16},
}
SHORT_NAMES = {name.split("_patch")[0]: name for name in MODELS}  # vit_tiny -> vit_tiny_patch16_224
PATCH_SIZE = 16
def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(workers: int) -> int:
    """A default DataLoader worker count on this machine: never more than the cores available
    (more workers than cores only compete with the step; a value the user gives is kept)."""
    return min(int(workers), available_cores())


#: where ``hjepa-bench sweep`` writes when --out is not given
DEFAULT_SWEEP_OUT = "hjepa-bench-sweep"

#: the precisions a step trains in (a backend says which of them work on its device)
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: what ``bench.precision`` (``--precision``) may be: a precision, or auto (see :func:`resolve_precision`)
PrecisionSetting = Literal["auto", Precision]
PRECISION_SETTINGS: tuple[str, ...] = get_args(PrecisionSetting)
Variant = Literal["reference", "efficient"]
VARIANTS: tuple[str, ...] = get_args(Variant)
LossType = Literal["mse", "smooth_l1", "combined"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
DataKind = Literal["synthetic", "cifar10"]
DATA_KINDS: tuple[str, ...] = get_args(DataKind)

# Defaults: the upstream quick_val config (the validation run), plus the bench section.
DEFAULTS: dict[str, Any] = {
    "model": {
        "encoder_type": "vit_tiny_patch16_224",
        "embed_dim": 192,
        "num_hierarchies": 2,
        "encoder_depth": 12,  # hjepa-bench extension: shallow encoders for tests
        "predictor": {"depth": 2, "num_heads": 4, "mlp_ratio": 4.0},
        "ema": {"momentum": 0.996, "momentum_end": 1.0, "momentum_warmup_epochs": 5},
    },
    "data": {
        "dataset": "cifar10",
        "data_path": "./data",
        "image_size": 224,
        "batch_size": 32,
        "num_workers": 4,
        "pin_memory": False,
        "augmentation": {"color_jitter": 0.3, "horizontal_flip": True, "random_crop": True},
    },
    "masking": {
        "num_masks": 4,
        "mask_scale": [0.15, 0.2],
        "aspect_ratio": [0.75, 1.5],
        "num_context_masks": 1,
        "context_scale": [0.85, 1.0],
    },
    "training": {
        "epochs": 5,
        "warmup_epochs": 1,
        "lr": 1.0e-4,
        "min_lr": 1.0e-6,
        "weight_decay": 0.04,
        "optimizer": "adamw",
        "betas": [0.9, 0.95],
        "lr_schedule": "cosine",
        "clip_grad": 3.0,
        "use_amp": True,
        "accumulation_steps": 1,
    },
    "loss": {
        "type": "mse",
        "hierarchy_weights": [1.0, 0.5],
        "normalize_embeddings": False,
        "vicreg_weight": 0.1,
    },
    "seed": 42,
    # the upstream trainer's periodic work (projections count it: hjepa_bench.hjepa.periodic)
    "logging": {"log_frequency": 50, "tensorboard": {"enabled": True}, "wandb": {"enabled": False}},
    "bench": {
        "workload": "hjepa",
        "variant": "reference",  # reference | efficient
        "precision": "auto",  # auto | fp32 | fp16 | bf16 (auto: fp16 on cuda when use_amp, else fp32)
        "data": "synthetic",  # synthetic | cifar10
        "data_path": None,  # cifar10 folder; default data.data_path
        "synthetic_size": 50000,
        "limit_samples": None,  # use only the first N samples of the data set
        "persistent_workers": False,  # upstream restarts workers every epoch
        "warmup_steps": 3,
        "min_steps": 10,
        "max_steps": 200,
        "max_time_s": 60.0,
        "target_rel_precision": 0.02,  # stop when the median is known to +-2% (95% CI)
        "window_steps": 10,  # steps between device syncs
        "nproc_per_node": 1,  # >1: a data-parallel job of that many processes (torchrun + DDP)
        "dataset_size": None,  # training images of the full run projected for this config (None: 50,000)
        "val_size": None,  # validation images per pass of that run (None: 10,000, or dataset_size / 5)
    },
}

# Known keys that do not change a benchmark, with the reason.
NO_EFFECT: dict[str, str] = {
    "model.ema.momentum_warmup_epochs": "the EMA momentum rises linearly over the whole run, as upstream",
    "masking.num_context_masks": "the context is the complement of the target blocks, as upstream",
    "masking.context_scale": "the context is the complement of the target blocks, as upstream",
    "checkpoint": "benchmarks write no checkpoints",
    "logging.experiment_name": "benchmarks keep no training logs",
    "logging.log_dir": "benchmarks keep no training logs",
    "logging.wandb.project": "benchmarks keep no training logs",
    "logging.wandb.entity": "benchmarks keep no training logs",
    "logging.wandb.tags": "benchmarks keep no training logs",
    "distributed": "the processes come from --nproc-per-node (bench.nproc_per_node) and the backend from the "
                   "device (gloo on cpu, nccl on cuda)",
    "evaluation": "no evaluation during a benchmark",
    "device": "the device comes from --device (default auto)",
    "bench.device": "the device comes from --device (a result record's config names the one it ran on)",
}
CONDITIONAL_NO_EFFECT = {
    "loss.vicreg_weight": "only used with loss.type: combined",
    "training.accumulation_steps": "gradient accumulation is not modelled (one optimizer step per batch)",
    "data.dataset": "synthetic data is used unless --data cifar10",
    "data.data_path": "synthetic data is used unless --data cifar10",
    "training.use_amp": "precision is set explicitly",
}


@dataclass
class ResolvedConfig:
    values: dict[str, Any]
    source: str | None = None
    unknown_keys: list[str] = field(default_factory=list)
    no_effect: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        out = []
        if self.unknown_keys:
            out.append("unknown config keys (ignored): " + ", ".join(self.unknown_keys))
        if self.no_effect:
            out.append(
                "config keys with no effect on this benchmark: "
                + "; ".join(f"{k} ({why})" for k, why in self.no_effect.items())
            )
        out.extend(self.notes)
        return out


def resolve_model_name(name: str) -> str:
    if not isinstance(name, str):
        raise UserError(f"model.encoder_type must be a model name, not {_show(name)}.")
    if name in MODELS:
        return name
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    known = ", ".join(sorted(SHORT_NAMES)) + " (or the full timm names)"
    raise UserError(f"unknown model {name!r}; known models: {known}.")


#: the built-in presets: upstream H-JEPA's configs, shipped as package data
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    """The names of the built-in presets (the file names in :data:`PRESETS_DIR` without ``.yaml``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of the built-in preset ``name``; an unknown name is a UserError listing the presets."""
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; the presets are {', '.join(preset_names())} "
                        "(or give the path of a YAML file).")
    return path


def config_file(spec: str | Path) -> Path:
    """What ``--config`` names: an existing file, else a built-in preset by name (``quick_val``).
    A bare word that is neither is an unknown preset; anything else is a file path (a missing one
    is reported when it is read)."""
    p = Path(spec)
    try:
        if p.exists():
            return p
    except OSError:  # a name too long, say: reading it says why
        return p
    text = str(spec)
    if text in preset_names():
        return preset_path(text)
    if p.suffix == "" and len(p.parts) == 1 and not text.startswith("."):
        preset_path(text)  # raises: unknown preset
    return p


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The sections of a config file or preset (read by :func:`~hjepa_bench.errors.read_yaml`, like
    every YAML input)."""
    p = config_file(path)
    data = read_yaml(p, "config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of sections (model:, data:, ...), "
                        f"not a {type(data).__name__}.")
    return data


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str, unknown: list[str]) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            if dotted.split(".")[0] in NO_EFFECT or dotted in NO_EFFECT:
                base[key] = copy.deepcopy(value)  # keep it in the resolved config
            else:
                unknown.append(dotted)
            continue
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise UserError(f"config key {dotted} must be a mapping, not {value!r}.")
            _merge(base[key], value, dotted + ".", unknown)
        else:
            base[key] = value


def resolve_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                   *, base: Mapping[str, Any] | None = None,
                   sections: Mapping[str, Any] | None = None) -> ResolvedConfig:
    """Defaults <- YAML file <- ``sections`` (upstream-format mapping, checked like
    a file) <- CLI overrides (dotted keys), validated."""
    values = copy.deepcopy(dict(base) if base is not None else DEFAULTS)
    unknown: list[str] = []
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = load_yaml(path)
        _merge(values, file_values, "", unknown)
    if sections:
        _merge(values, sections, "", unknown)
        file_values = {**file_values, **sections}
    rc = ResolvedConfig(values=values, source=str(path) if path else None, unknown_keys=unknown)
    present = set(_flatten_keys(file_values))
    for key, why in NO_EFFECT.items():
        if key in present or any(k.startswith(key + ".") for k in present):
            rc.no_effect[key] = why
    if overrides:
        for dotted, value in overrides.items():  # a file's bad value stays an error when a flag replaces it
            if value is not None and dotted in present and dotted in SCHEMA:
                try:
                    check_value(dotted, _lookup(values, dotted))
                except UserError as exc:
                    where = f"config file {path}" if path else "the config"
                    raise UserError(f"{where}: {str(exc).rstrip('.')} (a flag overrides it, but the file is still "
                                    "wrong: fix it there).") from None
        apply_overrides(rc, overrides)
    _check_config(rc, present)
    return rc


def _flatten_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten_keys(v, dotted + "."))
        else:
            out.append(dotted)
    return out


def get(values: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = values
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    """``get``, with a missing key or a section that is not a mapping as a UserError."""
    cur: Any = values
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(cur, Mapping):
            raise UserError(f"config key {'.'.join(parts[:i])} must be a mapping, not {_show(cur)}.")
        if part not in cur:
            raise UserError(f"config key {'.'.join(parts[:i + 1])} is missing.")
        cur = cur[part]
    return cur


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = values
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def apply_overrides(rc: ResolvedConfig, overrides: Mapping[str, Any]) -> None:
    """Apply dotted-key overrides (``None`` values are skipped).  Each value is checked against
    :data:`SCHEMA` (:func:`check_value`) before it is used (``--hierarchies 10**20`` must not build
    a list of that size)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        check_value(dotted, value)
        if dotted == "model.encoder_type":
            value = resolve_model_name(value)
        if dotted == "model.num_hierarchies":
            weights = list(get(rc.values, "loss.hierarchy_weights"))
            if len(weights) != value:
                new = [0.5 ** i for i in range(value)]
                rc.notes.append(f"loss.hierarchy_weights {weights} replaced by {new} for {value} hierarchy levels")
                _set(rc.values, "loss.hierarchy_weights", new)
        _set(rc.values, dotted, value)
        if dotted == "model.encoder_type":
            _set(rc.values, "model.embed_dim", MODELS[value]["embed_dim"])


# --------------------------------------------------------------------------- the schema
# The type and range of every key of DEFAULTS (and of the known keys without effect that hold a
# value), as pydantic models of the config's sections, and the rules between keys (:class:`Config`).
# They only check: ``ResolvedConfig.values`` stays the plain mapping the rest of the code reads.
# Every key is required (DEFAULTS gives the values); a key that is not checked here is kept as it is.


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_list(value: Any) -> Any:
    """A tuple is taken as a list (a flag's value may be one); anything else is checked as it is."""
    return list(value) if isinstance(value, tuple) else value


def _as_pair(value: Any) -> Any:
    """:func:`_as_list`, and a list of another length is refused before its items are checked."""
    value = _as_list(value)
    if isinstance(value, list) and len(value) != 2:
        raise PydanticCustomError("pair_length", "must be a pair [low, high]")
    return value


def _ordered(pair: list[float]) -> list[float]:
    if pair[0] > pair[1]:
        raise PydanticCustomError("unordered", "must be [low, high] with low <= high")
    return pair


def _only(choice: str, why: str) -> BeforeValidator:
    """Text that is ``choice`` in any case; anything else is not supported, because ``why``."""
    def check(value: Any) -> Any:
        if not isinstance(value, str) or value.lower() != choice:
            raise PydanticCustomError("unsupported", "not supported; {why}", {"why": why})
        return value
    return BeforeValidator(check)


#: [low, high] with 0 < low <= high <= 1 (a share of the image)
ScalePair = Annotated[list[Annotated[float, Field(gt=0, le=1)]], BeforeValidator(_as_pair),
                      Field(min_length=2, max_length=2), AfterValidator(_ordered)]
RatioPair = Annotated[list[Annotated[float, Field(gt=0, le=100)]], BeforeValidator(_as_pair),
                      Field(min_length=2, max_length=2), AfterValidator(_ordered)]
BetaPair = Annotated[list[Annotated[float, Field(ge=0, lt=1)]], BeforeValidator(_as_pair),
                     Field(min_length=2, max_length=2)]
Weights = Annotated[list[Annotated[float, Field(ge=0, le=1e6)]], BeforeValidator(_as_list)]
Count = Annotated[int, Field(ge=1, le=10**8)]


class _Section(BaseModel):
    """Strict types (a whole number is an int, not a bool or 3.0; text is a str), finite numbers;
    keys it does not name are left alone (the known keys without effect, kept in the config).
    Built on first use (``defer_build``): a command's ``--help`` does not pay for it."""
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore", defer_build=True)


class PredictorSection(_Section):
    depth: int = Field(ge=1, le=48)
    num_heads: int = Field(ge=1, le=64)
    mlp_ratio: float = Field(ge=0.25, le=16)


class EmaSection(_Section):
    momentum: float = Field(ge=0, le=1)
    momentum_end: float = Field(ge=0, le=1)
    momentum_warmup_epochs: float = Field(ge=0, le=100000)


class ModelSection(_Section):
    encoder_type: str  # a model name: checked by resolve_model_name
    embed_dim: int = Field(ge=1, le=65536)
    num_hierarchies: int = Field(ge=1, le=4)
    encoder_depth: int = Field(ge=1, le=48)
    predictor: PredictorSection
    ema: EmaSection


class AugmentationSection(_Section):
    color_jitter: float = Field(ge=0, le=5)
    horizontal_flip: bool
    random_crop: bool


class DataSection(_Section):
    dataset: str
    data_path: str | None
    image_size: int = Field(ge=32, le=1024)
    batch_size: int = Field(ge=1, le=65536)
    num_workers: int = Field(ge=0, le=256)
    pin_memory: bool
    augmentation: AugmentationSection


class MaskingSection(_Section):
    num_masks: int = Field(ge=1, le=16)
    mask_scale: ScalePair
    aspect_ratio: RatioPair
    num_context_masks: int = Field(ge=1, le=16)
    context_scale: ScalePair


class TrainingSection(_Section):
    epochs: int = Field(ge=1, le=100000)
    warmup_epochs: float = Field(ge=0, le=100000)
    lr: float = Field(ge=0, le=10)
    min_lr: float = Field(ge=0, le=10)
    weight_decay: float = Field(ge=0, le=10)
    optimizer: Annotated[str, _only("adamw", "the H-JEPA step uses adamw")]
    betas: BetaPair
    lr_schedule: Annotated[str, _only("cosine", "the H-JEPA step uses cosine")]
    clip_grad: float = Field(ge=0, le=1e9)
    use_amp: bool
    accumulation_steps: int = Field(ge=1, le=10**6)


class LossSection(_Section):
    type: LossType
    hierarchy_weights: Weights
    normalize_embeddings: bool
    vicreg_weight: float = Field(ge=0, le=1e6)


class BenchSection(_Section):
    workload: str
    variant: Variant
    precision: PrecisionSetting
    data: DataKind
    data_path: str | None
    synthetic_size: Count
    limit_samples: Count | None
    persistent_workers: bool
    warmup_steps: int = Field(ge=0, le=100000)
    min_steps: int = Field(ge=1, le=10**7)
    max_steps: int = Field(ge=1, le=10**7)
    max_time_s: float = Field(gt=0, le=1e7)
    target_rel_precision: float = Field(gt=0, le=1)
    window_steps: int = Field(ge=1, le=10**6)
    nproc_per_node: int = Field(ge=1, le=4096)
    dataset_size: Annotated[int, Field(ge=1, le=10**9)] | None
    val_size: Annotated[int, Field(ge=0, le=10**9)] | None


class SwitchSection(_Section):
    enabled: bool


class LoggingSection(_Section):
    log_frequency: int = Field(ge=1, le=10**7)
    tensorboard: SwitchSection
    wandb: SwitchSection


class Config(_Section):
    """A resolved config: each section's keys, then the rules between keys (:meth:`rules`),
    which read the keys the user set from the validation context ``{"present": set of dotted keys}``."""
    model: ModelSection
    data: DataSection
    masking: MaskingSection
    training: TrainingSection
    loss: LossSection
    seed: int = Field(ge=0, le=2**32 - 1)  # what torch and numpy accept as a seed
    bench: BenchSection
    logging: LoggingSection

    @model_validator(mode="wrap")
    @classmethod
    def rules(cls, data: Any, check_keys: ModelWrapValidatorHandler[Config], info: ValidationInfo) -> Config:
        """Each key checked, then the rules between keys, in order: the first broken one is the error."""
        config = check_keys(data)
        present: set[str] = set((info.context or {}).get("present", ()))
        for rule in (_encoder_width, _image_in_patches, _heads_divide_width, _weight_per_level, _step_bounds,
                     _batch_fits):
            problem = rule(config, data, present)
            if problem:
                raise PydanticCustomError("config_rule", "{sentence}", {"sentence": problem})
        return config


def _width(c: Config) -> int:
    return MODELS[resolve_model_name(c.model.encoder_type)]["embed_dim"]


def _encoder_width(c: Config, given: Mapping[str, Any], present: set[str]) -> str | None:
    """A known model name, and its width as model.embed_dim when the user sets that (else the width
    replaces it: :func:`_normalise`)."""
    try:
        width = _width(c)
    except UserError as exc:
        return str(exc)
    name = resolve_model_name(c.model.encoder_type)
    if c.model.embed_dim != width and "model.embed_dim" in present:
        return (f"model.embed_dim {c.model.embed_dim} does not match {name}, whose width is {width}; "
                f"set it to {width} or leave it out.")
    return None


def _image_in_patches(c: Config, given: Mapping[str, Any], present: set[str]) -> str | None:
    if c.data.image_size % PATCH_SIZE:
        return f"data.image_size {c.data.image_size} must be a multiple of the patch size {PATCH_SIZE}."
    return None


def _heads_divide_width(c: Config, given: Mapping[str, Any], present: set[str]) -> str | None:
    width, heads = _width(c), c.model.predictor.num_heads
    if width % heads:
        return (f"model.predictor.num_heads {heads} must divide the width D={width} of "
                f"{resolve_model_name(c.model.encoder_type)}.")
    return None


def _weight_per_level(c: Config, given: Mapping[str, Any], present: set[str]) -> str | None:
    weights, levels = c.loss.hierarchy_weights, c.model.num_hierarchies
    if len(weights) != levels:  # shown as given (1, not 1.0)
        return (f"loss.hierarchy_weights {_show(given['loss']['hierarchy_weights'])} must list one weight per "
                f"hierarchy level ({levels}).")
    return None


def _step_bounds(c: Config, given: Mapping[str, Any], present: set[str]) -> str | None:
    if c.bench.max_steps < c.bench.min_steps:
        return f"bench.max_steps {c.bench.max_steps} is below bench.min_steps {c.bench.min_steps}."
    return None


def _batch_fits(c: Config, given: Mapping[str, Any], present: set[str]) -> str | None:
    """One whole batch in the samples used (the last incomplete batch is dropped, as upstream)."""
    b, batch = c.bench, c.data.batch_size
    samples = [(b.limit_samples, "bench.limit_samples")]
    if b.data == "synthetic":
        samples.append((b.synthetic_size, "bench.synthetic_size"))
    for n, key in samples:
        if n is not None and batch > n:
            return (f"data.batch_size {batch} is above the {n} samples of {key}: not one batch (the last "
                    "incomplete batch is dropped, as upstream); use a smaller batch or more samples.")
    return None


def _schema(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            out.update(_schema(section, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out


#: every checked key (dotted) and its field (type and range) in :class:`Config`
SCHEMA: dict[str, FieldInfo] = _schema(Config)


@functools.cache
def _key_model(dotted: str) -> type[BaseModel]:
    """A model of one field, ``value``: the key ``dotted`` of :class:`Config`."""
    info = SCHEMA[dotted]
    return create_model(f"Check_{dotted.replace('.', '_')}", __base__=_Section, value=(info.annotation, info))


# --------------------------------------------------------------------------- one sentence per error
_BOUNDS = ("ge", "gt", "le", "lt")


def _facts(annotation: Any, metadata: list[Any]) -> tuple[Any, dict[str, Any]]:
    """The type under ``Annotated[...]`` and ``X | None``, and its constraints (ge, gt, le, lt,
    min_length, max_length), from ``metadata`` and the annotation's own."""
    facts: dict[str, Any] = {}
    pending = list(metadata)
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            pending += extra
        elif get_origin(annotation) in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            break
    while pending:
        item = pending.pop()
        if isinstance(item, FieldInfo):
            pending += item.metadata
        for name in (*_BOUNDS, "min_length", "max_length"):
            if getattr(item, name, None) is not None:
                facts[name] = getattr(item, name)
    return annotation, facts


def _field_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[Any, dict[str, Any]]:
    """The type and constraints of what ``loc`` (a pydantic error's) points at in ``root``."""
    annotation: Any = root
    metadata: list[Any] = []
    for part in loc:
        base, _ = _facts(annotation, metadata)
        if isinstance(part, int) and get_args(base):
            annotation, metadata = get_args(base)[0], []
        elif isinstance(base, type) and issubclass(base, BaseModel) and part in base.model_fields:
            info = base.model_fields[str(part)]
            annotation, metadata = info.annotation, list(info.metadata)
        else:
            return None, {}
    return _facts(annotation, metadata)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _span(kind: Any, facts: dict[str, Any]) -> str:
    def show(bound: Any) -> str:
        return str(bound) if kind is int else f"{bound:g}"
    low = f"[{show(facts['ge'])}" if "ge" in facts else f"({show(facts['gt'])}"
    high = f"{show(facts['le'])}]" if "le" in facts else f"{show(facts['lt'])})"
    return f"{low}, {high}"


#: pydantic's error types for a value of the wrong type, and what the key's value must be
_WRONG_TYPE = {"int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
               "float_type": "a finite number", "float_parsing": "a finite number", "finite_number": "a finite number",
               "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text"}


def error_sentence(error: ErrorDetails, root: type[BaseModel] = Config) -> str:
    """One sentence for pydantic's ``error`` on ``root``: the dotted key, the bad value and what
    is allowed."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key, shown = _dotted(loc), _show(value)
    base, facts = _field_at(root, loc)
    ctx = error.get("ctx") or {}
    if kind in _WRONG_TYPE:
        return f"{key} must be {_WRONG_TYPE[kind]}, not {shown}."
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key} = {shown} is out of range {_span(base, facts)}."
    if kind == "literal_error":
        return f"{key} {shown} is not one of {', '.join(map(str, get_args(base)))}."
    if kind in ("list_type", "too_short", "too_long", "pair_length"):
        pair = facts.get("min_length") == facts.get("max_length") == 2
        return f"{key} must be {'a pair [low, high]' if pair else 'a list'}, not {shown}."
    if kind == "missing":
        return f"config key {key} is missing."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"config key {key} must be a mapping, not {shown}."
    if kind == "config_rule":
        return str(ctx["sentence"])
    if kind == "unordered":
        return f"{key} {shown} must be [low, high] with low <= high."
    if kind == "unsupported":
        return f"{key} {shown} is not supported; {ctx['why']}."
    return f"{key} = {shown}: {error['msg']}."


def check_value(dotted: str, value: Any) -> None:
    """Check one value of a config key (a flag, a grid value) the way a config file's is checked."""
    if dotted in SCHEMA:
        try:
            _key_model(dotted).model_validate({"value": value})
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = (*dotted.split("."), *error["loc"][1:])
            raise UserError(error_sentence({**error, "loc": loc})) from None
    if dotted == "model.encoder_type":
        resolve_model_name(value)


def _check_config(rc: ResolvedConfig, present: set[str]) -> None:
    """Check every key and the rules between keys (:class:`Config`), then fill in what they imply."""
    try:
        Config.model_validate(rc.values, context={"present": present})
    except ValidationError as exc:
        raise UserError(error_sentence(exc.errors()[0])) from None
    _normalise(rc.values)
    rc.no_effect.update(_conditional_no_effect(rc.values, present))


def _normalise(values: dict[str, Any]) -> None:
    """The full model name, and its width as model.embed_dim (a different one set by the user is an error)."""
    values["model"]["encoder_type"] = resolve_model_name(values["model"]["encoder_type"])
    values["model"]["embed_dim"] = MODELS[values["model"]["encoder_type"]]["embed_dim"]


def _conditional_no_effect(values: Mapping[str, Any], present: set[str]) -> dict[str, str]:
    """The keys without effect in this config (:data:`CONDITIONAL_NO_EFFECT`) and why."""
    v, b = values, values["bench"]
    idle = {
        "loss.vicreg_weight": v["loss"]["type"] != "combined" and "loss.vicreg_weight" in present,
        "training.accumulation_steps": v["training"]["accumulation_steps"] != 1,
        "data.dataset": b["data"] != "cifar10" and "data.dataset" in present,
        "data.data_path": b["data"] != "cifar10" and "data.data_path" in present,
        "training.use_amp": b["precision"] != "auto" and "training.use_amp" in present,
    }
    return {key: CONDITIONAL_NO_EFFECT[key] for key, no_effect in idle.items() if no_effect}


def resolve_precision(values: Mapping[str, Any], backend_name: str) -> str:
    """``auto`` means what upstream does: fp16 autocast on CUDA when use_amp, else fp32."""
    p = str(values["bench"]["precision"])
    if p != "auto":
        return p
    return "fp16" if backend_name == "cuda" and values["training"]["use_amp"] else "fp32"


def grid_size(values: Mapping[str, Any]) -> int:
    return int(values["data"]["image_size"]) // PATCH_SIZE


def steps_per_epoch(dataset_size: int, batch_size: int) -> int:
    return dataset_size // batch_size  # drop_last=True


def to_yaml(values: Mapping[str, Any]) -> str:
    return str(yaml.safe_dump(dict(values), sort_keys=False))

