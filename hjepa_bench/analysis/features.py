"""Collapse and quality metrics of an embedding matrix (docs/verdicts.md,
"Collapse and quality metrics").  Pure functions: an (N, D) array in, a
JSON-serialisable dict out; everything is computed on the CPU in float64
(numpy, and torch's CPU LAPACK for the singular values).

Definitions (Z is the N x D feature matrix, one row per image):

* ``rankme`` (Garrido et al., ICML 2023): singular values s of Z, uncentred and
  not squared; p = s / sum(s) + 1e-7; RankMe = exp(-sum p log p), between 1
  (complete collapse) and min(N, D).  Unstable below N = 4D.
* ``rankme_centred``: the same on Z - mean(Z).  A shared offset (ViT features
  carry one) lowers the uncentred value without any collapse, so both are kept.
* ``std_mean`` / ``std_below_floor_frac``: VICReg's per-dimension std
  sqrt(var + eps) on the L2-normalised rows (scale-free).  A healthy value is
  ~1/sqrt(D) (``std_mean_rel`` = std_mean * sqrt(D) ~ 1).  VICReg's eps 1e-4 is
  meant for features of unit per-dimension scale; on L2-normalised rows the
  per-dimension scale is 1/sqrt(D), so eps = 1e-4 / D here (the same term as
  VICReg's on rows rescaled to norm sqrt(D), divided by sqrt(D)).  With the
  unscaled 1e-4 the std could never fall below 0.01, above the floor for D >= 100.
  Floor: ``STD_FLOOR_REL`` / sqrt(D), i.e. 10% of the healthy value.
* ``mean_cosine``: mean cosine similarity over pairs i != j of the
  L2-normalised rows, from the norm of their mean vector (O(ND)):
  (N^2 ||mean||^2 - sum_i ||x_i||^2) / (N (N - 1)).  0 isotropic, 1 collapsed.
* ``uniformity`` (Wang & Isola 2020): log mean exp(-2 ||x - y||^2) over pairs
  i < j of L2-normalised rows, on a seeded subsample of at most
  ``UNIFORMITY_MAX_ROWS`` rows.  0 = collapse, about -4 = uniform in high D.
* ``spread_frac``: mean ||x_i - mean||^2 of the L2-normalised rows, the share of
  their (unit) second moment that differs between samples (~ 1 - mean_cosine).

Collapse flags (the validation guide's red flags, thresholds in ``thresholds``):

* ``low_rank``: effective rank < ``LOW_RANK_FRAC`` * D.  The effective rank is the
  centred RankMe, except when the samples barely differ (``spread_frac`` <
  ``MIN_SPREAD_FRAC``): the centred spectrum is then only the shape of the
  residual noise around one shared vector (RankMe is scale-free, so tiny
  isotropic noise looks full-rank) and the uncentred RankMe is used instead.
  ``effective_rank_source`` says which one.
* ``low_variance``: more than ``LOW_VARIANCE_DIM_FRAC`` of the dimensions have a
  std below the floor.
* ``all_alike``: ``mean_cosine`` > ``ALL_ALIKE_COSINE``.
* ``collapsed``: any of the above.

:func:`judge_features` decides whether the flags are judged: features measured
after fewer than ``MIN_QUALITY_STEPS`` (the thresholds' ``min_quality_steps``)
training steps come from a model close to its random initialisation, which looks
collapsed (low rank, all alike) without anything being wrong; they are shown as
"untrained: N steps, not judged" and never fail a criterion or block an option.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..thresholds import DEFAULTS as _TH  # the one place thresholds live

#: RankMe's additive constant on the normalised singular values (Garrido et al.)
RANKME_EPS = 1e-7
#: VICReg's variance eps, for features of unit per-dimension scale (scaled by 1/D here)
VICREG_EPS = 1e-4
#: std floor as a fraction of the healthy per-dimension std 1/sqrt(D) of L2-normalised rows
STD_FLOOR_REL = 0.1
#: low_variance when more than this share of dimensions is below the std floor
LOW_VARIANCE_DIM_FRAC = 0.5
#: low_rank when the effective rank is below this share of D
LOW_RANK_FRAC = _TH.low_rank_frac
#: collapse flags are judged only from a model trained for at least this many steps
MIN_QUALITY_STEPS = _TH.min_quality_steps
#: all_alike when the mean pairwise cosine similarity is above this
ALL_ALIKE_COSINE = 0.9
#: below this spread the centred RankMe measures noise; the uncentred one is used
MIN_SPREAD_FRAC = 0.01
#: RankMe needs N >= this * D to be stable
MIN_N_OVER_D = 4
#: uniformity is O(n^2 D): computed on at most this many rows
UNIFORMITY_MAX_ROWS = 2000
#: seed of the uniformity subsample (deterministic)
UNIFORMITY_SEED = 0
#: Wang & Isola's temperature t in log E exp(-t ||x - y||^2)
UNIFORMITY_T = 2.0

_NORM_EPS = 1e-12


def _float(x: Any) -> float | None:
    """A Python float, or None for NaN/Inf (JSON has neither)."""
    v = float(x)
    return v + 0.0 if math.isfinite(v) else None  # + 0.0: no -0.0


def as_float64(z: Any) -> np.ndarray:
    """``z`` (numpy array, nested lists or a CPU torch tensor) as a float64 (N, D) array."""
    if hasattr(z, "detach"):  # torch tensor, without importing torch here
        z = z.detach().cpu().double().numpy()
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, D) array, got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"features need at least 2 rows and 1 column, got shape {arr.shape}")
    return arr


def rankme(z: np.ndarray) -> float:
    """RankMe of ``z`` as given (not centred): exp of the entropy of s / sum(s) + 1e-7."""
    # torch's LAPACK SVD on the CPU (several times faster than numpy's here), float64
    s = torch.linalg.svdvals(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))).numpy()
    total = float(s.sum())
    p = (s / total if total > 0 else np.zeros_like(s)) + RANKME_EPS
    return float(np.exp(-np.sum(p * np.log(p))))


def l2_normalise(z: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    normalised: np.ndarray = z / np.maximum(norms, _NORM_EPS)
    return normalised


def mean_cosine(zn: np.ndarray) -> float:
    """Mean cosine similarity over pairs i != j of L2-normalised rows ``zn``, in O(ND)."""
    n: int = zn.shape[0]
    mean = zn.mean(axis=0)
    all_pairs = n * n * float(mean @ mean)  # sum over i, j of <x_i, x_j>
    diagonal = float(np.sum(zn * zn))
    return (all_pairs - diagonal) / (n * (n - 1))


def uniformity(zn: np.ndarray, max_rows: int = UNIFORMITY_MAX_ROWS, seed: int = UNIFORMITY_SEED,
               t: float = UNIFORMITY_T) -> float:
    """Wang & Isola's log mean exp(-t ||x - y||^2) over pairs i < j of L2-normalised rows
    (a seeded subsample of ``max_rows`` rows when there are more)."""
    n = zn.shape[0]
    if n > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
        zn = zn[idx]
        n = max_rows
    sq = np.sum(zn * zn, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (zn @ zn.T), 0.0)
    iu = np.triu_indices(n, k=1)
    a = -t * d2[iu]
    top = float(a.max())
    return top + math.log(float(np.mean(np.exp(a - top)))) + 0.0  # log-mean-exp, stable; no -0.0


def collapse_flags(effective_rank: float, d: int, std_below_floor_frac: float, mean_cosine: float,
                   low_rank_frac: float = LOW_RANK_FRAC) -> dict[str, bool]:
    """The validation guide's red flags (module docstring) and ``collapsed`` = any of them."""
    flags = {
        "low_rank": bool(effective_rank < low_rank_frac * d),
        "low_variance": bool(std_below_floor_frac > LOW_VARIANCE_DIM_FRAC),
        "all_alike": bool(mean_cosine > ALL_ALIKE_COSINE),
    }
    flags["collapsed"] = any(flags.values())
    return flags


def judge_features(entry: dict[str, Any], low_rank_frac: float = LOW_RANK_FRAC,
                   min_quality_steps: int = MIN_QUALITY_STEPS) -> dict[str, Any]:
    """The collapse flags of a :func:`feature_quality` entry against ``low_rank_frac``, and
    whether they are judged at all (in place, and returned): features measured after fewer than
    ``min_quality_steps`` training steps (``steps_trained``) are those of a model close to its
    random initialisation, so ``quality_judged`` is False and ``quality_note`` says "untrained:
    N steps, not judged".  The probe calls it with the defaults; a report calls it again with its
    own thresholds."""
    eff, d = entry.get("effective_rank"), entry.get("d")
    below, cos = entry.get("std_below_floor_frac"), entry.get("mean_cosine")
    if eff is not None and d is not None and below is not None and cos is not None:
        entry["collapse"] = collapse_flags(float(eff), int(d), float(below), float(cos), low_rank_frac)
        entry["thresholds"] = {**(entry.get("thresholds") or {}), "low_rank_frac": low_rank_frac}
    steps = entry.get("steps_trained")
    judged = steps is None or int(steps) >= min_quality_steps
    entry["quality_judged"] = judged
    entry["quality_note"] = None if steps is None or judged else (
        f"untrained: {int(steps)} steps, not judged (collapse flags count from {min_quality_steps} training steps)")
    entry.setdefault("thresholds", {})["min_quality_steps"] = min_quality_steps
    return entry


def feature_quality(z: Any) -> dict[str, Any]:
    """Collapse and quality metrics of the (N, D) feature matrix ``z`` (see module docstring)."""
    arr = as_float64(z)
    n, d = arr.shape
    std_floor = STD_FLOOR_REL / math.sqrt(d)
    thresholds = {
        "low_rank_frac": LOW_RANK_FRAC,
        "std_floor": std_floor,
        "std_floor_rel": STD_FLOOR_REL,
        "std_eps": VICREG_EPS / d,
        "low_variance_dim_frac": LOW_VARIANCE_DIM_FRAC,
        "all_alike_cosine": ALL_ALIKE_COSINE,
        "min_spread_frac": MIN_SPREAD_FRAC,
        "min_n_over_d": MIN_N_OVER_D,
        "uniformity_max_rows": UNIFORMITY_MAX_ROWS,
    }
    out: dict[str, Any] = {"n": int(n), "d": int(d), "n_over_d": n / d, "thresholds": thresholds}
    warnings: list[str] = []
    if n < MIN_N_OVER_D * d:
        warnings.append(f"N = {n} < {MIN_N_OVER_D}D = {MIN_N_OVER_D * d}: RankMe is unreliable (biased low); "
                        "compare RankMe only between runs with the same N")
    bad_rows = int(np.sum(~np.isfinite(arr).all(axis=1)))
    if bad_rows:
        warnings.append(f"{bad_rows} of {n} feature rows contain NaN or Inf: no metrics")
        out.update({"finite": False, "rankme": None, "rankme_centred": None, "rankme_ratio": None,
                    "rankme_centred_ratio": None, "std_mean": None, "std_mean_rel": None,
                    "std_below_floor_frac": None, "mean_cosine": None, "uniformity": None,
                    "spread_frac": None, "effective_rank": None, "effective_rank_source": None,
                    "collapse": {"low_rank": None, "low_variance": None, "all_alike": None, "collapsed": None},
                    "warnings": warnings})
        return out

    rm = rankme(arr)
    rm_c = rankme(arr - arr.mean(axis=0, keepdims=True))
    zn = l2_normalise(arr)
    std = np.sqrt(zn.var(axis=0) + VICREG_EPS / d)
    below = float(np.mean(std < std_floor))
    cos = mean_cosine(zn)
    centre = zn.mean(axis=0)
    spread = float(np.mean(np.sum((zn - centre) ** 2, axis=1)))
    unif = uniformity(zn)
    if spread < MIN_SPREAD_FRAC:
        eff, source = rm, "uncentred (spread_frac below min_spread_frac: centred spectrum is noise)"
    else:
        eff, source = rm_c, "centred"
    flags = collapse_flags(eff, d, below, cos)
    out.update({
        "finite": True,
        "rankme": _float(rm),
        "rankme_centred": _float(rm_c),
        "rankme_ratio": _float(rm / d),
        "rankme_centred_ratio": _float(rm_c / d),
        "std_mean": _float(std.mean()),
        "std_mean_rel": _float(std.mean() * math.sqrt(d)),
        "std_below_floor_frac": below,
        "mean_cosine": _float(cos),
        "uniformity": _float(unif),
        "spread_frac": _float(spread),
        "effective_rank": _float(eff),
        "effective_rank_source": source,
        "collapse": flags,
        "warnings": warnings,
    })
    return out


__all__ = [
    "ALL_ALIKE_COSINE",
    "LOW_RANK_FRAC",
    "LOW_VARIANCE_DIM_FRAC",
    "MIN_N_OVER_D",
    "MIN_SPREAD_FRAC",
    "RANKME_EPS",
    "STD_FLOOR_REL",
    "UNIFORMITY_MAX_ROWS",
    "UNIFORMITY_SEED",
    "VICREG_EPS",
    "as_float64",
    "collapse_flags",
    "feature_quality",
    "judge_features",
    "l2_normalise",
    "mean_cosine",
    "rankme",
    "uniformity",
]
