"""Configuration: the upstream H-JEPA YAML format, plus a ``bench`` section.

The three upstream files in ``shared/reference/hjepa-configs`` load unchanged.
Every key is classified: *used* (it changes what is run), *no effect* (known,
but it does not change a benchmark, with the reason), or *unknown*.  Keys that
are unknown or have no effect are listed in warnings, never silently ignored.
CLI flags override file values (``apply_overrides``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import UserError

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
    },
}

# Known keys that do not change a benchmark, with the reason.
NO_EFFECT: dict[str, str] = {
    "model.ema.momentum_warmup_epochs": "the EMA momentum rises linearly over the whole run, as upstream",
    "masking.num_context_masks": "the context is the complement of the target blocks, as upstream",
    "masking.context_scale": "the context is the complement of the target blocks, as upstream",
    "checkpoint": "benchmarks write no checkpoints",
    "logging": "benchmarks keep no training logs",
    "distributed": "the processes come from --nproc-per-node (bench.nproc_per_node) and the backend from the "
                   "device (gloo on cpu, nccl on cuda)",
    "evaluation": "no evaluation during a benchmark",
    "device": "the device comes from --device (default auto)",
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
    if name in MODELS:
        return name
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    known = ", ".join(sorted(SHORT_NAMES)) + " (or the full timm names)"
    raise UserError(f"unknown model {name!r}; known models: {known}.")


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {p} is not valid YAML{where}: {problem}.") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {p} is not a text file.") from None
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


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = values
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def apply_overrides(rc: ResolvedConfig, overrides: Mapping[str, Any]) -> None:
    """Apply dotted-key overrides (``None`` values are skipped)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted == "model.encoder_type":
            value = resolve_model_name(str(value))
        if dotted == "model.num_hierarchies":
            weights = list(get(rc.values, "loss.hierarchy_weights"))
            if len(weights) != int(value):
                new = [0.5 ** i for i in range(int(value))]
                rc.notes.append(f"loss.hierarchy_weights {weights} replaced by {new} for {value} hierarchy levels")
                _set(rc.values, "loss.hierarchy_weights", new)
        _set(rc.values, dotted, value)
        if dotted == "model.encoder_type":
            _set(rc.values, "model.embed_dim", MODELS[value]["embed_dim"])


def _check_type(values: Mapping[str, Any], dotted: str, kind: type, lo=None, hi=None) -> None:
    v = get(values, dotted)
    numbers = (int, float) if kind is float else (int,)
    if isinstance(v, bool) or not isinstance(v, numbers):
        raise UserError(f"config key {dotted} must be {'a number' if kind is float else 'an integer'}, not {v!r}.")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise UserError(f"config key {dotted} = {v!r} is out of range [{lo}, {hi}].")


def _validate(rc: ResolvedConfig, present: set[str]) -> None:
    v = rc.values
    v["model"]["encoder_type"] = resolve_model_name(str(get(v, "model.encoder_type")))
    facts = MODELS[v["model"]["encoder_type"]]
    if get(v, "model.embed_dim") != facts["embed_dim"]:
        rc.notes.append(
            f"model.embed_dim {get(v, 'model.embed_dim')} does not match {v['model']['encoder_type']} "
            f"(D={facts['embed_dim']}); the encoder's width is used"
        )
        v["model"]["embed_dim"] = facts["embed_dim"]
    for key, kind, lo, hi in [
        ("model.num_hierarchies", int, 1, 4), ("model.encoder_depth", int, 1, 48),
        ("model.predictor.depth", int, 1, 48), ("model.predictor.num_heads", int, 1, 64),
        ("model.predictor.mlp_ratio", float, 0.25, 16), ("data.image_size", int, 32, 1024),
        ("data.batch_size", int, 1, 65536), ("data.num_workers", int, 0, 256),
        ("masking.num_masks", int, 1, 16), ("training.epochs", int, 1, 100000),
        ("training.warmup_epochs", float, 0, 100000), ("training.lr", float, 0, 10),
        ("training.min_lr", float, 0, 10), ("training.weight_decay", float, 0, 10),
        ("training.clip_grad", float, 0, 1e9), ("model.ema.momentum", float, 0, 1),
        ("model.ema.momentum_end", float, 0, 1), ("seed", int, None, None),
        ("bench.warmup_steps", int, 0, 100000), ("bench.min_steps", int, 1, 10**7),
        ("bench.max_steps", int, 1, 10**7), ("bench.max_time_s", float, 0, 1e7),
        ("bench.target_rel_precision", float, 0, 1), ("bench.window_steps", int, 1, 10**6),
        ("bench.synthetic_size", int, 1, 10**8), ("bench.nproc_per_node", int, 1, 4096),
    ]:
        _check_type(v, key, kind, lo, hi)
    if v["data"]["image_size"] % PATCH_SIZE:
        raise UserError(f"data.image_size {v['data']['image_size']} must be a multiple of the patch size {PATCH_SIZE}.")
    D = facts["embed_dim"]
    if D % v["model"]["predictor"]["num_heads"]:
        raise UserError(f"model.predictor.num_heads {v['model']['predictor']['num_heads']} must divide the width D={D} of {v['model']['encoder_type']}.")
    for key in ("masking.mask_scale", "masking.aspect_ratio", "training.betas"):
        pair = get(v, key)
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
        if not ok or (key != "training.betas" and pair[0] > pair[1]):
            raise UserError(f"config key {key} must be a pair of numbers [low, high], not {pair!r}.")
    weights = get(v, "loss.hierarchy_weights")
    if not isinstance(weights, (list, tuple)) or len(weights) != v["model"]["num_hierarchies"]:
        raise UserError(f"loss.hierarchy_weights {weights!r} must list one weight per hierarchy level ({v['model']['num_hierarchies']}).")
    if v["loss"]["type"] not in LOSS_TYPES:
        raise UserError(f"loss.type {v['loss']['type']!r} is not one of {', '.join(LOSS_TYPES)}.")
    if str(v["training"]["optimizer"]).lower() != "adamw":
        raise UserError(f"training.optimizer {v['training']['optimizer']!r} is not supported; the H-JEPA step uses adamw.")
    if str(v["training"]["lr_schedule"]).lower() != "cosine":
        raise UserError(f"training.lr_schedule {v['training']['lr_schedule']!r} is not supported; the H-JEPA step uses cosine.")
    b = v["bench"]
    if b["variant"] not in VARIANTS:
        raise UserError(f"variant {b['variant']!r} is not one of {', '.join(VARIANTS)}.")
    if b["precision"] not in ("auto", "fp32", "fp16", "bf16"):
        raise UserError(f"precision {b['precision']!r} is not one of auto, fp32, fp16, bf16.")
    if b["data"] not in DATA_KINDS:
        raise UserError(f"data {b['data']!r} is not one of {', '.join(DATA_KINDS)}.")
    if b["limit_samples"] is not None:
        _check_type(v, "bench.limit_samples", int, 1, None)
    if b["max_steps"] < b["min_steps"]:
        raise UserError(f"bench.max_steps {b['max_steps']} is below bench.min_steps {b['min_steps']}.")
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

