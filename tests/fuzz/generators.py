"""Hypothesis strategies for the fuzz suite: each draws one :class:`harness.Case`, labelled
valid or invalid *by construction*.

The labels follow the documented contract (docs/configuration.md, docs/commands.md) for
bad input, not what the code does: NaN and infinity are never a
valid number, a value of the wrong type is never valid, a file that is not a regular
text file is never a valid input file, an output path under a regular file is never
valid.  Where the contract is not clear (a negative seed, an option title that is a
number) no case is generated, so every label is certain.
"""
from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Callable
from typing import Any

import yaml
from harness import DIRECTORY, FIFO, PLUGIN_API_IMPORTS, Case, Special, TorchSave
from hypothesis import strategies as st

NAN, INF = float("nan"), float("inf")
TINY_SYNTHETIC = 16  # samples in the tiny config's synthetic data set
TINY_BATCH = 2

# --------------------------------------------------------------------------- predicates
Pred = Callable[[Any], bool]


def is_int(v: Any) -> bool:
    return type(v) is int


def is_num(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def int_in(lo: int, hi: int) -> Pred:
    return lambda v: is_int(v) and lo <= v <= hi


def num_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Pred:
    def ok(v: Any) -> bool:
        if not is_num(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


def is_bool(v: Any) -> bool:
    return type(v) is bool


def one_of(*choices: str) -> Pred:
    return lambda v: type(v) is str and v in choices


def pair(each: Pred, ordered: bool = True) -> Pred:
    return lambda v: (type(v) is list and len(v) == 2 and all(each(x) for x in v)
                      and (not ordered or v[0] <= v[1]))


def any_str(v: Any) -> bool:
    return type(v) is str


def optional(pred: Pred) -> Pred:
    return lambda v: v is None or pred(v)


#: values of every type, including the classic traps (NaN, inf, huge ints, numbers as strings)
WEIRD: list[Any] = [None, True, False, "", "abc", "1e-4", "no", "yes", [], {}, [1], {"a": 1}, 0, -1, 1, 2, 3,
                    10**20, -(10**20), 2**64, 0.5, 1.5, -0.5, 1e-300, 1e300, NAN, INF, -INF, 4, 16, 32, 33, 64,
                    0.9, 1.0, [0.9, 0.95], [1.0, 0.5], [NAN, 1.0], [2, 5], [0, 0.2], "vit_tiny", "reference",
                    "fp64", "fast", "hjepa", [[1]], "cifar10"]

# --------------------------------------------------------------------------- the config contract
#: a complete tiny config: every checked key is explicit, so the merged config is this document
TINY_CONFIG: dict[str, Any] = {
    "model": {"encoder_type": "vit_tiny_patch16_224", "embed_dim": 192, "num_hierarchies": 2, "encoder_depth": 1,
              "predictor": {"depth": 1, "num_heads": 4, "mlp_ratio": 4.0},
              "ema": {"momentum": 0.996, "momentum_end": 1.0, "momentum_warmup_epochs": 1}},
    "data": {"dataset": "cifar10", "data_path": "./data", "image_size": 32, "batch_size": TINY_BATCH,
             "num_workers": 0, "pin_memory": False,
             "augmentation": {"color_jitter": 0.3, "horizontal_flip": True, "random_crop": True}},
    "masking": {"num_masks": 4, "mask_scale": [0.15, 0.2], "aspect_ratio": [0.75, 1.5]},
    "training": {"epochs": 1, "warmup_epochs": 1, "lr": 1.0e-4, "min_lr": 1.0e-6, "weight_decay": 0.04,
                 "optimizer": "adamw", "betas": [0.9, 0.95], "lr_schedule": "cosine", "clip_grad": 3.0,
                 "use_amp": True, "accumulation_steps": 1},
    "loss": {"type": "mse", "hierarchy_weights": [1.0, 0.5], "normalize_embeddings": False, "vicreg_weight": 0.1},
    "seed": 42,
    "bench": {"workload": "hjepa", "variant": "reference", "precision": "auto", "data": "synthetic",
              "synthetic_size": TINY_SYNTHETIC, "persistent_workers": False, "warmup_steps": 1, "min_steps": 2,
              "max_steps": 3, "max_time_s": 5.0, "target_rel_precision": 0.02, "window_steps": 10,
              "nproc_per_node": 1},
}
TINY_YAML = yaml.safe_dump(TINY_CONFIG, sort_keys=False)
#: the same, but with the default data set size (for sweeps, which never build the data set here)
SWEEP_CONFIG = copy.deepcopy(TINY_CONFIG)
del SWEEP_CONFIG["bench"]["synthetic_size"]
SWEEP_YAML = yaml.safe_dump(SWEEP_CONFIG, sort_keys=False)
#: grid that keeps every base-config value (null = the config's value) plus option A
SWEEP_GRID = yaml.safe_dump({"devices": ["cpu"], "batch_sizes": [None], "workers": [None], "options": ["A"]})

WIDTH = {"vit_tiny": 192, "vit_tiny_patch16_224": 192}

#: dotted key -> (predicate of a valid value, valid samples that stay cheap to build)
CONFIG_KEYS: dict[str, tuple[Pred, list[Any]]] = {
    "model.encoder_type": (one_of("vit_tiny", "vit_tiny_patch16_224"), ["vit_tiny", "vit_tiny_patch16_224"]),
    "model.embed_dim": (lambda v: is_int(v) and v == 192, [192]),
    "model.num_hierarchies": (int_in(1, 4), [1, 2, 3, 4]),
    "model.encoder_depth": (int_in(1, 48), [1, 2]),
    "model.predictor.depth": (int_in(1, 48), [1, 2]),
    "model.predictor.num_heads": (lambda v: int_in(1, 64)(v) and 192 % v == 0, [1, 2, 3, 4, 6, 8, 12]),
    "model.predictor.mlp_ratio": (num_in(0.25, 16), [0.25, 1, 2.0, 4.0]),
    "model.ema.momentum": (num_in(0, 1), [0.9, 0.996, 1.0]),
    "model.ema.momentum_end": (num_in(0, 1), [0.99, 1.0]),
    "data.image_size": (lambda v: int_in(32, 1024)(v) and v % 16 == 0, [32, 48, 64]),
    "data.batch_size": (int_in(1, 65536), [1, 2, 4, 8]),
    "data.num_workers": (int_in(0, 256), [0, 1, 2]),
    "data.pin_memory": (is_bool, [True, False]),
    "data.augmentation.color_jitter": (num_in(0, 1e300), [0.0, 0.3, 0.4, 1.0]),
    "data.augmentation.horizontal_flip": (is_bool, [True, False]),
    "data.augmentation.random_crop": (is_bool, [True, False]),
    "masking.num_masks": (int_in(1, 16), [1, 2, 4]),
    "masking.mask_scale": (pair(num_in(0, 1, lo_open=True)), [[0.15, 0.2], [0.1, 0.5], [0.2, 0.2]]),
    "masking.aspect_ratio": (pair(num_in(0, 1e300, lo_open=True)), [[0.75, 1.5], [1.0, 1.0], [0.5, 2]]),
    "training.epochs": (int_in(1, 100000), [1, 2, 20]),
    "training.warmup_epochs": (num_in(0, 100000), [0, 1, 2.5]),
    "training.lr": (num_in(0, 10, lo_open=True), [1e-4, 1.5e-4, 0.001, 1]),
    "training.min_lr": (num_in(0, 10), [0, 1e-6]),
    "training.weight_decay": (num_in(0, 10), [0, 0.04, 0.05]),
    "training.clip_grad": (num_in(0, 1e9), [0, 1.0, 3.0]),
    "training.betas": (pair(num_in(0, 1, hi_open=True), ordered=False), [[0.9, 0.95], [0.9, 0.999], [0.5, 0.5]]),
    "training.optimizer": (lambda v: type(v) is str and v.lower() == "adamw", ["adamw", "AdamW"]),
    "training.lr_schedule": (lambda v: type(v) is str and v.lower() == "cosine", ["cosine"]),
    "training.use_amp": (is_bool, [True, False]),
    "training.accumulation_steps": (int_in(1, 10**6), [1, 2]),
    "loss.type": (one_of("mse", "smooth_l1", "combined"), ["mse", "smooth_l1", "combined"]),
    "loss.normalize_embeddings": (is_bool, [True, False]),
    "loss.vicreg_weight": (num_in(0, 1e6), [0, 0.1]),
    "seed": (int_in(0, 2**32 - 1), [0, 1, 42, 2**31]),
    "bench.workload": (one_of("hjepa"), ["hjepa"]),
    "bench.variant": (one_of("reference", "efficient"), ["reference", "efficient"]),
    "bench.precision": (one_of("auto", "fp32", "fp16", "bf16"), ["auto", "fp32", "bf16"]),
    "bench.data": (one_of("synthetic"), ["synthetic"]),
    "bench.synthetic_size": (int_in(1, 10**8), [16, 32, 64]),
    "bench.limit_samples": (optional(int_in(1, 10**8)), [None, 8, 16]),
    "bench.persistent_workers": (is_bool, [True, False]),
    "bench.warmup_steps": (int_in(0, 100000), [0, 1, 3]),
    "bench.min_steps": (int_in(1, 10**7), [1, 2, 3]),
    "bench.max_steps": (int_in(1, 10**7), [3, 4, 10]),
    "bench.max_time_s": (num_in(0, 1e7, lo_open=True), [1, 5.0, 60.0]),
    "bench.target_rel_precision": (num_in(0, 1, lo_open=True), [0.01, 0.02, 0.5, 1]),
    "bench.window_steps": (int_in(1, 10**6), [1, 5, 10]),
}
#: values whose validity the contract leaves open: never generated for that key
AMBIGUOUS: dict[str, Pred] = {
    "seed": lambda v: is_int(v) and (-(2**63) <= v < 0 or 2**32 <= v < 2**64),
    "masking.aspect_ratio": lambda v: type(v) is list and any(is_num(x) and x > 100 for x in v),
    "loss.vicreg_weight": lambda v: is_num(v) and v > 1e6,
    "data.augmentation.color_jitter": lambda v: is_num(v) and v > 1e6,
    "training.lr": lambda v: v == 0 and is_num(v),
    "bench.max_time_s": lambda v: v == 0 and is_num(v),
    "bench.target_rel_precision": lambda v: v == 0 and is_num(v),
    "training.warmup_epochs": lambda v: is_num(v) and v > 1000,
    "training.epochs": lambda v: is_int(v) and v > 1000,
}
SECTIONS = ("model", "model.predictor", "model.ema", "data", "data.augmentation", "masking", "training", "loss",
            "bench")


def get(doc: Any, dotted: str) -> Any:
    cur = doc
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return KeyError
        cur = cur[part]
    return cur


def put(doc: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = doc
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value


def config_problems(doc: Any) -> list[str]:
    """Why ``doc`` (a tiny-based config document) is not a valid config; [] if it is."""
    if doc is None:
        return []
    if not isinstance(doc, dict):
        return ["the document is not a mapping"]
    out = []
    for section in SECTIONS:
        v = get(doc, section)
        if v is not KeyError and not isinstance(v, dict):
            out.append(f"{section} is not a mapping")
    if out:
        return out
    for key, (pred, _) in CONFIG_KEYS.items():
        v = get(doc, key)
        if v is KeyError:
            v = get(TINY_CONFIG, key)
        if v is not KeyError and not pred(v):
            out.append(f"{key} = {v!r}")
    levels = get(doc, "model.num_hierarchies")
    weights = get(doc, "loss.hierarchy_weights")
    if not (type(weights) is list and is_int(levels) and len(weights) == levels
            and all(num_in(0, 1e6)(w) for w in weights)):
        out.append(f"loss.hierarchy_weights = {weights!r} for {levels!r} levels")
    b = doc.get("bench") or {}
    if is_int(b.get("min_steps")) and is_int(b.get("max_steps")) and b["max_steps"] < b["min_steps"]:
        out.append("max_steps < min_steps")
    # a batch needs that many samples (drop_last): the data set size, or limit_samples
    size = b.get("synthetic_size", 50_000)
    limit = b.get("limit_samples")
    batch = get(doc, "data.batch_size")
    if is_int(size) and is_int(batch) and (batch > size or (is_int(limit) and batch > limit)):
        out.append(f"data.batch_size {batch} is above the {min(size, limit or size)} samples")
    return out


# --------------------------------------------------------------------------- an upstream training log
TS = "2025-11-16 13:41:02"


def _interval(t: float) -> str:
    m, s = divmod(int(t), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _bar(desc: str, n: int, total: int, elapsed: float, rate: float | None, postfix: str = "") -> str:
    filled = int(10 * n / total) if total else 0
    body = "#" * filled + " " * (10 - filled)
    remaining = _interval((total - n) / rate) if rate else "?"
    r = "?it/s" if not rate else (f"{1 / rate:5.2f}s/it" if rate < 1 else f"{rate:5.2f}it/s")
    pf = f", {postfix}" if postfix else ""
    percent = 100 * n / total if total else 0
    return f"{desc}: {percent:3.0f}%|{body}| {n}/{total} [{_interval(elapsed)}<{remaining}, {r}{pf}]"


def build_log(epochs: int = 2, spe: int = 30, log_freq: int = 10) -> str:
    """A log in the upstream trainer's format (as tests/test_logparse.py builds it, smaller):
    logging lines, the printed configuration, tqdm bars joined by CR with a loss/lr postfix,
    a validation bar and the epoch summary."""
    head = [f"{TS} - __main__ - INFO - Loaded configuration from configs/quick_val.yaml",
            f"{TS} - __main__ - INFO - Using device: mps", "", "=" * 80,
            "                         H-JEPA Training Configuration", "=" * 80, "",
            "Model:", "  Encoder: vit_tiny", "  Embedding dim: 192", "  Hierarchies: 2", "  Predictor depth: 2", "",
            "Data:", "  Dataset: cifar10", "  Image size: 224", "  Batch size: 32", "  Workers: 4", "",
            "Training:", f"  Epochs: {epochs}", "  Learning rate: 0.0001", "  Warmup epochs: 1", "=" * 80, "",
            f"{TS} - __main__ - INFO - Training dataset size: {spe * 32}",
            f"{TS} - __main__ - INFO - Training batches per epoch: {spe}",
            f"{TS} - __main__ - INFO - Total parameters: 12,051,264",
            f"{TS} - __main__ - INFO - Trainable parameters: 6,525,696",
            f"{TS} - src.trainers.trainer - INFO - Training for {epochs} epochs",
            f"{TS} - src.trainers.trainer - INFO - Steps per epoch: {spe}",
            f"{TS} - src.trainers.trainer - INFO - Starting training..."]
    text = "\n".join(head) + "\n"
    for e in range(1, epochs + 1):
        desc = f"Epoch {e}/{epochs}"
        segs = [_bar(desc, 0, spe, 0, None)]
        postfix = ""
        t = 6.0
        for k in range(1, spe + 1):
            g = (e - 1) * spe + k - 1
            if (k - 1) % log_freq == 0:
                postfix = f"loss={0.9 * math.exp(-g / 40) + 0.1:.4f}, lr={1e-6 + g * 1e-7:.2e}"
            t += 0.4 + 0.1 * (k % 3)
            segs.append(_bar(desc, k, spe, t, 2.2, postfix))
        text += "\r" + "\r".join(segs) + "\n"
        val = [_bar(f"Validation {e}/{epochs}", i, 5, i // 2, 4.1, f"val_loss={0.44 - 0.001 * i:.4f}")
               for i in range(0, 6)]
        text += "\r" + "\r".join(val) + "\r" + " " * 90 + "\r"
        text += (f"{TS} - src.trainers.trainer - INFO - \n" + "=" * 80 + f"\nEpoch {e}/{epochs} Summary\n" + "=" * 80
                 + f"\nTrain Loss: 0.4567\nVal Loss:   0.4350\nElapsed:    00:00:{int(t):02d}\nETA:        00:00:10\n"
                 + "=" * 80 + "\n\n")
    return text


LOG_TEXT = build_log()

# --------------------------------------------------------------------------- pytest-benchmark JSON
BENCH_JSON: dict[str, Any] = {
    "machine_info": {"node": "ci", "hjepa_bench": {"devices": {"cpu": {"device_name": "AMD EPYC"}},
                                                   "torch": "2.14", "timm": "1.0", "size": "tiny",
                                                   "precision": "fp32"}},
    "commit_info": {"id": "abc"},
    "benchmarks": [
        {"group": None, "name": f"test_{n}[cpu]", "fullname": f"benchmarks/test_step_pieces.py::test_{n}[cpu]",
         "params": {"backend": "cpu"},
         "stats": {"min": m * 0.9, "max": m * 1.2, "mean": m, "stddev": m * 0.05, "rounds": 5, "median": m,
                   "iqr": m * 0.04, "q1": m * 0.97, "q3": m * 1.01, "iqr_outliers": 0, "stddev_outliers": 1,
                   "outliers": "1;0", "ld15iqr": m * 0.9, "hd15iqr": m * 1.2, "ops": 1 / m, "total": 5 * m,
                   "iterations": 1}}
        for n, m in (("full_step", 0.25), ("ema_update", 0.004), ("mask_generation", 0.0021))],
    "datetime": "2025-11-16T13:41:02.000000",
    "version": "5.1.0",
}


# --------------------------------------------------------------------------- helpers
def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def alias_bomb(levels: int = 9) -> str:
    """The billion laughs: 9 levels of 9 aliases = 9**9 leaves."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def mapping_bomb(levels: int = 9) -> str:
    """Like :func:`alias_bomb`, but of mappings (what a recursive key walk expands)."""
    lines = ["b0: &b0 {x1: 1, x2: 2, x3: 3, x4: 4, x5: 5, x6: 6, x7: 7, x8: 8, x9: 9}"]
    for i in range(1, levels):
        refs = ", ".join(f"k{j}: *b{i - 1}" for j in range(1, 10))
        lines.append(f"b{i}: &b{i} {{{refs}}}")
    return "\n".join(lines) + "\n"


def weird_values() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(WEIRD), st.integers(min_value=-(10**6), max_value=10**6),
                     st.floats(allow_nan=True, allow_infinity=True, width=64))


def mutate_value(draw: Any, pred: Pred, samples: list[Any], p_valid: float) -> Any:
    """A valid sample (with probability p_valid) or a weird value (labelled by ``pred``)."""
    if draw(st.floats(0, 1)) < p_valid:
        return copy.deepcopy(draw(st.sampled_from(samples)))
    return draw(weird_values())


def seeded(draw: Any) -> random.Random:
    return random.Random(draw(st.integers(0, 2**32 - 1)))


# --------------------------------------------------------------------------- configs
CONFIG_COMMANDS = {
    # (argv, valid cases build a model?)  {F} is the config file
    "sweep": ["sweep", "--config", "{d}/cfg.yaml", "--grid", "{d}/grid.yaml", "--out", "{d}/sw", "-q"],
    "run": ["run", "--device", "cpu", "--config", "{d}/cfg.yaml", "--probes", "none", "-q"],
    "validate": ["validate", "--device", "cpu", "--config", "{d}/cfg.yaml", "--out", "{d}/val", "-q"],
    "inspect": ["inspect", "--config", "{d}/cfg.yaml", "--json"],
}
TINY_FLAGS = ["--img-size", "32", "--encoder-depth", "1", "--predictor-depth", "1", "--batch-size", "2",
              "--workers", "0"]


#: limit for inputs built to make a reader without limits hang (alias bombs, huge files)
HANG_PRONE_S = 1.0


def _config_case(command: str, text: str | bytes, valid: bool, label: str, *, tiny_flags: bool = False,
                 engine: bool = False, extra: dict | None = None) -> Case:
    argv = list(CONFIG_COMMANDS[command])
    files: dict[str, Any] = {"cfg.yaml": text}
    if command == "sweep":
        files["grid.yaml"] = SWEEP_GRID
    if tiny_flags and command in ("run", "validate"):
        argv += TINY_FLAGS
    files.update(extra or {})
    timeout = HANG_PRONE_S if "bomb" in label or "99999999999999999999" in label else None
    return Case(target=f"config:{command}", valid=valid, argv=argv, files=files, label=label, engine=engine,
                timeout=timeout)


@st.composite
def config_value_cases(draw: Any) -> Case:
    """The tiny config with 1-3 keys set to drawn values (valid samples or weird ones)."""
    command = draw(st.sampled_from(["sweep"] * 6 + ["run"] * 3 + ["validate"]))
    doc = copy.deepcopy(SWEEP_CONFIG if command == "sweep" else TINY_CONFIG)
    keys = draw(st.lists(st.sampled_from(sorted(CONFIG_KEYS) + ["loss.hierarchy_weights"]), min_size=1,
                         max_size=3, unique=True))
    labels = []
    for key in keys:
        if key == "loss.hierarchy_weights":
            value = draw(st.one_of(
                st.sampled_from([[1.0, 0.5], [1, 1], [0.5, 0.25], ["a", "b"], [NAN, 1.0], [INF, 1], [1.0], [1, 2, 3],
                                 "x", [-1, 1], None, [[1], [2]], [True, False]]),
                st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4)))
        else:
            pred, samples = CONFIG_KEYS[key]
            value = mutate_value(draw, pred, samples, p_valid=0.3)
            if AMBIGUOUS.get(key, lambda v: False)(value):
                value = samples[0]
            if key == "model.num_hierarchies" and is_int(value) and 1 <= value <= 4 and draw(st.booleans()):
                put(doc, "loss.hierarchy_weights", [0.5 ** i for i in range(value)])
        put(doc, key, value)
        labels.append(f"{key}: {value!r}")
    if command == "sweep" and get(doc, "bench.synthetic_size") is not KeyError:
        doc["bench"].pop("synthetic_size")  # never built by a sweep; keep the default (50,000)
    probs = config_problems(doc)
    return _config_case(command, dump(doc), not probs, "; ".join(labels))


STRUCTURAL: list[tuple[str, str | bytes, bool, bool]] = [
    # (label, text, valid, needs the tiny flags because the document drops the tiny values)
    ("empty file", "", True, True),
    ("only comments", "# nothing here\n# at all\n", True, True),
    ("null document", "~\n", True, True),
    ("top-level list", "- model\n- data\n", False, False),
    ("top-level scalar", "5\n", False, False),
    ("top-level string", "just a sentence\n", False, False),
    ("model: 5", TINY_YAML + "model: 5\n", False, False),
    ("data: [1]", TINY_YAML.replace("data:\n", "data_old:\n", 1) + "data: [1]\n", False, False),
    ("bench: null", TINY_YAML.replace("bench:\n", "bench_old:\n", 1) + "bench:\n", False, False),
    ("model.predictor: 5", TINY_YAML.replace("  predictor:\n", "  predictor_old:\n", 1).replace(
        "model:\n", "model:\n  predictor: 5\n", 1), False, False),
    ("1,000-deep nesting under model", "model: " + deep_list(1000) + "\n", False, False),
    ("1,000-deep nesting under an unknown key", TINY_YAML + "zzz: " + deep_list(1000) + "\n", False, False),
    ("5,000-deep nested mappings", TINY_YAML + "zzz: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", False, False),
    ("alias bomb (lists) under an unknown key", TINY_YAML + alias_bomb(), False, False),
    ("alias bomb (mappings) under an unknown key", TINY_YAML + mapping_bomb(), False, False),
    ("alias bomb inside checkpoint:", TINY_YAML + "checkpoint:\n" + "".join("  " + ln + "\n" for ln in
                                                                         mapping_bomb().splitlines()), False, False),
    ("one harmless anchor and alias", TINY_YAML + "zzz: &z {a: 1}\nyyy: *z\n", True, False),
    ("python/object tag", TINY_YAML + "zzz: !!python/object/apply:os.system ['echo pwned > marker']\n", False, False),
    ("!!binary lr", TINY_YAML.replace("lr: 0.0001", "lr: !!binary aGVsbG8="), False, False),
    ("!!set weights", TINY_YAML.replace("  - 1.0\n  - 0.5\n", "", 1).replace(
        "hierarchy_weights:", "hierarchy_weights: !!set {1.0, 0.5}", 1), False, False),
    ("timestamp lr", TINY_YAML.replace("lr: 0.0001", "lr: 2001-12-14"), False, False),
    ("lr written 1e-4 (a string in YAML 1.1)", TINY_YAML.replace("lr: 0.0001", "lr: 1e-4"), False, False),
    ("lr .nan", TINY_YAML.replace("lr: 0.0001", "lr: .nan"), False, False),
    ("mlp_ratio .inf", TINY_YAML.replace("mlp_ratio: 4.0", "mlp_ratio: .inf"), False, False),
    ("warmup_epochs .nan", TINY_YAML.replace("warmup_epochs: 1", "warmup_epochs: .nan"), False, False),
    ("weight_decay .nan", TINY_YAML.replace("weight_decay: 0.04", "weight_decay: .nan"), False, False),
    ("num_hierarchies 99999999999999999999", TINY_YAML.replace("num_hierarchies: 2",
                                                               "num_hierarchies: 99999999999999999999"), False, False),
    ("bench.workload: [1]", TINY_YAML.replace("workload: hjepa", "workload: [1]"), False, False),
    ("bench.persistent_workers: 'no'", TINY_YAML.replace("persistent_workers: false", "persistent_workers: 'no'"),
     False, False),
    ("mask_scale [2, 5]", TINY_YAML.replace("  - 0.15\n  - 0.2\n", "  - 2\n  - 5\n", 1), False, False),
    ("embed_dim 384 with vit_tiny", TINY_YAML.replace("embed_dim: 192", "embed_dim: 384"), False, False),
    ("non-UTF-8 bytes", TINY_YAML.encode() + b"zzz: \xff\xfe\xfa\n", False, False),
    ("NUL byte", TINY_YAML.encode() + b"zzz: a\x00b\n", False, False),
    ("UTF-8 BOM", "\ufeff" + TINY_YAML, True, False),
    ("tab indentation", TINY_YAML.replace("  encoder_depth", "\tencoder_depth", 1), False, False),
    ("duplicate key (the last wins)", TINY_YAML + "seed: 7\n", True, False),
    ("unhashable key", TINY_YAML + "? [1, 2]\n: x\n", False, False),
    ("integer and null keys (unknown)", TINY_YAML + "1: 2\n~: 3\n", True, False),
    ("unknown keys", TINY_YAML + "zzz: 1\nlogging: {level: INFO}\n", True, False),
    ("a 256 kB string under an unknown key", TINY_YAML + "zzz: " + "x" * 2**18 + "\n", True, False),
    ("two documents", TINY_YAML + "---\nseed: 1\n", False, False),
    ("unterminated flow", TINY_YAML + "zzz: [1, 2\n", False, False),
]
#: values that YAML can hold but JSON cannot, in a section kept in the record (checkpoint:);
#: valid input (converted to plain JSON types on load), so the run must still write
#: its record: these cases really run (1 step of the tiny config)
RECORD_BREAKERS = [
    ("timestamp in checkpoint:", TINY_YAML + "checkpoint: {when: 2001-12-14}\n"),
    ("!!binary in checkpoint:", TINY_YAML + "checkpoint: {blob: !!binary aGVsbG8=}\n"),
    ("!!set in checkpoint:", TINY_YAML + "checkpoint: {tags: !!set {a, b}}\n"),
]


def record_written(res: Any, folder: Any) -> list[str]:
    """The run's record must be on disk and be JSON."""
    path = folder / "rec.json"
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"lost: the result record was not written ({type(exc).__name__})"]
    return []


def structural_config_cases() -> list[Case]:
    cases = []
    for i, (label, text, valid, tiny) in enumerate(STRUCTURAL):
        command = ("sweep", "run", "validate")[i % 3]
        cases.append(_config_case(command, text, valid, label, tiny_flags=tiny))
    for label, text in RECORD_BREAKERS:
        case = _config_case("run", text, True, label, engine=True)
        case.argv += ["--json", "{d}/rec.json"]
        case.check = record_written
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- CLI flags
def as_int(s: str) -> int | None:
    import re

    return int(s) if re.fullmatch(r"-?[0-9]+", s) else None


def as_float(s: str) -> float | None:
    import re

    if not re.fullmatch(r"[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+|nan|NaN|inf|-inf|Infinity|infinity)", s):
        return None
    return float(s)


def f_int(lo: int, hi: float) -> Pred:
    return lambda s: (v := as_int(s)) is not None and lo <= v <= hi


def f_num(lo: float, hi: float, lo_open: bool = True) -> Pred:
    return lambda s: ((v := as_float(s)) is not None and math.isfinite(v)
                      and (v > lo if lo_open else v >= lo) and v <= hi)


def f_img(s: str) -> bool:
    v = as_int(s)
    return v is not None and 32 <= v <= 1024 and v % 16 == 0


def f_choice(*xs: str) -> Pred:
    return lambda s: s in xs


def f_list(item: Pred) -> Pred:
    def ok(s: str) -> bool:
        items = s.split(",")
        return bool(s) and all(x != "" and x == x.strip() and item(x) for x in items)
    return ok


MODELS = ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_tiny_patch16_224", "vit_small_patch16_224")
NUM_STRINGS = ["0", "1", "2", "3", "4", "8", "16", "32", "33", "48", "64", "-1", "-5", "1.5", "0.5", "1e3", "1e20",
               "99999999999999999999", "-99999999999999999999", "nan", "NaN", "inf", "-inf", "Infinity", "", "abc",
               "0.0", "1e-9", "1024", "65536", "65537", "3,4", "2,2", "0,1", "1,,2", ",", "1, 2"]
#: (flag, predicate of a valid value string, valid samples); "+" prefixed flags are lists
RUN_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--batch-size", f_int(1, TINY_SYNTHETIC), ["1", "2", "4"]),
    ("--workers", f_int(0, 256), ["0", "1"]),
    ("--hierarchies", f_int(1, 4), ["1", "2", "3", "4"]),
    ("--predictor-depth", f_int(1, 48), ["1", "2"]),
    ("--encoder-depth", f_int(1, 48), ["1", "2"]),
    ("--img-size", f_img, ["32", "48", "64"]),
    ("--seed", f_int(0, 2**32 - 1), ["0", "7", "42"]),
    ("--precision", f_choice("auto", "fp32", "fp16", "bf16"), ["fp32", "auto", "bf16"]),
    ("--variant", f_choice("reference", "efficient"), ["reference", "efficient"]),
    ("--model", f_choice(*MODELS), ["vit_tiny", "vit_tiny_patch16_224"]),
]
MEASURE_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--limit-samples", f_int(TINY_BATCH, 10**8), ["8", "16"]),
    ("--warmup-steps", f_int(0, 100000), ["0", "1"]),
    ("--min-steps", f_int(1, 3), ["1", "2", "3"]),
    ("--max-steps", f_int(2, 10**7), ["3", "5"]),
    ("--max-time", f_num(0, 1e7), ["1", "2.5", "60"]),
    ("--target-precision", f_num(0, 1), ["0.02", "0.5", "1"]),
    ("--probes", f_choice("none"), ["none"]),
    ("--workload", f_choice("hjepa"), ["hjepa"]),
    ("--data", f_choice("synthetic"), ["synthetic"]),
]
SWEEP_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--device", f_list(f_choice("cpu", "auto")), ["cpu", "auto", "cpu,auto"]),
    ("--models", f_list(f_choice(*MODELS)), ["vit_tiny", "vit_tiny,vit_small"]),
    ("--batch-sizes", f_list(f_int(1, 65536)), ["2", "2,4", "16,32"]),
    ("--workers", f_list(f_int(0, 256)), ["0", "0,2"]),
    ("--hierarchies", f_list(f_int(1, 4)), ["2", "1,3"]),
    ("--predictor-depths", f_list(f_int(1, 48)), ["1", "2,4"]),
    ("--variants", f_list(f_choice("reference", "efficient")), ["reference", "reference,efficient"]),
    ("--precisions", f_list(f_choice("fp32", "fp16", "bf16", "auto")), ["fp32", "fp32,bf16"]),
    ("--img-size", f_list(f_img), ["32", "32,64", "224"]),
    ("--encoder-depth", f_int(1, 48), ["1", "2"]),
    ("--max-time", f_num(0, 1e7), ["1", "15"]),
    ("--timeout", f_num(0, 1e7), ["10", "100.5"]),
    ("--budget-hours", f_num(0, 1e7), ["1", "10", "0.5"]),
    ("--warmup-steps", f_int(0, 100000), ["0", "2"]),
    ("--min-steps", f_int(1, 30), ["1", "5"]),
    ("--max-steps", f_int(5, 10**7), ["5", "30"]),
    ("--limit-samples", f_int(TINY_BATCH, 10**8), ["8", "1000"]),
    ("--options", f_list(f_choice("A", "B", "C")), ["A", "A,B", "C"]),
    ("--progress", f_choice("bar", "quiet", "jsonl"), ["quiet"]),
]
VALIDATE_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--epochs", f_int(1, 1000), ["1", "2"]),
    ("--feature-every", f_int(0, 1000), ["0", "1"]),
    ("--features-n", f_int(2, 10**6), ["8", "64"]),
    ("--checkpoint-every", f_int(1, 1000), ["1", "5"]),
    ("--max-steps-per-epoch", f_int(1, 10**7), ["1", "3"]),
    ("--budget-hours", f_num(0, 1e7), ["1", "10"]),
    ("--limit-samples", f_int(TINY_BATCH, 10**8), ["8", "16"]),
]
ANALYZE_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--batch-size", f_int(1, 65536), ["32", "16"]),
    ("--workers", f_int(0, 256), ["0", "4"]),
    ("--hierarchies", f_int(1, 4), ["2", "3"]),
    ("--predictor-depth", f_int(1, 48), ["2", "4"]),
    ("--img-size", f_img, ["224", "64"]),
    ("--epochs", f_int(1, 100000), ["2", "20"]),
    ("--dataset-size", f_int(1, 10**9), ["9600", "50000"]),
    ("--model", f_choice(*MODELS), ["vit_tiny", "vit_small"]),
    ("--budget-hours", f_num(0, 1e7), ["1", "10"]),
]
EVAL_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--n-train", f_int(2, 10**12), ["20", "40"]),  # more than the data set holds: capped, with a note
    ("--n-test", f_int(1, 10**12), ["5", "10"]),
    ("--batch-size", f_int(1, 65536), ["8", "64"]),
    ("--workers", f_int(0, 256), ["0", "1"]),
    ("--seed", f_int(0, 2**32 - 1), ["0", "3"]),
    ("--img-size", f_choice("32"), ["32"]),  # the checkpoint's own size; another size does not fit it
    ("--encoder-depth", f_choice("1"), ["1"]),
    ("--data", f_choice("synthetic"), ["synthetic"]),
]
BENCH_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--threshold", f_num(0, 1e7), ["10", "5.5", "100"]),
]
REPORT_FLAGS: list[tuple[str, Pred, list[str]]] = [
    ("--budget-hours", f_num(0, 1e7), ["1", "10", "100000"]),
    ("--title", lambda s: True, ["My report", "", "é ünïcode", "a|b"]),
]
FLAG_AMBIGUOUS = {"--seed": lambda s: (v := as_int(s)) is not None and (-(2**63) <= v < 0 or 2**32 <= v < 2**64),
                  # synthetic eval data is generated at the size asked for: above a million is a memory
                  # question, not an input one
                  "--n-train": lambda s: (v := as_int(s)) is not None and v > 10**6,
                  "--n-test": lambda s: (v := as_int(s)) is not None and v > 10**6}
FLAG_BASES: dict[str, tuple[list[str], list[tuple[str, Pred, list[str]]]]] = {
    "run": (["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q"],
            RUN_FLAGS + MEASURE_FLAGS),
    "sweep": (["sweep", "--config", "{d}/cfg.yaml", "--device", "cpu", "--batch-sizes", "2", "--workers", "0",
               "--options", "A", "--out", "{d}/sw", "-q"], SWEEP_FLAGS),
    "validate": (["validate", "--device", "cpu", "--config", "{d}/tiny.yaml", "--epochs", "1", "--out", "{d}/val",
                  "-q"], RUN_FLAGS + VALIDATE_FLAGS),
    "analyze": (["analyze", "--log", "{d}/train.log"], ANALYZE_FLAGS),
    "eval": (["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "--n-train", "20", "--n-test", "10", "-q"],
             EVAL_FLAGS),
    "benchmark-report": (["benchmark-report", "{d}/now.json"], BENCH_FLAGS),
    "report": (["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md"], REPORT_FLAGS),
    "inspect": (["inspect", "--config", "{d}/tiny.yaml", "--json"], RUN_FLAGS),
}


def flag_value(draw: Any, pred: Pred, samples: list[str], p_valid: float) -> str:
    if draw(st.floats(0, 1)) < p_valid:
        return draw(st.sampled_from(samples))
    return draw(st.one_of(st.sampled_from(NUM_STRINGS), st.integers(-1000, 10**6).map(str),
                          st.floats(allow_nan=True, allow_infinity=True).map(repr),
                          st.sampled_from(["vit_huge", "fp64", "fast", "gpu", "bogus", "Z", "A,Z", "cifar10", "none,x",
                                           "reference,fast", "cpu,gpu", "stability,bogus", "--json", "-q"])))


@st.composite
def flag_cases(draw: Any, files: Callable[[str], dict[str, Any]]) -> Case:
    """A valid base argv of one command with 1-2 flags set to drawn values.  ``files(command)``
    gives the golden files the base argv names (config, log, checkpoint, results...)."""
    command = draw(st.sampled_from(["run", "run", "sweep", "sweep", "sweep", "validate", "analyze", "analyze", "eval",
                                    "benchmark-report", "report", "report", "inspect"]))
    base, table = FLAG_BASES[command]
    chosen = draw(st.lists(st.sampled_from(table), min_size=1, max_size=2, unique_by=lambda t: t[0]))
    argv, valid, labels = list(base), True, []
    # expensive valid paths (a model build) get fewer valid draws
    p_valid = {"inspect": 0.0, "run": 0.25, "validate": 0.2, "eval": 0.25}.get(command, 0.4)
    values: dict[str, str] = {}
    for flag, pred, samples in chosen:
        value = flag_value(draw, pred, samples, p_valid)
        if FLAG_AMBIGUOUS.get(flag, lambda s: False)(value) or (value.startswith("-") and as_float(value) is None):
            value = samples[0]
        values[flag] = value
        valid = valid and pred(value)
        argv += [flag, value]
        labels.append(f"{flag} {value!r}")
    lo, hi = as_int(values.get("--min-steps", "x")), as_int(values.get("--max-steps", "x"))
    if lo is not None and hi is not None and hi < lo:
        valid = False
    if command == "inspect" and valid:  # a valid inspect counts FLOPs for seconds: keep one invalid flag
        argv += ["--img-size", "33"]
        labels.append("--img-size '33'")
        valid = False
    return Case(target=f"flags:{command}", valid=valid, argv=argv, files=files(command), label="; ".join(labels))


GLOBAL_FLAG_CASES: list[tuple[list[str], bool, str]] = [
    ([], False, "no command"),
    (["frobnicate"], False, "unknown command"),
    (["--version"], True, "--version"),
    (["devices", "--json"], True, "devices --json"),
    (["plugins", "--json"], True, "plugins --json"),
    (["devices", "--bogus"], False, "unknown flag"),
    (["-p", "no_such_module_xyz", "devices"], False, "-p with a module that does not exist"),
    (["-p", "no:cpu", "run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q"], False,
     "-p no:cpu then --device cpu"),
    (["-p", "no:hjepa", "run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q"], False,
     "-p no:hjepa (no workload)"),
    (["-p", "", "devices"], False, "-p with an empty name"),
    (["-p", "os.path", "devices"], True, "-p with a module that is no plugin"),
    (["run", "--device", "tpu", "--config", "{d}/tiny.yaml"], False, "unknown device"),
    (["run", "--device", "cuda", "--config", "{d}/tiny.yaml"], False, "cuda on a machine without it"),
    (["run", "--device", "", "--config", "{d}/tiny.yaml"], False, "empty device"),
    (["eval"], False, "eval without --checkpoint"),
    (["analyze"], False, "analyze without --log"),
    (["report"], False, "report without a folder"),
    (["benchmark-report"], False, "benchmark-report without a file"),
    (["sweep", "--grid"], False, "--grid without a value"),
    (["run", "--hierarchies", "99999999999999999999", "--config", "{d}/tiny.yaml", "--device", "cpu"], False,
     "--hierarchies 99999999999999999999"),
    (["validate", "--epochs", "0", "--config", "{d}/tiny.yaml", "--device", "cpu", "--out", "{d}/v", "-q"], False,
     "validate --epochs 0"),
    (["sweep", "--device", "cpu", "--batch-sizes", "0", "--options", "none", "--out", "{d}/sw", "-q"], False,
     "sweep --batch-sizes 0 --options none"),
    (["sweep", "--device", "cpu", "--img-size", "33", "--options", "A", "--out", "{d}/sw", "-q"], False,
     "sweep --img-size 33"),
    (["sweep", "--device", "cpu", "--precisions", "fp64", "--options", "A", "--out", "{d}/sw", "-q"], False,
     "sweep --precisions fp64"),
    (["sweep", "--device", "cpu", "--variants", "fast", "--options", "A", "--out", "{d}/sw", "-q"], False,
     "sweep --variants fast"),
    (["sweep", "--device", "cpu", "--max-time", "inf", "--options", "A", "--out", "{d}/sw", "-q"], False,
     "sweep --max-time inf"),
    (["sweep", "--device", "cpu", "--timeout", "nan", "--options", "A", "--out", "{d}/sw", "-q"], False,
     "sweep --timeout nan"),
    (["sweep", "--device", "cpu", "--budget-hours", "inf", "--options", "A", "--out", "{d}/sw", "-q"], False,
     "sweep --budget-hours inf"),
    (["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--budget-hours", "nan"], False,
     "report --budget-hours nan"),
    (["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q", "--max-time", "nan"], False,
     "run --max-time nan"),
    (["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q", "--target-precision", "inf"],
     False, "run --target-precision inf"),
    (["benchmark-report", "{d}/now.json", "--threshold", "nan"], False, "benchmark-report --threshold nan"),
    (["benchmark-report", "{d}/now.json", "--threshold", "inf"], False, "benchmark-report --threshold inf"),
    (["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "--seed", str(10**20)], False,
     "run --seed 10**20 (without -q)"),
    (["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "-q", "--seed", str(10**20)], False,
     "eval --seed 10**20"),
    (["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "-q", "--img-size", "64"], False,
     "eval --img-size the checkpoint was not trained at"),
]


def global_flag_cases(files: Callable[[str], dict[str, Any]]) -> list[Case]:
    return [Case(target="flags:global", valid=v, argv=argv, files=files("run"), label=label,
                 timeout=HANG_PRONE_S if "99999999999999999999" in label else None)
            for argv, v, label in GLOBAL_FLAG_CASES]


# --------------------------------------------------------------------------- upstream logs
LOG_NUMBERS = ["0", "-1", "1", "99999999999999999999", "nan", "inf", "1e400", "0.0", "abc", ""]


def _mutate_log(rng: random.Random, text: str, kind: str) -> tuple[str | bytes, str]:
    lines = text.split("\n")
    if kind == "truncate":
        cut = rng.randrange(0, len(text))
        return text[:cut], f"truncated at byte {cut}"
    if kind == "delete-lines":
        k = rng.randrange(1, 6)
        for _ in range(k):
            lines.pop(rng.randrange(len(lines)))
        return "\n".join(lines), f"{k} line(s) deleted"
    if kind == "duplicate-lines":
        i = rng.randrange(len(lines))
        lines[i:i] = [lines[i]] * rng.randrange(1, 4)
        return "\n".join(lines), f"line {i + 1} repeated"
    if kind == "shuffle":
        rng.shuffle(lines)
        return "\n".join(lines), "lines shuffled"
    if kind == "numbers":
        import re

        nums = list(re.finditer(r"\d+(?:\.\d+)?", text))
        out, labels = text, []
        for m in sorted(rng.sample(nums, min(len(nums), rng.randrange(1, 8))), key=lambda m: -m.start()):
            new = rng.choice(LOG_NUMBERS)
            out = out[:m.start()] + new + out[m.end():]
            labels.append(f"{m.group(0)}->{new!r}")
        return out, "numbers replaced: " + ", ".join(labels)
    if kind == "zero-elapsed":
        import re

        return re.sub(r"\[\d\d:\d\d<", "[00:00<", text), "every bar shows 00:00 elapsed"
    if kind == "one-step":
        return text.replace("/30 [", "/1 [").replace(" 1/1 ", " 1/1 "), "bars of one step"
    if kind == "loss":
        v = rng.choice(["nan", "inf", "-inf", "1e400", "-5", "abc"])
        return text.replace("loss=0.", f"loss={v}0.", rng.randrange(1, 5)), f"loss={v}"
    if kind == "logged-values":
        key, v = rng.choice([("Batch size: 32", "Batch size: 0"), ("Image size: 224", "Image size: 33"),
                             ("Epochs: 2", "Epochs: 0"), ("Epochs: 2", "Epochs: 99999999999999999999"),
                             ("Hierarchies: 2", "Hierarchies: 99"), ("Learning rate: 0.0001", "Learning rate: nan"),
                             ("Training dataset size: 960", "Training dataset size: 0"),
                             ("Total parameters: 12,051,264", "Total parameters: abc"),
                             ("Using device: mps", "Using device: ../../x"), ("Encoder: vit_tiny", "Encoder: vit_huge"),
                             ("Predictor depth: 2", "Predictor depth: -3"), ("Workers: 4", "Workers: 1e9")])
        return text.replace(key, v), f"the log says {v!r}"
    if kind == "bytes":
        pos = rng.randrange(0, len(text))
        junk = rng.choice([b"\xff\xfe\xfa", b"\x00\x00\x00\x00", b"\x1b[31m", b"\xe2\x82", b"\r\r\r"])
        data = text.encode()
        return data[:pos] + junk + data[pos:], f"{junk!r} inserted at byte {pos}"
    if kind == "long-line":
        return text + "x" * 10**5 + "\n", "one very long line"
    if kind == "cr-only":
        return text.replace("\n", "\r"), "CR line ends only"
    if kind == "crlf":
        return text.replace("\n", "\r\n"), "CRLF line ends"
    raise ValueError(kind)


LOG_KINDS = ["truncate", "delete-lines", "duplicate-lines", "shuffle", "numbers", "numbers", "numbers",
             "zero-elapsed", "one-step", "loss", "logged-values", "logged-values", "bytes", "long-line", "cr-only",
             "crlf"]
LOG_INVALID: list[tuple[bytes | str, str]] = [
    ("", "empty log"), ("\n\n\n", "only blank lines"), (b"\x00\x01\x02binary\x00" * 50, "binary"),
    ("# My project\n\nSome README text.\n", "unrelated text"), (b"\xff\xfe" + "text".encode("utf-16-le"), "UTF-16"),
    ("Epoch 1/2: 0%|", "a bar fragment only"),
]


@st.composite
def log_cases(draw: Any) -> Case:
    """A valid upstream log with 1-2 mutations.  Labelled valid: a damaged log is analysed as
    far as it goes or refused in one sentence, never a crash (exit 0 and 2 are both fine)."""
    rng = seeded(draw)
    kinds = draw(st.lists(st.sampled_from(LOG_KINDS), min_size=1, max_size=2))
    text: str | bytes = LOG_TEXT
    labels = []
    for kind in kinds:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text, label = _mutate_log(rng, text, kind)
        labels.append(label)
    argv = ["analyze", "--log", "{d}/train.log"]
    if draw(st.booleans()):
        argv += ["--epochs", "3", "--model", "vit_tiny"]
    return Case(target="log", valid=True, argv=argv, files={"train.log": text}, label="; ".join(labels))


def invalid_log_cases() -> list[Case]:
    return [Case(target="log", valid=False, argv=["analyze", "--log", "{d}/train.log"], files={"train.log": t},
                 label=label) for t, label in LOG_INVALID]


# --------------------------------------------------------------------------- JSON trees
def json_paths(obj: Any, prefix: tuple = (), depth: int = 0, out: list | None = None) -> list[tuple]:
    out = [] if out is None else out
    if depth > 6:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            json_paths(v, prefix + (k,), depth + 1, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out.append(prefix + (i,))
            json_paths(v, prefix + (i,), depth + 1, out)
    return out


def at(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def set_at(obj: Any, path: tuple, value: Any) -> None:
    at(obj, path[:-1])[path[-1]] = value


def del_at(obj: Any, path: tuple) -> None:
    del at(obj, path[:-1])[path[-1]]


class Deep:
    """A placeholder for a value nested ``depth`` lists deep (written as raw JSON text)."""

    def __init__(self, depth: int):
        self.depth = depth


def to_json(obj: Any) -> str:
    """json.dumps that writes NaN/Infinity literals, huge ints, and :class:`Deep` placeholders."""
    marks: dict[str, str] = {}

    def walk(o: Any) -> Any:
        if isinstance(o, Deep):
            key = f"@@deep{len(marks)}@@"
            marks[key] = deep_list(o.depth)
            return key
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(obj))
    for key, raw in marks.items():
        text = text.replace(f'"{key}"', raw)
    return text


WRONG_TYPES: list[Any] = [5, "x", [], {}, True, [1], {"a": 1}, -1.5]


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def mutate_tree(rng: random.Random, obj: Any, kind: str, read: Callable[[tuple], bool] = lambda p: True
                ) -> tuple[str, str]:
    """Mutate ``obj`` in place; returns (label, verdict).  The verdict is "bad" when a field
    that ``read`` says the readers use gets a value of another type or a non-finite or
    unrepresentable number, else "unknown" (it may well be fine)."""
    paths = [p for p in json_paths(obj) if p]
    if not paths:
        return "nothing to mutate", "unknown"
    path = rng.choice(paths)
    old = at(obj, path)

    def verdict(p: tuple) -> str:
        return "bad" if read(p) else "unknown"

    def name(p: tuple) -> str:
        return ".".join(map(str, p))

    nums = [p for p in paths if _kind(at(obj, p)) == "number"]
    if kind == "retype" and old is not None:
        new = rng.choice([w for w in WRONG_TYPES if _kind(w) != _kind(old)])
        set_at(obj, path, new)
        return f"{name(path)}: {old!r:.40} -> {new!r}", verdict(path)
    if kind == "nonfinite" and nums:
        path = rng.choice(nums)
        new = rng.choice([NAN, INF, -INF])
        set_at(obj, path, new)
        return f"{name(path)} -> {new}", verdict(path)
    if kind == "huge" and nums:
        path = rng.choice(nums)
        set_at(obj, path, 10**400)
        return f"{name(path)} -> 10**400", verdict(path)
    if kind == "zero" and nums:
        path = rng.choice(nums)
        new = rng.choice([0, -1, 0.0])
        set_at(obj, path, new)
        return f"{name(path)} -> {new}", "unknown"
    if kind == "delete":
        del_at(obj, path)
        return f"{name(path)} deleted", "unknown"
    if kind == "deep":
        set_at(obj, path, Deep(rng.choice([200, 5000, 100000])))
        return f"{name(path)} -> deeply nested list", "bad"
    if kind == "traversal" and isinstance(obj, dict):
        for p in (("env", "backend"), ("env", "fingerprint_id"), ("env", "device_name")):
            if isinstance(obj.get(p[0]), dict):
                set_at(obj, p, "../../../../escaped-" + p[1])
        return "env names hold ../../../../", "unknown"
    new = rng.choice(WRONG_TYPES)
    set_at(obj, path, new)
    return f"{name(path)}: -> {new!r}", "unknown"


#: record fields every report reader uses (a wrong type there is a bad record)
RECORD_READ = ("schema_version", "status", "config.model.encoder_type", "config.model.num_hierarchies",
               "config.model.encoder_depth", "config.model.predictor", "config.data.batch_size",
               "config.data.num_workers", "config.data.image_size", "config.training.epochs", "config.bench.variant",
               "config.bench.precision", "config.bench.device", "env.backend", "env.device_name",
               "env.device_total_bytes", "env.fingerprint_id", "params", "metrics", "series.step_time_s",
               "series.loss")


def record_read(path: tuple) -> bool:
    dotted = ".".join(map(str, path))
    if path[:1] == ("probes",):
        return len(path) <= 2 or (len(path) == 3 and path[2] == "status")  # an entry, or its status
    if path in (("config",), ("env",), ("series",), ("probes",)):
        return True
    return any(dotted == r or dotted.startswith(r + ".") for r in RECORD_READ)


def bench_read(path: tuple) -> bool:
    """pytest-benchmark fields benchmark-report reads."""
    if path[:1] == ("benchmarks",):
        return len(path) <= 2 or path[2] in ("name", "fullname") or path[2:4] == ("stats",) or \
            (len(path) >= 4 and path[2:4] == ("stats", "median"))
    if path[:2] == ("machine_info", "hjepa_bench") or path == ("machine_info",):
        return len(path) <= 3
    return path == ("datetime",)


TREE_KINDS = ["retype", "retype", "retype", "nonfinite", "huge", "zero", "delete", "deep", "traversal"]


# --------------------------------------------------------------------------- results.jsonl
@st.composite
def results_cases(draw: Any, records: list[dict[str, Any]]) -> Case:
    """The golden results.jsonl with one record or line mutated, read by ``report`` (a bad
    record is skipped with a warning that names its line) or by a resumed ``sweep`` (a
    bad record is an error)."""
    rng = seeded(draw)
    command = draw(st.sampled_from(["report", "report", "report", "resume"]))
    recs = copy.deepcopy(records) + copy.deepcopy(records[:1])
    i = rng.randrange(len(recs))
    kind = draw(st.sampled_from(TREE_KINDS + ["line-garbage", "line-truncated", "line-nan", "line-array",
                                              "line-blank", "line-crlf", "twice"]))
    lines = None
    if kind.startswith("line-") or kind == "twice":
        lines = [json.dumps(r) for r in recs]
        verdict = "bad"
        if kind == "line-garbage":
            lines[i] = rng.choice(["not json", "{", '{"a": 1}', "null", "5", '"x"', "\x00\x01"])
            label = f"line {i + 1}: {lines[i]!r}"
            if i == len(lines) - 1:
                verdict = "tail"  # a complete last line that does not parse: moved aside on resume (docs/commands.md)
        elif kind == "line-truncated":
            i = len(lines) - 1
            lines[i] = lines[i][:rng.randrange(1, len(lines[i]))]
            label = "the last line is cut off"
            verdict = "tail"
        elif kind == "line-nan":
            lines[i] = re.sub(r'("schema_version": \d+)', r'\1, "x": NaN', lines[i], count=1)
            label = f"line {i + 1} holds a NaN literal"
            verdict = "unknown"
        elif kind == "line-array":
            lines[i] = "[" + lines[i] + "]"
            label = f"line {i + 1} is an array"
        elif kind == "line-blank":
            lines.insert(i, "   ")
            label, verdict = "a blank line", "fine"
            i = -1
        elif kind == "line-crlf":
            lines = [ln + "\r" for ln in lines]
            label, verdict = "CRLF line ends", "fine"
        else:
            lines.append(lines[0])
            label, verdict = "the first record twice", "fine"
        text = "\n".join(lines) + ("" if kind == "line-truncated" else "\n")
    else:
        label, verdict = mutate_tree(rng, recs[i], kind, record_read)
        label = f"record {i + 1}: {label}"
        text = "".join(to_json(r) + "\n" for r in recs)
    files = {"res/results.jsonl": text}
    if command == "report":
        argv = ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md"]
        warn = i + 1 if verdict in ("bad", "tail") and i >= 0 else None
        return Case(target="results:report", valid=True, argv=argv, files=files, label=label, warn_line=warn)
    argv = ["sweep", "--config", "{d}/cfg.yaml", "--device", "cpu", "--batch-sizes", "2", "--workers", "0",
            "--options", "A", "--out", "{d}/res", "-q"]
    files["cfg.yaml"] = SWEEP_YAML
    return Case(target="results:resume", valid=verdict not in ("bad",), argv=argv, files=files, label=label)


# --------------------------------------------------------------------------- checkpoints
@st.composite
def checkpoint_cases(draw: Any, golden: dict[str, Any]) -> Case:
    """The golden checkpoint (validate's layout: model_state_dict, config, epoch) mutated."""
    import numpy as np
    import torch

    rng = seeded(draw)
    ck = {k: (dict(v) if isinstance(v, dict) else v) for k, v in golden.items()}
    sd = {k: v.clone() for k, v in golden["model_state_dict"].items()}
    ck["model_state_dict"] = sd
    keys = sorted(sd)
    kind = draw(st.sampled_from(["state-type", "drop", "extra", "shape", "dtype-ok", "nonfinite", "scalar", "config",
                                 "config", "meta", "module-prefix", "bare", "not-a-checkpoint", "not-a-checkpoint",
                                 "numpy", "object"]))
    files: dict[str, Any] = {}
    argv = ["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "--n-train", "20", "--n-test", "10", "-q"]
    valid = False
    if kind == "state-type":
        new = rng.choice([5, [], {}, "x", None, {"a": 5}, {"a": {"b": torch.zeros(2)}}, [torch.zeros(2)]])
        ck["model_state_dict"] = new
        label = f"model_state_dict = {new!r:.60}"
    elif kind == "drop":
        gone = rng.sample(keys, rng.randrange(1, 4))
        for k in gone:
            del sd[k]
        label = f"{len(gone)} key(s) missing, e.g. {gone[0]}"
    elif kind == "extra":
        sd[rng.choice(["predictor.extra.weight", "zzz", "target_encoder.vit.blocks.9.norm1.weight"])] = torch.zeros(3)
        label = "an unexpected key"
    elif kind == "shape":
        k = rng.choice(keys)
        shape = rng.choice([(1,), (3, 3), (0,), tuple(sd[k].shape) + (2,)])
        sd[k] = torch.zeros(shape)
        label = f"{k} has shape {shape}"
    elif kind == "dtype-ok":
        dt = rng.choice([torch.float16, torch.float64, torch.bfloat16])
        for k in keys:
            if sd[k].is_floating_point():
                sd[k] = sd[k].to(dt)
        label, valid = f"weights in {dt}", True
    elif kind == "nonfinite":
        k = rng.choice([k for k in keys if sd[k].is_floating_point() and sd[k].numel()])
        v = rng.choice([NAN, INF, -INF])
        sd[k].view(-1)[0] = v
        label = f"{k} holds {v}"
    elif kind == "scalar":
        k = rng.choice(keys)
        sd[k] = torch.tensor(1.0)
        label = f"{k} is a 0-dim tensor"
    elif kind == "config":
        choice = rng.randrange(7)
        if choice == 0:
            ck["config"] = {"model": 5}
            label = "config: {model: 5}"
        elif choice == 1:
            ck["config"] = 5
            label = "config: 5 (not a mapping)"
        elif choice == 2:
            ck["config"]["training"] = {**ck["config"]["training"], "lr": NAN}
            label = "config training.lr NaN"
        elif choice == 3:
            ck["config"]["model"] = {**ck["config"]["model"], "num_hierarchies": 3}
            label = "config says 3 levels, the weights have 2"
        elif choice == 4:
            ck["config"]["model"] = {**ck["config"]["model"], "predictor": 5}
            label = "config model.predictor: 5"
        elif choice == 5:
            ck["config"]["zzz"] = {"a": 1}
            label, valid = "config with an unknown key", True
        else:
            ck["config"]["data"] = {**ck["config"]["data"], "image_size": "32"}
            label = "config image_size '32' (a string)"
    elif kind == "meta":
        key, value = rng.choice([("epoch", "x"), ("epoch", None), ("epoch", NAN), ("epoch", torch.tensor([1, 2])),
                                 ("best_val_loss", INF), ("optimizer_state_dict", {"state": {}, "param_groups": []}),
                                 ("global_step", 10**30)])
        ck[key] = value
        label, valid = f"{key} = {value!r:.40}", True
    elif kind == "module-prefix":
        ck["model_state_dict"] = {f"module.{k}": v for k, v in sd.items()}
        label, valid = "every key has the DDP 'module.' prefix", True
    elif kind == "bare":
        ck = sd
        argv += ["--config", "{d}/tiny.yaml"]
        files["tiny.yaml"] = TINY_YAML
        label, valid = "a bare state dict, with --config", True
    elif kind == "numpy":
        ck["best_val_loss"] = np.float64(0.25)
        ck["epoch"] = np.int64(3)
        label, valid = "numpy scalars beside the weights", True
    elif kind == "object":
        import argparse
        import datetime
        import fractions

        ck["args"] = rng.choice([argparse.Namespace(lr=0.1), fractions.Fraction(1, 3), datetime.date(2020, 1, 1)])
        label = f"a pickled {type(ck['args']).__name__} beside the weights"
    else:  # not a checkpoint at all
        what = rng.randrange(9)
        raw: Any
        if what == 0:
            raw, label = b"", "empty file"
        elif what == 1:
            raw, label = bytes(rng.randrange(256) for _ in range(4096)), "random bytes"
        elif what == 2:
            raw, label = TINY_YAML, "a YAML file"
        elif what == 3:
            raw, label = b"PK\x03\x04" + b"\x00" * 100, "a broken zip header"
        else:
            obj = [5, "x", None, torch.zeros(3), {}, [torch.zeros(2)]][what - 4]
            raw, label = TorchSave(obj, repr(obj)[:40]), f"torch.save({obj!r:.30})"
        files["ck.pth"] = raw
        return Case(target="checkpoint", valid=False, argv=argv, files=files, label=label)
    files["ck.pth"] = TorchSave(ck, label)
    return Case(target="checkpoint", valid=valid, argv=argv, files=files, label=label)


# --------------------------------------------------------------------------- options files
TINY_OPTION: dict[str, Any] = {
    "name": "T", "title": "Tiny smoke option", "hours": [0, 1000], "priority": 7, "expected": "a tiny run",
    "choose_if": ["a smoke test"], "model": {"encoder_depth": 1, "predictor": {"depth": 1}},
    "data": {"image_size": 32, "batch_size": 4, "num_workers": 0}, "training": {"epochs": 2, "warmup_epochs": 1},
}
OPTION_META: dict[str, tuple[Pred, list[Any]]] = {
    "name": (lambda v: type(v) is str and bool(__import__("re").fullmatch(r"[A-Za-z0-9_-]{1,64}", v)),
             ["T", "opt-1", "D_2", "A", "x" * 64]),
    "hours": (lambda v: type(v) is list and len(v) == 2 and all(is_num(h) and h >= 0 for h in v) and v[0] <= v[1],
              [[0, 1000], [1, 2], [2, 2], [0.5, 3.5]]),
    "priority": (is_int, [0, 7, -1, 3]),
    "choose_if": (lambda v: type(v) is list and all(type(x) is str for x in v), [[], ["a", "b"]]),
    "expected": (any_str, ["", "linear probe 70%"]),
    "title": (any_str, ["T", "", "Ünïcode title"]),
}
OPTION_BAD_VALUES: dict[str, list[Any]] = {
    "name": ["x/../../../F", "", "a b", "..", "x" * 65, "ü", None, [1], "a/b", "con.yaml", "-", "\\x"],
    "hours": [[5, 1], [INF, INF], [-1, 2], [NAN, 1], ["a", 1], [1], 5, None, [0, INF], [1, 2, 3]],
    "priority": ["abc", INF, NAN, None, 1.5, [1], "1", True],
    "choose_if": [5, {"a": 1}, 1.5, [1, 2]],
    "expected": [5, [1], {"a": 1}],
    "title": [[1], {"a": 1}],
}
OPTION_AMBIGUOUS = {"expected": lambda v: v is None, "title": lambda v: v is None or type(v) in (int, float),
                    "choose_if": lambda v: v is None or type(v) is str, "priority": lambda v: False}


@st.composite
def options_cases(draw: Any) -> Case:
    """An options file with one tiny option, mutated; read by ``sweep`` (planning) or
    ``report`` (which writes configs/option_NAME.yaml)."""
    rng = seeded(draw)
    opt = copy.deepcopy(TINY_OPTION)
    doc: Any = {"options": [opt]}
    kind = draw(st.sampled_from(["meta", "meta", "meta", "section", "section", "checkpoint", "config", "top", "two"]))
    valid = True
    if kind == "meta":
        key = draw(st.sampled_from(sorted(OPTION_META)))
        pred, samples = OPTION_META[key]
        value = draw(st.sampled_from(samples + OPTION_BAD_VALUES[key]))
        if OPTION_AMBIGUOUS.get(key, lambda v: False)(value):
            value = samples[0]
        opt[key] = value
        valid = pred(value)
        label = f"{key}: {value!r:.70}"
    elif kind == "section":
        key = draw(st.sampled_from(sorted(CONFIG_KEYS)))
        pred, samples = CONFIG_KEYS[key]
        value = mutate_value(draw, pred, samples, p_valid=0.3)
        if AMBIGUOUS.get(key, lambda v: False)(value) or key.startswith("bench.") or key in ("data.batch_size",
                                                                                            "model.num_hierarchies"):
            value = samples[0]
        put(opt, key, value)
        merged = copy.deepcopy(TINY_CONFIG)
        for section in ("model", "data", "training"):
            for k2, v2 in opt.get(section, {}).items():
                if isinstance(v2, dict) and isinstance(merged[section].get(k2), dict):
                    merged[section][k2].update(v2)
                else:
                    merged[section][k2] = v2
        valid = not config_problems(merged) or key.startswith("bench")
        label = f"option {key}: {value!r:.60}"
    elif kind == "checkpoint":
        value = rng.choice([5, {"save_frequency": 0}, {"save_frequency": -1}, {"save_frequency": "x"},
                            {"save_frequency": 5}, {"save_frequency": NAN}, [1]])
        opt["checkpoint"] = value
        valid = value == {"save_frequency": 5}
        label = f"checkpoint: {value!r}"
    elif kind == "config":
        value = rng.choice(["tiny.yaml", 5, "missing.yaml", "sub", "", "../tiny.yaml"])
        opt["config"] = value
        valid = value == "tiny.yaml"
        label = f"config: {value!r}"
    elif kind == "top":
        doc, label = rng.choice([({"options": []}, "options: []"), ({"options": 5}, "options: 5"),
                                 ([opt], "a top-level list"), ({"options": [5]}, "options: [5]"),
                                 ({"options": [{"title": "x"}]}, "an option without a name"),
                                 ({"option": [opt]}, "options misspelled"), (None, "an empty file"),
                                 ({"options": [opt], "zzz": 1}, "an unknown top-level key")])
        valid = label == "an unknown top-level key" and False
    else:
        doc["options"].append(copy.deepcopy(opt))
        label = "the same option twice (the second replaces the first)"
    files = {"opts.yaml": dump(doc) if doc is not None else "", "tiny.yaml": TINY_YAML, "sub/x": ""}
    if draw(st.booleans()):
        argv = ["sweep", "--config", "{d}/cfg.yaml", "--device", "cpu", "--batch-sizes", "2", "--workers", "0",
                "--options", "all", "--options-file", "{d}/opts.yaml", "--out", "{d}/sw", "-q"]
        files["cfg.yaml"] = SWEEP_YAML
        target = "options:sweep"
    else:
        argv = ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--options-file", "{d}/opts.yaml"]
        target = "options:report"
    return Case(target=target, valid=valid, argv=argv, files=files, label=label)


# --------------------------------------------------------------------------- thresholds files
THRESHOLDS: dict[str, tuple[Pred, list[Any]]] = {
    "min_it_per_s": (num_in(0, 1e9, lo_open=True), [2.0, 2.5, 0.1]),
    "expected_it_per_s": (num_in(0, 1e9, lo_open=True), [3.2, 1]),
    "max_step_cv_pct": (num_in(0, 1e9), [20, 100000, 5.5]),
    "min_loss_decrease_pct": (num_in(0, 100), [20, 0, 50]),
    "low_rank_frac": (num_in(0, 1), [0.1, 0.5]),
    "memory_margin_frac": (num_in(0, 1, hi_open=True), [0.1, 0.0, 0.5]),
    "memory_pressure_frac": (num_in(0, 1, lo_open=True), [0.9, 1.0]),
    "workers_within_pct": (num_in(0, 1e9), [3, 10]),
    "batch_min_gain_pct": (num_in(0, 1e9), [5, 0]),
    "data_bound_share": (num_in(0, 1), [0.1, 0.5]),
    "logging_stall_max_pct": (num_in(0, 100), [2, 10]),
    "dataset_size": (int_in(1, 10**9), [50000, 60000, 9600]),
    "val_size": (int_in(1, 10**9), [10000, 500]),
    "val_every_epochs": (int_in(1, 10**6), [1, 5]),
    "confidence": (num_in(0, 1, lo_open=True, hi_open=True), [0.95, 0.5, 0.99]),
}
THRESHOLD_AMBIGUOUS = {"val_size": lambda v: v == 0 and is_int(v)}


@st.composite
def thresholds_cases(draw: Any) -> Case:
    """A thresholds file with 1-4 names; read by ``report``, ``analyze`` or ``sweep``."""
    names = draw(st.lists(st.sampled_from(sorted(THRESHOLDS)), min_size=1, max_size=4, unique=True))
    doc: Any = {}
    valid, labels = True, []
    for name in names:
        pred, samples = THRESHOLDS[name]
        value = mutate_value(draw, pred, samples, p_valid=0.4)
        if THRESHOLD_AMBIGUOUS.get(name, lambda v: False)(value):
            value = samples[0]
        doc[name] = value
        valid = valid and pred(value)
        labels.append(f"{name}: {value!r:.40}")
    extra = draw(st.sampled_from([None, None, None, None, "unknown", "list", "scalar", "nested"]))
    if extra == "unknown":
        doc["not_a_threshold"] = 3
        valid = False
        labels.append("an unknown name")
    elif extra == "list":
        doc, valid = [doc], False
        labels.append("a top-level list")
    elif extra == "scalar":
        doc, valid = 5, False
        labels.append("a top-level number")
    elif extra == "nested":
        doc = {"thresholds": doc}
        valid = False
        labels.append("nested under thresholds:")
    command = draw(st.sampled_from(["report", "report", "analyze", "sweep"]))
    files = {"th.yaml": dump(doc)}
    if command == "report":
        argv = ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--thresholds", "{d}/th.yaml"]
    elif command == "analyze":
        argv = ["analyze", "--log", "{d}/train.log", "--thresholds", "{d}/th.yaml"]
    else:
        argv = ["sweep", "--config", "{d}/cfg.yaml", "--device", "cpu", "--batch-sizes", "2", "--workers", "0",
                "--options", "A", "--out", "{d}/sw", "-q", "--thresholds", "{d}/th.yaml"]
        files["cfg.yaml"] = SWEEP_YAML
    return Case(target=f"thresholds:{command}", valid=valid, argv=argv, files=files, label="; ".join(labels))


# --------------------------------------------------------------------------- grid files
def _list_of(pred: Pred, allow_none: bool = True) -> Pred:
    return lambda v: type(v) is list and len(v) > 0 and all((x is None and allow_none) or pred(x) for x in v)


GRID_KEYS: dict[str, tuple[Pred, list[Any]]] = {
    "devices": (lambda v: (type(v) is list and len(v) > 0 and all(one_of("cpu", "auto")(x) for x in v))
                or one_of("cpu", "auto")(v), [["cpu"], ["cpu", "auto"], "cpu"]),
    "models": (lambda v: _list_of(one_of(*MODELS))(v) or one_of(*MODELS)(v), [["vit_tiny"], [None], "vit_tiny"]),
    "batch_sizes": (lambda v: _list_of(int_in(1, 65536))(v) or int_in(1, 65536)(v), [[2], [2, 4], [None], 8]),
    "workers": (lambda v: _list_of(int_in(0, 256))(v) or int_in(0, 256)(v), [[0], [0, 2], [None]]),
    "hierarchies": (lambda v: _list_of(int_in(1, 4))(v) or int_in(1, 4)(v), [[2], [1, 3], [None]]),
    "predictor_depths": (lambda v: _list_of(int_in(1, 48))(v) or int_in(1, 48)(v), [[1], [2, 4]]),
    "variants": (lambda v: _list_of(one_of("reference", "efficient"))(v) or one_of("reference", "efficient")(v),
                 [["reference"], ["reference", "efficient"]]),
    "precisions": (lambda v: _list_of(one_of("fp32", "fp16", "bf16", "auto"))(v)
                   or one_of("fp32", "fp16", "bf16", "auto")(v), [["fp32"], [None], ["fp32", "bf16"]]),
    "img_sizes": (lambda v: _list_of(lambda x: int_in(32, 1024)(x) and x % 16 == 0)(v)
                  or (int_in(32, 1024)(v) and v % 16 == 0), [[32], [32, 64], [None], 224]),
    "encoder_depth": (optional(int_in(1, 48)), [1, 2, None]),
    "config": (lambda v: v is None or v == "{d}/cfg.yaml", [None, "{d}/cfg.yaml"]),
    "workload": (lambda v: v is None or v == "hjepa", ["hjepa", None]),
    "data": (lambda v: v is None or v == "synthetic", ["synthetic", None]),
    "limit_samples": (optional(int_in(1, 10**8)), [None, 100000, 8]),
    "persistent_workers": (optional(is_bool), [True, False, None]),
    "warmup_steps": (optional(int_in(0, 100000)), [0, 2]),
    "min_steps": (optional(int_in(1, 30)), [1, 5]),
    "max_steps": (optional(int_in(5, 10**7)), [5, 30]),
    "max_time_s": (optional(num_in(0, 1e7, lo_open=True)), [1, 15.0]),
    "timeout_s": (optional(num_in(0, 1e7, lo_open=True)), [None, 100]),
    "skip_after_oom": (is_bool, [True, False]),
    "probes": (lambda v: v is None or (type(v) is list and all(one_of("none", "cheap", "stability", "loss")(x)
                                                               for x in v)), [None, ["none"], ["cheap"]]),
    "options": (lambda v: type(v) is list and len(v) > 0 and all(one_of("A", "B", "C", "all")(x) for x in v),
                [["A"], ["A", "B"], ["all"]]),
    "options_file": (lambda v: v is None, [None]),
}
GRID_BAD: list[Any] = [[[1]], [5], ["gpu"], [], "x", 5, [0], [-1], [1.5], ["a", 1], [33], ["fp64"], ["fast"], NAN,
                       INF, -1, 0, "no", [None, "x"], {"a": 1}, [NAN], [True]]
GRID_BASE = {"devices": ["cpu"], "batch_sizes": [2], "workers": [0], "img_sizes": [32], "predictor_depths": [1],
             "encoder_depth": 1, "options": ["A"], "config": "{d}/cfg.yaml"}


@st.composite
def grid_cases(draw: Any) -> Case:
    """A grid file (sweep --grid) with 1-3 keys set to drawn values."""
    doc: Any = copy.deepcopy(GRID_BASE)
    keys = draw(st.lists(st.sampled_from(sorted(GRID_KEYS)), min_size=1, max_size=3, unique=True))
    valid, labels = True, []
    for key in keys:
        pred, samples = GRID_KEYS[key]
        value = copy.deepcopy(draw(st.sampled_from(samples + GRID_BAD)))
        doc[key] = value
        valid = valid and pred(value)
        labels.append(f"{key}: {value!r:.40}")
    lo, hi = doc.get("min_steps", 5), doc.get("max_steps", 30)
    if is_int(lo) and is_int(hi) and hi < lo:
        valid = False
    limit, batches = doc.get("limit_samples"), doc.get("batch_sizes")
    batches = batches if type(batches) is list else [batches]
    if is_int(limit) and any(is_int(b) and b > limit for b in batches + [TINY_BATCH]):
        valid = False  # a batch needs that many samples
    extra = draw(st.sampled_from([None] * 6 + ["unknown", "list", "empty"]))
    if extra == "unknown":
        doc["bathc_sizes"] = [2]
        valid = False
        labels.append("an unknown key")
    elif extra == "list":
        doc, valid = [doc], False
        labels.append("a top-level list")
    elif extra == "empty":
        doc, valid = None, True
        labels = ["an empty grid (the defaults)"]
    text = dump(doc) if doc is not None else ""
    text = text.replace("'{d}/cfg.yaml'", "{d}/cfg.yaml")
    return Case(target="grid", valid=valid, argv=["sweep", "--grid", "{d}/grid.yaml", "--out", "{d}/sw", "-q"],
                files={"grid.yaml": text, "cfg.yaml": SWEEP_YAML}, label="; ".join(labels))


# --------------------------------------------------------------------------- pytest-benchmark JSON
@st.composite
def bench_cases(draw: Any) -> Case:
    """A pytest-benchmark JSON file (and maybe a baseline), one of them mutated."""
    rng = seeded(draw)
    now, base = copy.deepcopy(BENCH_JSON), copy.deepcopy(BENCH_JSON)
    kind = draw(st.sampled_from(["tree", "tree", "tree", "median", "median", "benchmarks", "top", "baseline-zero",
                                 "other-machine", "fine"]))
    victim = now if draw(st.booleans()) else base
    valid, raw = True, None
    if kind == "tree":
        label, verdict = mutate_tree(rng, victim, rng.choice(["retype", "retype", "nonfinite", "deep", "delete"]),
                                     bench_read)
        valid = None if verdict == "unknown" else False  # unknown: may be fine, must not crash
    elif kind == "median":
        value = rng.choice(["x", None, NAN, INF, -1, 0, [1], {}, 0.002])
        victim["benchmarks"][rng.randrange(3)]["stats"]["median"] = value
        label, valid = f"a median of {value!r}", is_num(value) and value > 0
    elif kind == "benchmarks":
        value = rng.choice([[5], {}, "x", None, [{}], [{"name": "x"}], [{"name": "x", "stats": 5}],
                            [{"fullname": 5, "stats": {"median": 1}}], []])
        victim["benchmarks"] = value
        label, valid = f"benchmarks: {value!r:.50}", value == []
    elif kind == "top":
        raw, label = rng.choice([("[]", "a top-level list"), ("5", "a number"), ("{", "broken JSON"),
                                 ('{"benchmarks": [], "x": NaN}', "a NaN literal"),
                                 (deep_list(100000), "100,000-deep nesting"), ("", "an empty file"),
                                 ('{"benchmarks": ' + deep_list(5000) + "}", "5,000-deep benchmarks")])
        valid = False
    elif kind == "baseline-zero":
        base["benchmarks"][0]["stats"]["median"] = 0
        victim = base
        label, valid = "a baseline median of 0", False
    elif kind == "other-machine":
        base["machine_info"]["hjepa_bench"]["torch"] = "1.0"
        victim = base
        label, valid = "a baseline from another torch (refused without --allow-other-machine)", False
    else:
        label = "unchanged"
    with_base = victim is base or draw(st.booleans())
    files: dict[str, Any] = {"now.json": to_json(now), "base.json": to_json(base)}
    if raw is not None:
        files["now.json" if victim is now else "base.json"] = raw
    argv = ["benchmark-report", "{d}/now.json"]
    if with_base:
        argv += ["--baseline", "{d}/base.json"]
    if draw(st.booleans()):
        argv += ["--out", "{d}/out/b.md"]
    return Case(target="benchjson", valid=bool(valid) if valid is not None else True, argv=argv, files=files,
                label=f"{'baseline' if victim is base else 'current'}: {label}")


# --------------------------------------------------------------------------- special files
#: (slot name, argv with {F} for the file under test, extra files, what a regular empty file is)
INPUT_SLOTS: list[tuple[str, list[str], dict[str, Any], bool]] = [
    ("run --config", ["run", "--device", "cpu", "--config", "{F}", "--probes", "none", "-q", *TINY_FLAGS], {}, True),
    ("validate --config", ["validate", "--device", "cpu", "--config", "{F}", "--out", "{d}/v", "-q", *TINY_FLAGS],
     {}, True),
    ("sweep --config", ["sweep", "--device", "cpu", "--config", "{F}", "--options", "A", "--out", "{d}/sw", "-q"],
     {}, True),
    ("sweep --grid", ["sweep", "--grid", "{F}", "--out", "{d}/sw", "-q"], {}, True),
    ("sweep --options-file", ["sweep", "--device", "cpu", "--options-file", "{F}", "--out", "{d}/sw", "-q"], {},
     False),
    ("sweep --thresholds", ["sweep", "--device", "cpu", "--options", "A", "--thresholds", "{F}", "--out", "{d}/sw",
                            "-q"], {}, True),
    ("report --thresholds", ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--thresholds", "{F}"],
     {}, True),
    ("report --options-file", ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--options-file",
                               "{F}"], {}, False),
    ("report RESULTS-FILE", ["report", "{F}", "--no-charts", "--out", "{d}/rep/report.md"], {}, False),
    ("report DIR/results.jsonl", ["report", "{d}/x", "--no-charts", "--out", "{d}/rep/report.md"], {}, False),
    ("sweep --out DIR/results.jsonl (resume)", ["sweep", "--device", "cpu", "--options", "A", "--out", "{d}/x",
                                                "-q"], {}, True),
    ("analyze --log", ["analyze", "--log", "{F}"], {}, False),
    ("analyze --config", ["analyze", "--log", "{d}/train.log", "--config", "{F}"], {}, True),
    ("analyze --thresholds", ["analyze", "--log", "{d}/train.log", "--thresholds", "{F}"], {}, True),
    ("eval --checkpoint", ["eval", "--checkpoint", "{F}", "--device", "cpu", "-q"], {}, False),
    ("eval --config", ["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "-q", "--n-train", "20", "--n-test",
                       "10", "--config", "{F}"], {}, False),  # empty: the defaults, which the checkpoint does not fit
    ("benchmark-report RUN.json", ["benchmark-report", "{F}"], {}, False),
    ("benchmark-report --baseline", ["benchmark-report", "{d}/now.json", "--baseline", "{F}"], {}, False),
    ("run --data-path (cifar10)", ["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q",
                                   "--data", "cifar10", "--data-path", "{F}"], {}, False),
]
#: kinds of file: (name, maker of the file at F, applies to every slot)
KINDS = ["missing", "directory", "fifo", "non-utf8", "binary", "empty", "huge-sparse", "big-text", "under-a-file",
         "symlink-loop"]
BIG_TEXT_SLOTS = ("run --config", "sweep --grid", "report --thresholds", "report RESULTS-FILE")


def special_input_cases() -> list[Case]:
    cases = []
    for slot, argv, extra, empty_ok in INPUT_SLOTS:
        for kind in KINDS:
            if kind == "big-text" and slot not in BIG_TEXT_SLOTS:
                continue
            files: dict[str, Any] = dict(extra)
            path = "{d}/F"
            if slot == "report DIR/results.jsonl" or slot.startswith("sweep --out"):
                rel = "x/results.jsonl"
                if kind == "missing":  # an empty sweep folder is a fresh sweep / an empty report
                    files["x/keep"] = ""
            else:
                rel = "F"
            if kind == "directory":
                files[rel] = DIRECTORY
            elif kind == "fifo":
                files[rel] = FIFO
            elif kind == "non-utf8":
                files[rel] = b"\xff\xfe\xfa\xfb not text \xc3\x28\n"
            elif kind == "binary":
                files[rel] = bytes(range(256)) * 8
            elif kind == "empty":
                files[rel] = b""
            elif kind == "huge-sparse":
                files[rel] = Special("sparse", size=3 * 2**30)
            elif kind == "big-text":
                files[rel] = ("# a comment line of a huge file\n" * (2**19)).encode()  # 16 MiB
            elif kind == "under-a-file":
                files["reg"] = b"a regular file\n"
                if rel == "F":
                    path = "{d}/reg/F"
                else:  # the folder that should hold results.jsonl is a regular file
                    files["x"] = b"a regular file where a folder should be\n"
            elif kind == "symlink-loop":
                files[rel] = Special("symlink", target="{d}/" + rel)
            valid = (kind == "empty" and empty_ok) or (kind == "missing" and slot.startswith("sweep --out"))
            if slot.startswith("sweep --out") and kind == "non-utf8":
                # one complete line that does not parse: moved aside like a cut-off tail (docs/commands.md)
                valid = True
            if kind == "missing" and slot == "report DIR/results.jsonl":
                valid = False
            full = [a.replace("{F}", path) for a in argv]
            timeout = HANG_PRONE_S if kind == "big-text" else None
            cases.append(Case(target="special:input", valid=valid, argv=full, files=files,
                              label=f"{slot}: {kind}", timeout=timeout))
    return cases


#: (slot, argv with {P} for the output path, True if the output is a folder)
OUTPUT_SLOTS: list[tuple[str, list[str], bool]] = [
    ("run --json", ["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q", "--json", "{P}"],
     False),
    ("run --report", ["run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "none", "-q", "--report",
                      "{P}"], False),
    ("sweep --out", ["sweep", "--device", "cpu", "--options", "A", "--out", "{P}", "-q"], True),
    ("report --out", ["report", "{d}/res", "--no-charts", "--out", "{P}"], False),
    ("validate --out", ["validate", "--device", "cpu", "--config", "{d}/tiny.yaml", "--epochs", "1", "--out", "{P}",
                        "-q"], True),
    ("analyze --out", ["analyze", "--log", "{d}/train.log", "--out", "{P}"], True),
    ("eval --out", ["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "-q", "--n-train", "20", "--n-test",
                    "10", "--out", "{P}"], True),
    ("benchmark-report --out", ["benchmark-report", "{d}/now.json", "--out", "{P}"], False),
]


def special_output_cases() -> list[Case]:
    cases = []
    for slot, argv, is_dir in OUTPUT_SLOTS:
        for kind in ("under-a-file", "a-regular-file" if is_dir else "a-directory", "fine"):
            files: dict[str, Any] = {"reg": b"a regular file\n", "adir": DIRECTORY}
            if kind == "under-a-file":
                path = "{d}/reg/out" + ("" if is_dir else ".md")
            elif kind == "a-regular-file":
                path = "{d}/reg"
            elif kind == "a-directory":
                path = "{d}/adir"
            else:
                path = "{d}/fresh/out" + ("" if is_dir else (".json" if "json" in slot else ".md"))
            if slot == "report --out" and kind == "a-directory":
                path = "{d}/adir/r.md/"  # a folder named like a report file
                files["adir/r.md"] = DIRECTORY
            full = [a.replace("{P}", path) for a in argv]
            cases.append(Case(target="special:output", valid=kind == "fine", argv=full, files=files,
                              label=f"{slot}: {kind}"))
    return cases


# --------------------------------------------------------------------------- plugins
PLUGIN_HEADER = PLUGIN_API_IMPORTS
PLUGINS: list[tuple[str, str, list[str], bool, str]] = [
    # (label, module source, argv (MOD = the module name), valid, what the run must keep)
    ("a register_backends hook that raises",
     "@hookimpl\ndef hjepa_bench_register_backends(register):\n    raise RuntimeError('boom')\n",
     ["-p", "MOD", "devices"], True, ""),
    ("a register_probes hook that raises",
     "@hookimpl\ndef hjepa_bench_register_probes(register):\n    raise ValueError('boom')\n",
     ["-p", "MOD", "plugins"], True, ""),
    ("a report section whose render() raises",
     "class S(ReportSection):\n    name = 'boom'\n    title = 'Boom'\n    def render(self, records):\n"
     "        raise RuntimeError('render failed')\n@hookimpl\ndef hjepa_bench_register_report_sections(register):\n"
     "    register(S())\n",
     ["-p", "MOD", "report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md"], True, ""),
    ("a probe whose finish() returns a list",
     "class P(Probe):\n    name = 'badlist'\n    cost = 'costly'\n    def finish(self, ctx, record):\n"
     "        return [1, 2]\n@hookimpl\ndef hjepa_bench_register_probes(register):\n    register(P())\n",
     ["-p", "MOD", "run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "badlist", "-q", "--json",
      "{d}/rec.json", "--max-steps", "1", "--min-steps", "1", "--warmup-steps", "0"], True, "record"),
    ("a probe whose finish() returns data JSON cannot hold",
     "class P(Probe):\n    name = 'badjson'\n    cost = 'costly'\n    def finish(self, ctx, record):\n"
     "        return {'x': object(), 'y': {1, 2}}\n@hookimpl\ndef hjepa_bench_register_probes(register):\n"
     "    register(P())\n",
     ["-p", "MOD", "run", "--device", "cpu", "--config", "{d}/tiny.yaml", "--probes", "badjson", "-q", "--json",
      "{d}/rec.json", "--max-steps", "1", "--min-steps", "1", "--warmup-steps", "0"], True, "record"),
    ("a module that raises on import", "raise ImportError('no such thing')\n", ["-p", "MOD", "devices"], False, ""),
    ("a misspelled hook", "@hookimpl\ndef hjepa_bench_register_probe(register):\n    pass\n",
     ["-p", "MOD", "devices"], False, ""),
    ("a probe registered twice under a built-in name",
     "class P(Probe):\n    name = 'loss'\n@hookimpl\ndef hjepa_bench_register_probes(register):\n    register(P())\n",
     ["-p", "MOD", "plugins"], True, ""),
    ("a register hook that registers a string",
     "@hookimpl\ndef hjepa_bench_register_workloads(register):\n    register('hjepa')\n",
     ["-p", "MOD", "plugins"], True, ""),
]


def plugin_cases(tag: str, files: dict[str, Any]) -> list[Case]:
    """A plugin that breaks its contract is isolated (the command goes on: valid); a module
    that cannot be loaded or names a hook that does not exist is a usage error (invalid)."""
    cases = []
    for i, (label, source, argv, valid, keep) in enumerate(PLUGINS):
        mod = f"fuzz_plugin_{tag}_{i}"
        case = Case(target="plugins", valid=valid, argv=[a.replace("MOD", mod) for a in argv],
                    files={**files, f"{mod}.py": PLUGIN_HEADER + source}, label=label, engine=keep == "record")
        if keep == "record":
            case.check = record_written
            case.timeout = 60
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- the bases
#: the unmutated base of every family: each must be accepted (exit 0, or the engine reached),
#: or the invalid cases built on it prove nothing
BASES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("config:sweep", CONFIG_COMMANDS["sweep"], {"cfg.yaml": SWEEP_YAML, "grid.yaml": SWEEP_GRID}),
    ("config:run", CONFIG_COMMANDS["run"], {"cfg.yaml": TINY_YAML}),
    ("config:validate", CONFIG_COMMANDS["validate"], {"cfg.yaml": TINY_YAML}),
    *[(f"flags:{c}", FLAG_BASES[c][0], {}) for c in FLAG_BASES if c != "inspect"],
    ("log", ["analyze", "--log", "{d}/train.log"], {}),
    ("results:report", ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md"], {}),
    ("results:resume", ["sweep", "--config", "{d}/cfg.yaml", "--device", "cpu", "--batch-sizes", "2", "--workers", "0",
                        "--options", "A", "--out", "{d}/res", "-q"], {}),
    ("checkpoint", ["eval", "--checkpoint", "{d}/ck.pth", "--device", "cpu", "--n-train", "20", "--n-test", "10", "-q"],
     {}),
    ("options:sweep", ["sweep", "--config", "{d}/cfg.yaml", "--device", "cpu", "--batch-sizes", "2", "--workers", "0",
                       "--options", "all", "--options-file", "{d}/opts.yaml", "--out", "{d}/sw", "-q"],
     {"opts.yaml": dump({"options": [TINY_OPTION]})}),
    ("options:report", ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--options-file",
                        "{d}/opts.yaml"], {"opts.yaml": dump({"options": [TINY_OPTION]})}),
    ("thresholds:report", ["report", "{d}/res", "--no-charts", "--out", "{d}/rep/report.md", "--thresholds",
                           "{d}/th.yaml"], {"th.yaml": "min_it_per_s: 2.0\n"}),
    ("thresholds:analyze", ["analyze", "--log", "{d}/train.log", "--thresholds", "{d}/th.yaml"],
     {"th.yaml": "min_it_per_s: 2.0\n"}),
    ("grid", ["sweep", "--grid", "{d}/grid.yaml", "--out", "{d}/sw", "-q"],
     {"grid.yaml": dump(GRID_BASE), "cfg.yaml": SWEEP_YAML}),
    ("benchjson", ["benchmark-report", "{d}/now.json", "--baseline", "{d}/now.json", "--out", "{d}/out/b.md"], {}),
    *[(f"special:{slot}", [a.replace("{F}", "{d}/tiny.yaml" if "config" in slot else "{d}/res/results.jsonl")
                           for a in argv], {})
      for slot, argv, _, _ in INPUT_SLOTS if slot in ("run --config", "report RESULTS-FILE")],
]


def base_cases() -> list[Case]:
    return [Case(target=name, valid=True, argv=list(argv), files=dict(files), label="the unmutated base")
            for name, argv, files in BASES]
