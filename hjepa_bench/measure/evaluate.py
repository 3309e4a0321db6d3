"""Quick evaluation of a trained H-JEPA encoder (docs/verdicts.md,
"Quick evaluation of an encoder" and "Collapse and quality metrics").

``hjepa-bench eval --checkpoint PATH`` loads an upstream-format checkpoint (a dict
with ``model_state_dict`` in upstream's layout, ``tests/data/upstream-state-dict-*.tsv``,
or a bare state dict; read by :func:`hjepa_bench.hjepa.checkpoint.load_state_dict`) and
measures the representation quality of its EMA target encoder against the same
architecture at random initialisation (:func:`evaluate_checkpoint`, its settings in
:class:`EvalSettings`).  Every number comes from this run.

Features (:func:`hjepa_bench.hjepa.training.level_features`), one set per hierarchy level l, computed with the
model in eval mode, without gradients, in float32 on the chosen device, then
moved to the CPU as float64:

* tokens = the EMA target encoder's output (patch embed, CLS, position
  embedding, blocks, final norm) with the CLS token dropped: (B, N, D), N patches
  in raster order.
* level 0: mean of the N patch tokens (what I-JEPA evaluates; no projection).
* level l > 0: ``hierarchy_projections[l]`` (Linear + LayerNorm) on every patch
  token, then 1-D average pooling along the patch sequence with kernel = stride
  = k = min(2**l, N) (projection first, then pooling: the order
  :func:`hjepa_bench.hjepa.loss.hierarchical_loss` uses for the level-l targets, with
  the same pooling function), then the mean over the pooled tokens.  Because
  both pools are averages this equals the mean of the projected tokens over the
  first floor(N / k) * k patches (all of them whenever k divides N, e.g. 196 or
  16 patches at l = 1, 2).  The training step pools the sequence of *masked*
  tokens; here the whole patch sequence is pooled, since every patch is a target
  at evaluation.

Metrics, per level, for the trained and the random-init model:

* ``feature_quality`` (:func:`hjepa_bench.analysis.features.feature_quality`) of the
  train-split features (N = n_train: RankMe needs N >= 4D).
* ``knn_top1``: weighted kNN (DINO protocol): L2-normalised features, cosine
  similarity of every test feature to every train feature, the top k = 20, each
  neighbour votes for its class with weight exp(sim / 0.07), the class with the
  largest summed weight wins (ties: the lowest class index).
* ``linear_top1``: scikit-learn ``LogisticRegression`` (lbfgs, multinomial, C = 1,
  no C sweep) on the frozen train features after ``StandardScaler`` (fitted on the
  train features), accuracy on the test features.
* ``gain``: trained minus random init for kNN and linear top-1;
  ``rankme_ratio`` = trained centred RankMe / random-init centred RankMe.

The random-init model is ``HJEPA.from_config(values)`` built under
``torch.manual_seed(seed)`` (the global RNG state is restored afterwards).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis.evaluation import (
    KNN_K,
    KNN_PROTOCOL,
    KNN_TEMPERATURE,
    LINEAR_MAX_ITER,
    LINEAR_PROTOCOL,
    comparison_caveats,
    knn_accuracy,
    linear_probe,
)
from ..analysis.features import feature_quality
from ..config import MODELS, PATCH_SIZE, resolve_config
from ..errors import UserError
from ..hjepa.checkpoint import _first_line, load_state_dict
from ..hjepa.data import build_dataset, build_eval_transform
from ..hjepa.model import HJEPA
from ..hjepa.training import level_features

#: default split sizes for a real run (limited by the data set)
DEFAULT_N_TRAIN = 5000
DEFAULT_N_TEST = 1000
FEATURES_PROTOCOL = ("EMA target encoder, eval mode, no_grad, float32; CLS dropped; level 0 = mean of the "
                     "patch tokens; level l>0 = hierarchy_projections[l] on every patch token, 1-D average "
                     "pooling along the patch sequence with kernel = stride = 2^l (as the loss builds its "
                     "level-l targets), then the mean; metrics on the CPU in float64")
QUALITY_PROTOCOL = "feature_quality on the train-split features (N = n_train)"
GAIN_PROTOCOL = ("trained minus random init (top-1 as a fraction); rankme_ratio = trained centred RankMe / "
                 "random-init centred RankMe")

Progress = Callable[[str], None]
_UPSTREAM_LAYOUT = "context_encoder.vit.*, target_encoder.vit.*, predictor.*, hierarchy_projections.*"


# --------------------------------------------------------------------------- config and model
def _resolve(meta: Mapping[str, Any], config_path: str | Path | None,
             overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], str, list[str]]:
    """(values, config_source, notes)."""
    notes: list[str] = []
    if config_path is not None:
        rc = resolve_config(config_path, overrides)
        source = f"--config {config_path}"
        if meta.get("config"):
            notes.append(f"the checkpoint carries its own config; {config_path} was used instead (--config wins)")
    elif meta.get("config") is not None:
        embedded = meta["config"]
        where = f"the config saved in checkpoint {meta.get('path', '')}".rstrip()
        if not isinstance(embedded, MappingABC):
            raise UserError(f"{where} is not a mapping of sections (it holds {embedded!r:.40}); pass the config "
                            "it was trained with via --config.")
        try:  # checked like a config file: sections, types and ranges
            rc = resolve_config(None, overrides, sections=embedded)
        except UserError as exc:
            raise UserError(f"{where} is invalid ({str(exc).rstrip('.')}); pass the config it was trained with "
                            "via --config.") from None
        source = "checkpoint"
    else:
        rc = resolve_config(None, overrides)
        source = "defaults (upstream quick_val)"
        notes.append("upstream checkpoints carry no config: the model was built from the upstream quick_val "
                     "defaults; pass --config if it was trained with another config")
    notes.extend(rc.notes)
    if rc.unknown_keys:
        notes.append("unknown config keys (ignored): " + ", ".join(rc.unknown_keys))
    return rc.values, source, notes


def config_from_checkpoint(meta: Mapping[str, Any], config_path: str | Path | None = None,
                           overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resolved config values: ``--config`` wins; else the checkpoint's ``config``
    (merged over the defaults); else the upstream quick_val defaults (upstream
    checkpoints carry no config).  ``overrides`` (dotted keys) apply in every case."""
    return _resolve(meta, config_path, overrides)[0]


def _shape(t: Any) -> str:
    shape = tuple(getattr(t, "shape", ()))
    return "x".join(str(s) for s in shape) if shape else "scalar"


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a state dict in the upstream layout looks like (None where it cannot tell)."""
    def count(prefix: str) -> int | None:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        idx = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
        return max(idx) + 1 if idx else None

    out: dict[str, Any] = {"embed_dim": None, "encoder_depth": None, "image_size": None,
                           "num_hierarchies": count("hierarchy_projections."),
                           "predictor_depth": count("predictor.blocks."), "predictor_mlp_ratio": None}
    for enc in ("target_encoder.vit.", "context_encoder.vit."):
        if enc + "cls_token" in state_dict:
            out["embed_dim"] = int(state_dict[enc + "cls_token"].shape[-1])
            out["encoder_depth"] = count(enc + "blocks.")
            pos = state_dict.get(enc + "pos_embed")
            if pos is not None and pos.ndim == 3:
                n = int(pos.shape[1]) - 1
                g = math.isqrt(max(n, 0))
                out["image_size"] = g * PATCH_SIZE if g * g == n and n > 0 else None
            break
    fc1 = state_dict.get("predictor.blocks.0.mlp.0.weight")
    if fc1 is not None and fc1.ndim == 2 and fc1.shape[1]:
        out["predictor_mlp_ratio"] = float(fc1.shape[0]) / float(fc1.shape[1])
    return out


def _config_architecture(values: Mapping[str, Any]) -> dict[str, Any]:
    m = values["model"]
    return {"embed_dim": MODELS[m["encoder_type"]]["embed_dim"], "encoder_depth": int(m.get("encoder_depth", 12)),
            "image_size": int(values["data"]["image_size"]), "num_hierarchies": int(m["num_hierarchies"]),
            "predictor_depth": int(m["predictor"]["depth"]),
            "predictor_mlp_ratio": float(m["predictor"]["mlp_ratio"])}


_ARCH_NAMES = {"embed_dim": "encoder width", "encoder_depth": "encoder depth", "image_size": "image size",
               "num_hierarchies": "hierarchy levels", "predictor_depth": "predictor depth",
               "predictor_mlp_ratio": "predictor mlp_ratio"}


def _arch_differences(ckpt: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    out = []
    for key, name in _ARCH_NAMES.items():
        a, b = ckpt.get(key), cfg.get(key)
        if a is None or b is None:
            continue
        if (abs(a - b) > 1e-6) if isinstance(a, float) else a != b:
            out.append(f"{name} {a:g} in the checkpoint vs {b:g} in the config")
    return out


def load_model(values: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> HJEPA:
    """``HJEPA.from_config(values)`` with ``state_dict`` loaded strictly.

    On a mismatch raises :class:`UserError` naming the first missing key, the first
    unexpected key and the first shape mismatch (with counts), and suggesting
    ``--config`` when the checkpoint looks like another model config."""
    model = HJEPA.from_config(values)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [(k, state_dict[k], expected[k]) for k in expected
              if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} "
                         f"(first: {unexpected[0]})")
        if shapes:
            k, got, want = shapes[0]
            parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''} (first: {k} is "
                         f"{_shape(got)} in the checkpoint but {_shape(want)} in the model)")
        m = values["model"]
        built = (f"{m['encoder_type']}, depth {m.get('encoder_depth', 12)}, {values['data']['image_size']} px, "
                 f"{m['num_hierarchies']} levels, predictor depth {m['predictor']['depth']}")
        diffs = _arch_differences(infer_architecture(state_dict), _config_architecture(values))
        if diffs:
            hint = ("it looks like another model config (" + ", ".join(diffs) + "): pass the config it was "
                    "trained with via --config")
        else:
            hint = (f"the checkpoint does not follow the upstream H-JEPA layout ({_UPSTREAM_LAYOUT}); if it "
                    "was trained with another config, pass it via --config")
        raise UserError(f"checkpoint does not match the model built from the config ({built}): "
                        + "; ".join(parts) + f"; {hint}.")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # e.g. a tensor that cannot be copied (dtype)
        raise UserError(f"cannot load the checkpoint into the model: {_first_line(exc)}.") from None
    return model


# --------------------------------------------------------------------------- evaluation
def _device(device: str | torch.device) -> torch.device:
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"unknown device {name!r} ({_first_line(exc)}).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} was asked for, but CUDA is not available here.")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"device {name} was asked for, but MPS is not available here.")
    return dev


def _backend_sync(dev: torch.device) -> Callable[[], None]:
    """``synchronize`` of the built-in backend of ``dev``'s type (the one way to wait for a device);
    a no-op for a device type no built-in backend has."""
    from ..plugin.manager import build_plugins

    backend = build_plugins(env={"HJEPA_BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"},
                            builtins=(dev.type,)).backends().get(dev.type)
    return backend.synchronize if backend is not None else (lambda: None)


@torch.no_grad()
def _extract(models: Sequence[HJEPA], dataset: Any, batch_size: int, dev: torch.device, num_workers: int,
             sync: Callable[[], None],
             progress: Progress | None, split: str) -> tuple[list[list[np.ndarray]], np.ndarray, float, float]:
    """Per model, per level (n, D) float64 features; labels; data-wait s; forward s (synced)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                                         num_workers=num_workers)
    feats: list[list[list[torch.Tensor]]] = [[[] for _ in m.hierarchy_projections] for m in models]
    labels: list[torch.Tensor] = []
    data_s = forward_s = 0.0
    n_batches = len(loader)
    t = time.perf_counter()
    for i, (images, y) in enumerate(loader):
        t1 = time.perf_counter()
        data_s += t1 - t
        images = images.to(dev)
        for mi, model in enumerate(models):
            for level, f in enumerate(level_features(model, images)):
                feats[mi][level].append(f.float().cpu())
        sync()
        t = time.perf_counter()
        forward_s += t - t1
        labels.append(torch.as_tensor(y))
        if progress is not None and (i + 1 == n_batches or (i + 1) % 10 == 0):
            progress(f"{split}: {min((i + 1) * batch_size, len(dataset))}/{len(dataset)} images embedded")
    out = [[torch.cat(lv).double().numpy() for lv in per_model] for per_model in feats]
    return out, torch.cat(labels).numpy().astype(np.int64), data_s, forward_s


def _score(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray, test_y: np.ndarray, num_classes: int,
           seed: int, timings: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    quality = feature_quality(train_z)
    t1 = time.perf_counter()
    knn = knn_accuracy(train_z, train_y, test_z, test_y, KNN_K, KNN_TEMPERATURE, num_classes)
    t2 = time.perf_counter()
    lin = linear_probe(train_z, train_y, test_z, test_y, seed=seed)
    t3 = time.perf_counter()
    timings["quality"] += t1 - t0
    timings["knn"] += t2 - t1
    timings["linear"] += t3 - t2
    return {"feature_quality": quality, "knn_top1": knn, "linear_top1": lin["top1"],
            "linear_n_iter": lin["n_iter"], "linear_converged": lin["converged"]}


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


@dataclass(frozen=True)
class EvalSettings:
    """How ``hjepa-bench eval`` evaluates a checkpoint (its flags, one field each).

    ``config_path`` / ``overrides``: the model's config (see :func:`config_from_checkpoint`);
    ``device``: a torch device name or ``auto``; ``data`` / ``data_path``: ``synthetic`` or a
    data set kind and its folder; ``n_train`` / ``n_test``: images per split (default 5000 /
    1000, capped by the data set); ``limit_samples``: keep only the first N training images;
    ``batch_size`` / ``num_workers``: the feature extraction's loader; ``seed``: the random-init
    model and the linear probe; ``progress``: receives one-line messages (None: silent); ``sync``: the
    device's backend's ``synchronize`` for the forward timings (None: the built-in backend's).
    """

    config_path: str | Path | None = None
    overrides: Mapping[str, Any] | None = None
    device: str | torch.device = "cpu"
    data: str = "synthetic"
    data_path: str | Path | None = None
    n_train: int | None = None
    n_test: int | None = None
    batch_size: int = 64
    seed: int = 0
    progress: Progress | None = None
    num_workers: int = 0
    limit_samples: int | None = None
    sync: Callable[[], None] | None = None


@dataclass
class _Loaded:
    """The checkpoint's model, its config and where the config came from."""

    model: HJEPA
    values: dict[str, Any]
    config_source: str
    meta: dict[str, Any]


@dataclass
class _Splits:
    """The train and test splits the features are computed on."""

    train: Any
    test: Any
    num_classes: int | None
    image_size: int
    data_seed: int
    path: str | None


@dataclass
class _Features:
    """Per model (trained, random init), per level, the features of each split, and the labels."""

    train: list[list[np.ndarray]]
    train_y: np.ndarray
    test: list[list[np.ndarray]]
    test_y: np.ndarray


def _check_settings(s: EvalSettings) -> None:
    """One sentence for a batch size or an image count below its minimum."""
    if s.batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {s.batch_size}.")
    for name, n in (("n_train", s.n_train), ("n_test", s.n_test), ("limit_samples", s.limit_samples)):
        if n is not None and n < (1 if name == "n_test" else 2):
            raise UserError(f"{name} must be at least {1 if name == 'n_test' else 2}, got {n}.")


def _load_checkpoint(checkpoint: str | Path, s: EvalSettings, notes: list[str],
                     timings: dict[str, float]) -> _Loaded:
    """The checkpoint's state dict loaded into the model its config builds."""
    t = time.perf_counter()
    state_dict, meta = load_state_dict(checkpoint)
    values, config_source, config_notes = _resolve(meta, s.config_path, s.overrides)
    notes += list(meta.get("notes", [])) + config_notes
    model = load_model(values, state_dict)
    del state_dict
    timings["load_s"] = time.perf_counter() - t
    return _Loaded(model, values, config_source, meta)


def _random_init(values: Mapping[str, Any], seed: int, timings: dict[str, float]) -> HJEPA:
    """``HJEPA.from_config(values)`` under ``torch.manual_seed(seed)``, the global RNG state restored."""
    t = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_model = HJEPA.from_config(values)
    timings["random_init_s"] = time.perf_counter() - t
    return random_model


def _splits(values: Mapping[str, Any], s: EvalSettings, notes: list[str], timings: dict[str, float]) -> _Splits:
    """The first ``n_train`` / ``n_test`` images of each split with the eval transform (notes say
    where a split was cut or had fewer)."""
    t = time.perf_counter()
    image_size = int(values["data"]["image_size"])
    transform = build_eval_transform(image_size)
    want_train = DEFAULT_N_TRAIN if s.n_train is None else int(s.n_train)
    want_test = DEFAULT_N_TEST if s.n_test is None else int(s.n_test)
    if s.limit_samples is not None and want_train > int(s.limit_samples):
        notes.append(f"--limit-samples {s.limit_samples}: the training split is its first {s.limit_samples} images, "
                     f"so n_train is {s.limit_samples} (asked for {want_train})")
        want_train = int(s.limit_samples)
    data_seed = int(values["seed"])
    path = None if s.data_path is None else str(s.data_path)
    if s.data == "synthetic":
        train_ds = build_dataset("synthetic", train=True, size=want_train, seed=data_seed, transform=transform)
        test_ds = build_dataset("synthetic", train=False, size=want_test, seed=data_seed, transform=transform)
    else:
        train_ds = build_dataset(s.data, path=path, train=True, transform=transform, limit=want_train)
        test_ds = build_dataset(s.data, path=path, train=False, transform=transform, limit=want_test)
    for split, ds, want in (("train", train_ds, want_train), ("test", test_ds, want_test)):
        if len(ds) < want:
            notes.append(f"the {split} split has only {len(ds)} images (asked for {want}): all of them were used")
    num_classes = len(getattr(train_ds, "classes", [])) or None
    timings["data_setup_s"] = time.perf_counter() - t
    return _Splits(train_ds, test_ds, num_classes, image_size, data_seed, path)


def _features(models: Sequence[HJEPA], splits: _Splits, s: EvalSettings, dev: torch.device,
              timings: dict[str, float]) -> _Features:
    """Both splits embedded by every model (synced timings of data wait and forward)."""
    sync = s.sync or _backend_sync(dev)
    t = time.perf_counter()
    train_feats, train_y, d1, f1 = _extract(models, splits.train, s.batch_size, dev, s.num_workers, sync, s.progress,
                                            "train")
    test_feats, test_y, d2, f2 = _extract(models, splits.test, s.batch_size, dev, s.num_workers, sync, s.progress,
                                          "test")
    timings["extract_s"] = time.perf_counter() - t
    timings["extract_data_s"] = d1 + d2
    timings["extract_forward_s"] = f1 + f2
    return _Features(train_feats, train_y, test_feats, test_y)


def _check_labels(feats: _Features, embed_dim: int, notes: list[str]) -> None:
    """One sentence for a single-class train split; notes for too few train images for kNN or RankMe."""
    train_y = feats.train_y
    if len(np.unique(train_y)) < 2:
        raise UserError(f"the {len(train_y)} train images hold a single class; use more train images (--n-train).")
    if len(train_y) < KNN_K:
        notes.append(f"only {len(train_y)} train images: kNN used k={len(train_y)} instead of {KNN_K}")
    if len(train_y) < 4 * embed_dim:
        notes.append(f"n_train = {len(train_y)} < 4D = {4 * embed_dim}: RankMe is biased low; compare RankMe only at "
                     "the same n_train")


def _score_level(level: int, feats: _Features, num_classes: int, n_patches: int, seed: int,
                 score_t: dict[str, float], notes: list[str]) -> dict[str, Any]:
    """One hierarchy level: both models scored, and the trained model's gain over the random init."""
    entry: dict[str, Any] = {"level": level, "dim": int(feats.train[0][level].shape[1]),
                             "features": "mean of the patch tokens" if level == 0 else
                             (f"hierarchy_projections[{level}] on the patch tokens, avg-pool "
                              f"k={min(2 ** level, n_patches)}, mean")}
    for name, mi in (("trained", 0), ("random_init", 1)):
        entry[name] = _score(feats.train[mi][level], feats.train_y, feats.test[mi][level], feats.test_y, num_classes,
                             seed, score_t)
    tr, rn = entry["trained"], entry["random_init"]
    entry["gain"] = {
        "knn_top1": tr["knn_top1"] - rn["knn_top1"],
        "linear_top1": tr["linear_top1"] - rn["linear_top1"],
        "rankme_ratio": _ratio(tr["feature_quality"]["rankme_centred"], rn["feature_quality"]["rankme_centred"]),
    }
    for name in ("trained", "random_init"):
        if not entry[name]["linear_converged"]:
            notes.append(f"level {level} {name}: the logistic regression did not converge in "
                         f"{LINEAR_MAX_ITER} iterations")
    return entry


def _score_levels(n_levels: int, feats: _Features, num_classes: int, n_patches: int, seed: int, say: Progress,
                  notes: list[str], timings: dict[str, float]) -> list[dict[str, Any]]:
    """Every level scored (feature quality, kNN, linear probe), one progress line each."""
    say("scoring features (feature quality, kNN, linear probe)")
    score_t = {"quality": 0.0, "knn": 0.0, "linear": 0.0}
    levels = []
    for level in range(n_levels):
        entry = _score_level(level, feats, num_classes, n_patches, seed, score_t, notes)
        levels.append(entry)
        tr, rn = entry["trained"], entry["random_init"]
        say(f"level {level}: kNN {tr['knn_top1']:.3f} (random {rn['knn_top1']:.3f}), "
            f"linear {tr['linear_top1']:.3f} (random {rn['linear_top1']:.3f})")
    timings["feature_quality_s"] = score_t["quality"]
    timings["knn_s"] = score_t["knn"]
    timings["linear_s"] = score_t["linear"]
    return levels


def _model_entry(loaded: _Loaded, image_size: int, n_patches: int, seed: int) -> dict[str, Any]:
    """The result's ``model``: what was built and evaluated."""
    m, model = loaded.values["model"], loaded.model
    return {
        "encoder_type": m["encoder_type"], "embed_dim": model.embed_dim,
        "encoder_depth": int(m.get("encoder_depth", 12)),
        "image_size": image_size, "num_patches": n_patches, "num_hierarchies": int(m["num_hierarchies"]),
        "predictor_depth": int(m["predictor"]["depth"]), "params": model.param_counts(),
        "evaluated_encoder": "target_encoder (EMA)", "random_init_seed": seed,
    }


def _data_entry(s: EvalSettings, splits: _Splits, feats: _Features, num_classes: int) -> dict[str, Any]:
    """The result's ``data``: the splits as used."""
    image_size = splits.image_size
    return {
        "kind": s.data, "path": splits.path, "n_train": int(len(feats.train_y)), "n_test": int(len(feats.test_y)),
        "train_split_size": int(getattr(splits.train, "full_size", len(splits.train))),
        "test_split_size": int(getattr(splits.test, "full_size", len(splits.test))),
        "limit_samples": None if s.limit_samples is None else int(s.limit_samples),
        "image_size": image_size, "num_classes": int(num_classes), "chance_top1": 1.0 / int(num_classes),
        "synthetic_seed": splits.data_seed if s.data == "synthetic" else None,
        "transform": f"bicubic resize to {image_size + 32}, centre crop {image_size}, ImageNet normalisation",
    }


def evaluate_checkpoint(checkpoint: str | Path, settings: EvalSettings = EvalSettings()) -> dict[str, Any]:
    """Evaluate the EMA target encoder of ``checkpoint`` against the same
    architecture at random initialisation (module docstring); a JSON-serialisable dict.

    ``settings.n_train`` / ``n_test`` default to 5000 / 1000 images, capped by the data set
    (the first images of each split).  ``limit_samples`` (``--limit-samples``, as in
    ``run`` and ``validate``) keeps only the first N images of the training split, so
    ``n_train`` is at most N; the test split is not cut by it.  Synthetic data use the config's ``seed``
    (the class patterns the training run saw), with the train and test splits of
    :class:`hjepa_bench.hjepa.data.SyntheticCIFAR`.  ``seed`` seeds the random-init
    model and the linear probe.  ``progress`` (optional) receives one-line messages.
    """
    s = settings
    t_start = time.perf_counter()
    say = s.progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    notes: list[str] = []
    _check_settings(s)
    dev = _device(s.device)
    loaded = _load_checkpoint(checkpoint, s, notes, timings)
    say(f"loaded {checkpoint} ({loaded.meta['format']}, config: {loaded.config_source})")
    model = loaded.model
    random_model = _random_init(loaded.values, s.seed, timings)
    model.to(dev).eval()
    random_model.to(dev).eval()
    splits = _splits(loaded.values, s, notes, timings)
    feats = _features([model, random_model], splits, s, dev, timings)
    num_classes = splits.num_classes
    if num_classes is None:
        num_classes = int(max(feats.train_y.max(), feats.test_y.max())) + 1
    _check_labels(feats, model.embed_dim, notes)
    n_patches = (splits.image_size // PATCH_SIZE) ** 2
    levels = _score_levels(len(model.hierarchy_projections), feats, num_classes, n_patches, s.seed, say, notes,
                           timings)
    timings["total_s"] = time.perf_counter() - t_start
    out = {
        "checkpoint": str(checkpoint),
        "checkpoint_format": loaded.meta["format"],
        "epoch": loaded.meta.get("epoch"),
        "config_source": loaded.config_source,
        "model": _model_entry(loaded, splits.image_size, n_patches, s.seed),
        "data": _data_entry(s, splits, feats, num_classes),
        "device": str(dev),
        "levels": levels,
        "protocol": {"features": FEATURES_PROTOCOL, "feature_quality": QUALITY_PROTOCOL, "knn": KNN_PROTOCOL,
                     "linear": LINEAR_PROTOCOL, "gain": GAIN_PROTOCOL},
        "timings_s": timings,
        "notes": notes,
    }
    out["caveats"] = comparison_caveats(out)
    return out


__all__ = [
    "DEFAULT_N_TEST",
    "DEFAULT_N_TRAIN",
    "EvalSettings",
    "config_from_checkpoint",
    "evaluate_checkpoint",
    "infer_architecture",
    "load_model",
]
