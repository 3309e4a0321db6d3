"""Classifiers on frozen features (docs/verdicts.md, "Quick evaluation of an encoder"): DINO's
weighted kNN and a linear probe.  Pure: arrays in, accuracies out, on the CPU in float64."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

#: DINO's kNN protocol
KNN_K = 20
KNN_TEMPERATURE = 0.07
#: logistic regression iterations (lbfgs); convergence is recorded
LINEAR_MAX_ITER = 5000
#: test rows per similarity block in the kNN (memory: block x n_train float64)
KNN_CHUNK = 1024

KNN_PROTOCOL = (f"k={KNN_K}, T={KNN_TEMPERATURE}, cosine on L2-normalised features; "
                "votes weighted exp(sim / T), ties to the lowest class index")
LINEAR_PROTOCOL = ("scikit-learn LogisticRegression (lbfgs, multinomial, C=1.0, no C sweep, "
                   f"max_iter={LINEAR_MAX_ITER}) on standardised frozen features (StandardScaler "
                   "fitted on the train split), top-1 accuracy on the test split")


def _as_numpy(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_split(z: np.ndarray, y: np.ndarray, name: str) -> None:
    if z.ndim != 2:
        raise ValueError(f"{name} features must be 2-D (N, D), got shape {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"{name} labels must have shape ({z.shape[0]},), got {y.shape}")
    if z.shape[0] < 1:
        raise ValueError(f"{name} split is empty")


def knn_predict(train_z: Any, train_y: Any, test_z: Any, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
                num_classes: int | None = None) -> np.ndarray:
    """Predicted class of every test row by DINO's weighted kNN (see :func:`knn_accuracy`)."""
    tr = _as_numpy(train_z, np.float64)
    te = _as_numpy(test_z, np.float64)
    ty = _as_numpy(train_y, np.int64)
    _check_split(tr, ty, "train")
    if te.ndim != 2 or te.shape[1] != tr.shape[1]:
        raise ValueError(f"test features must be (M, {tr.shape[1]}), got shape {te.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if ty.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    c = int(num_classes) if num_classes is not None else int(ty.max()) + 1
    k = max(1, min(int(k), tr.shape[0]))
    trn = torch.nn.functional.normalize(torch.from_numpy(tr), dim=1)
    ten = torch.nn.functional.normalize(torch.from_numpy(te), dim=1)
    labels = torch.from_numpy(ty)
    preds = []
    for start in range(0, ten.shape[0], KNN_CHUNK):
        sim = ten[start:start + KNN_CHUNK] @ trn.T  # (b, n_train) cosine similarity
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], c, dtype=torch.float64)
        votes.scatter_add_(1, labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))  # first maximum: ties go to the lowest class index
    return torch.cat(preds).numpy()


def knn_accuracy(train_z: Any, train_y: Any, test_z: Any, test_y: Any, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE, num_classes: int | None = None) -> float:
    """Top-1 accuracy of DINO's weighted kNN classifier: L2-normalised features,
    cosine similarity, the top ``k`` train neighbours (k capped at n_train), each
    voting for its label with weight exp(sim / temperature); float64 on the CPU.
    numpy arrays or torch tensors."""
    yt = _as_numpy(test_y, np.int64)
    pred = knn_predict(train_z, train_y, test_z, k, temperature, num_classes)
    if yt.shape != pred.shape:
        raise ValueError(f"test labels must have shape {pred.shape}, got {yt.shape}")
    return float(np.mean(pred == yt))


def linear_probe(train_z: Any, train_y: Any, test_z: Any, test_y: Any, seed: int = 0,
                 max_iter: int = LINEAR_MAX_ITER) -> dict[str, Any]:
    """Linear probe with details: ``{"top1", "n_iter", "converged"}`` (see :func:`linear_probe_accuracy`)."""
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    tr, te = _as_numpy(train_z, np.float64), _as_numpy(test_z, np.float64)
    ty, yt = _as_numpy(train_y, np.int64), _as_numpy(test_y, np.int64)
    _check_split(tr, ty, "train")
    _check_split(te, yt, "test")
    if len(np.unique(ty)) < 2:
        raise ValueError("the linear probe needs at least two classes in the train split")
    scaler = StandardScaler().fit(tr)
    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    # one BLAS/OpenMP thread: the problem is small, and with threads the fit ran 10-30x slower
    # on a busy 2-core machine here (5000 x 192: 4.4 s vs 0.15 s)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(tr), ty)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    top1 = float(np.mean(clf.predict(scaler.transform(te)) == yt))
    return {"top1": top1, "n_iter": int(np.max(clf.n_iter_)), "converged": converged}


def linear_probe_accuracy(train_z: Any, train_y: Any, test_z: Any, test_y: Any, seed: int = 0) -> float:
    """Top-1 test accuracy of scikit-learn's ``LogisticRegression`` (lbfgs, C = 1,
    max_iter 5000, one thread) on frozen features standardised with a ``StandardScaler``
    fitted on the train split."""
    return float(linear_probe(train_z, train_y, test_z, test_y, seed)["top1"])


# --------------------------------------------------------------------------- when a comparison says nothing
#: a random-init baseline at or above this top-1 is at the ceiling: the test cannot tell encoders apart
BASELINE_CEILING_TOP1 = 0.90
#: the standard CIFAR-10 splits (train, test)
CIFAR10_SPLITS = (50_000, 10_000)


def comparison_caveats(result: dict[str, Any]) -> list[str]:
    """Why an evaluation's trained-vs-random comparison may say nothing, each in one sentence: data that
    are not the data set's standard splits (synthetic images, a CIFAR-10 folder of another size), and a
    random-init baseline at the ceiling (>= ``BASELINE_CEILING_TOP1``) or at or above the trained model."""
    out = []
    data = result.get("data") or {}
    if data.get("kind") == "synthetic":
        out.append("synthetic images, not CIFAR-10: the accuracies are not comparable with CIFAR-10 figures")
    elif data.get("kind") == "cifar10":
        sizes = (data.get("train_split_size"), data.get("test_split_size"))
        if None not in sizes and tuple(sizes) != CIFAR10_SPLITS:
            out.append(f"the data folder's splits hold {sizes[0]:,} train / {sizes[1]:,} test images, not CIFAR-10's "
                       f"standard {CIFAR10_SPLITS[0]:,} / {CIFAR10_SPLITS[1]:,}: not the standard data set, so the "
                       "accuracies are not comparable with published CIFAR-10 figures")
    for entry in result.get("levels") or []:
        tr, rn = entry.get("trained") or {}, entry.get("random_init") or {}
        for key, name in (("knn_top1", "kNN"), ("linear_top1", "linear")):
            r, t = rn.get(key), tr.get(key)
            if r is None or t is None:
                continue
            why = []
            if r >= BASELINE_CEILING_TOP1:
                why.append(f"at the ceiling (>= {BASELINE_CEILING_TOP1:.0%})")
            if r >= t:
                why.append("at or above the trained model's " + f"{t:.1%}")
            if why:
                out.append(f"level {entry.get('level')}: the random-init baseline scores {name} {r:.1%}, "
                           + " and ".join(why) + ": this test cannot tell a trained encoder from an untrained one, "
                           "so its gain says nothing about the training")
    return out
