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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

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
VARIANTS = ("reference", "efficient")
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

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LOSS_TYPES = ("mse", "smooth_l1", "combined")
DATA_KINDS = ("synthetic", "cifar10")

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
        raise UserError(f"config file {p} must hold a mapping of sections (model:, data:, ...), not a {type(data).__name__}.")
    return data


def _merge(base: dict, update: Mapping, prefix: str, unknown: list[str]) -> None:
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
    _validate(rc, present)
    return rc


def _flatten_keys(d: Mapping, prefix: str = "") -> list[str]:
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
    :data:`SCHEMA` before it is used (``--hierarchies 10**20`` must not build a list of that size)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted in SCHEMA:
            SCHEMA[dotted](dotted, value)
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
Check = Callable[[str, Any], None]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(lo: int, hi: int) -> Check:
    def check(key: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{key} must be a whole number, not {_show(v)}.")
        if not lo <= v <= hi:
            raise UserError(f"{key} = {_show(v)} is out of range [{lo}, {hi}].")
    return check


def _num(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(key: str, v: Any) -> None:
        if not is_finite_number(v):
            raise UserError(f"{key} must be a finite number, not {_show(v)}.")
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise UserError(f"{key} = {_show(v)} is out of range {span}.")
    return check


def _bool(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise UserError(f"{key} must be true or false, not {_show(v)}.")


def _text(key: str, v: Any) -> None:
    if not isinstance(v, str):
        raise UserError(f"{key} must be text, not {_show(v)}.")


def _choice(*choices: str, fold: bool = False, unsupported: str = "") -> Check:
    """One of ``choices`` (``fold``: in any case); ``unsupported``: why others are not supported."""
    def check(key: str, v: Any) -> None:
        if not isinstance(v, str) or (v.lower() if fold else v) not in choices:
            if unsupported:
                raise UserError(f"{key} {_show(v)} is not supported; {unsupported}.")
            raise UserError(f"{key} {_show(v)} is not one of {', '.join(choices)}.")
    return check


def _optional(inner: Check) -> Check:
    def check(key: str, v: Any) -> None:
        if v is not None:
            inner(key, v)
    return check


def _list(each: Check, *, length: int | None = None, ordered: bool = False) -> Check:
    """A list (of ``length`` items) whose items pass ``each``; ``ordered``: low <= high."""
    def check(key: str, v: Any) -> None:
        what = "a pair [low, high]" if length == 2 else "a list"
        if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length):
            raise UserError(f"{key} must be {what}, not {_show(v)}.")
        for i, item in enumerate(v):
            each(f"{key}[{i}]", item)
        if ordered and v[0] > v[1]:
            raise UserError(f"{key} {_show(v)} must be [low, high] with low <= high.")
    return check


#: every key of DEFAULTS (and the known keys without effect that hold a value): its type and range
SCHEMA: dict[str, Check] = {
    "model.encoder_type": _text,
    "model.embed_dim": _int(1, 65536),
    "model.num_hierarchies": _int(1, 4),
    "model.encoder_depth": _int(1, 48),
    "model.predictor.depth": _int(1, 48),
    "model.predictor.num_heads": _int(1, 64),
    "model.predictor.mlp_ratio": _num(0.25, 16),
    "model.ema.momentum": _num(0, 1),
    "model.ema.momentum_end": _num(0, 1),
    "model.ema.momentum_warmup_epochs": _num(0, 100000),
    "data.dataset": _text,
    "data.data_path": _optional(_text),
    "data.image_size": _int(32, 1024),
    "data.batch_size": _int(1, 65536),
    "data.num_workers": _int(0, 256),
    "data.pin_memory": _bool,
    "data.augmentation.color_jitter": _num(0, 5),
    "data.augmentation.horizontal_flip": _bool,
    "data.augmentation.random_crop": _bool,
    "masking.num_masks": _int(1, 16),
    "masking.mask_scale": _list(_num(0, 1, lo_open=True), length=2, ordered=True),
    "masking.aspect_ratio": _list(_num(0, 100, lo_open=True), length=2, ordered=True),
    "masking.num_context_masks": _int(1, 16),
    "masking.context_scale": _list(_num(0, 1, lo_open=True), length=2, ordered=True),
    "training.epochs": _int(1, 100000),
    "training.warmup_epochs": _num(0, 100000),
    "training.lr": _num(0, 10),
    "training.min_lr": _num(0, 10),
    "training.weight_decay": _num(0, 10),
    "training.optimizer": _choice("adamw", fold=True, unsupported="the H-JEPA step uses adamw"),
    "training.betas": _list(_num(0, 1, hi_open=True), length=2),
    "training.lr_schedule": _choice("cosine", fold=True, unsupported="the H-JEPA step uses cosine"),
    "training.clip_grad": _num(0, 1e9),
    "training.use_amp": _bool,
    "training.accumulation_steps": _int(1, 10**6),
    "loss.type": _choice(*LOSS_TYPES),
    "loss.hierarchy_weights": _list(_num(0, 1e6)),
    "loss.normalize_embeddings": _bool,
    "loss.vicreg_weight": _num(0, 1e6),
    "seed": _int(0, 2**32 - 1),  # what torch and numpy accept as a seed
    "bench.workload": _text,
    "bench.variant": _choice(*VARIANTS),
    "bench.precision": _choice(*PRECISIONS),
    "bench.data": _choice(*DATA_KINDS),
    "bench.data_path": _optional(_text),
    "bench.synthetic_size": _int(1, 10**8),
    "bench.limit_samples": _optional(_int(1, 10**8)),
    "bench.persistent_workers": _bool,
    "bench.warmup_steps": _int(0, 100000),
    "bench.min_steps": _int(1, 10**7),
    "bench.max_steps": _int(1, 10**7),
    "bench.max_time_s": _num(0, 1e7, lo_open=True),
    "bench.target_rel_precision": _num(0, 1, lo_open=True),
    "bench.window_steps": _int(1, 10**6),
    "bench.nproc_per_node": _int(1, 4096),
    "bench.dataset_size": _optional(_int(1, 10**9)),
    "bench.val_size": _optional(_int(0, 10**9)),
    "logging.log_frequency": _int(1, 10**7),
    "logging.tensorboard.enabled": _bool,
    "logging.wandb.enabled": _bool,
}


def check_value(dotted: str, value: Any) -> None:
    """Check one value of a config key (a flag, a grid value) the way a config file's is checked."""
    if dotted in SCHEMA:
        SCHEMA[dotted](dotted, value)
    if dotted == "model.encoder_type":
        resolve_model_name(value)


def _validate(rc: ResolvedConfig, present: set[str]) -> None:
    v = rc.values
    for key, check in SCHEMA.items():
        check(key, _lookup(v, key))
    v["model"]["encoder_type"] = resolve_model_name(v["model"]["encoder_type"])
    D = MODELS[v["model"]["encoder_type"]]["embed_dim"]
    if v["model"]["embed_dim"] != D:
        if "model.embed_dim" in present:
            raise UserError(f"model.embed_dim {v['model']['embed_dim']} does not match {v['model']['encoder_type']}, "
                            f"whose width is {D}; set it to {D} or leave it out.")
        v["model"]["embed_dim"] = D  # not set by the user: the encoder's width
    m, d, b = v["model"], v["data"], v["bench"]
    if d["image_size"] % PATCH_SIZE:
        raise UserError(f"data.image_size {d['image_size']} must be a multiple of the patch size {PATCH_SIZE}.")
    if D % m["predictor"]["num_heads"]:
        raise UserError(f"model.predictor.num_heads {m['predictor']['num_heads']} must divide the width D={D} of "
                        f"{m['encoder_type']}.")
    weights = v["loss"]["hierarchy_weights"]
    if len(weights) != m["num_hierarchies"]:
        raise UserError(f"loss.hierarchy_weights {_show(weights)} must list one weight per hierarchy level "
                        f"({m['num_hierarchies']}).")
    if b["max_steps"] < b["min_steps"]:
        raise UserError(f"bench.max_steps {b['max_steps']} is below bench.min_steps {b['min_steps']}.")
    samples = [(b["limit_samples"], "bench.limit_samples")] + (
        [(b["synthetic_size"], "bench.synthetic_size")] if b["data"] == "synthetic" else [])
    for n, key in samples:
        if n is not None and d["batch_size"] > n:
            raise UserError(f"data.batch_size {d['batch_size']} is above the {n} samples of {key}: not one batch "
                            "(the last incomplete batch is dropped, as upstream); use a smaller batch or more samples.")
    # conditional no-effect keys
    if v["loss"]["type"] != "combined" and "loss.vicreg_weight" in present:
        rc.no_effect["loss.vicreg_weight"] = CONDITIONAL_NO_EFFECT["loss.vicreg_weight"]
    if v["training"]["accumulation_steps"] != 1:
        rc.no_effect["training.accumulation_steps"] = CONDITIONAL_NO_EFFECT["training.accumulation_steps"]
    if b["data"] != "cifar10":
        for key in ("data.dataset", "data.data_path"):
            if key in present:
                rc.no_effect[key] = CONDITIONAL_NO_EFFECT[key]
    if b["precision"] != "auto" and "training.use_amp" in present:
        rc.no_effect["training.use_amp"] = CONDITIONAL_NO_EFFECT["training.use_amp"]


def resolve_precision(values: Mapping[str, Any], backend_name: str) -> str:
    """``auto`` means what upstream does: fp16 autocast on CUDA when use_amp, else fp32."""
    p = values["bench"]["precision"]
    if p != "auto":
        return p
    return "fp16" if backend_name == "cuda" and values["training"]["use_amp"] else "fp32"


def grid_size(values: Mapping[str, Any]) -> int:
    return values["data"]["image_size"] // PATCH_SIZE


def steps_per_epoch(dataset_size: int, batch_size: int) -> int:
    return dataset_size // batch_size  # drop_last=True


def to_yaml(values: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(values), sort_keys=False)

