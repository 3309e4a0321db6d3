"""H-JEPA checkpoints, written and read back, in one place.

* :func:`checkpoint_state` / :func:`save_checkpoint`: the upstream checkpoint layout (``epoch``,
  ``model_state_dict``, ``optimizer_state_dict``, ``scaler_state_dict``), written with ``torch.save``
  into a file that is flushed and fsynced (and, ``atomic``, renamed into place).  The validation run
  and the ``epoch_costs`` probe write through here.
* :func:`load_state_dict`: a checkpoint read back safely (``weights_only=True``, tensors, plain
  containers and numpy scalars only) as ``(state_dict, meta)``, every failure one sentence
  (:class:`~hjepa_bench.errors.UserError`).  ``hjepa-bench eval`` reads through here.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError, first_line, input_file
from .step import HJEPAStep


# --------------------------------------------------------------------------- saving
def checkpoint_state(trainer: HJEPAStep, epoch: int, **extra: Any) -> dict[str, Any]:
    """The upstream checkpoint layout of ``trainer`` (plus ``extra`` top-level entries)."""
    return {"epoch": epoch, "model_state_dict": trainer.model.state_dict(),
            "optimizer_state_dict": trainer.optimizer.state_dict(),
            "scaler_state_dict": trainer.scaler.state_dict() if trainer.scaler is not None else None, **extra}


def save_checkpoint(state: Mapping[str, Any], path: str | Path, *, atomic: bool = True) -> None:
    """``torch.save`` into ``path``, flushed and fsynced; ``atomic``: into a temp file renamed into place,
    so a crash leaves the old checkpoint or the new one, never half of one."""
    path = Path(path)
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if atomic else path
    try:
        with open(target, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if atomic:
            os.replace(target, path)
    except BaseException:
        if atomic:
            target.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- loading
def _first_line(exc: BaseException) -> str:
    """The exception's first line without its full stop (its type when it says nothing): a
    sentence of ours goes on after it."""
    return first_line(exc).rstrip(".") or type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _json_scalar(v: Any) -> Any:
    """``v`` if it is a JSON scalar (numpy/torch scalars converted), else None."""
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (np.generic,)) and np.ndim(v) == 0:
        return _json_scalar(v.item())
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return _json_scalar(v.item())
    return None


def _numpy_scalar_globals() -> list[Any]:
    """The only globals a checkpoint may use beyond tensors and plain containers: numpy
    scalars and their dtypes (e.g. an upstream ``best_val_loss`` saved as ``np.float64``).
    Rebuilding them runs no code from the file."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = getattr(np, "dtypes", None)
    classes = [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes is not None else []
    return [scalar, np.dtype, *classes]


def _read_weights_only(p: Path) -> Any:
    """``torch.load(p, map_location="cpu", weights_only=True)`` (numpy scalars allowed); every
    failure becomes one sentence."""
    try:
        safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before, no extras
        # torch's own warnings (a pickle protocol it did not write) and its advice to retry with
        # weights_only=False are not ours to pass on: a failure below is one sentence of ours
        with warnings.catch_warnings(), \
                (safe(_numpy_scalar_globals()) if safe is not None else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if blocked or "GLOBAL" in str(exc):
            what = blocked.group(1) if blocked else "a Python global"
            raise UserError(f"checkpoint {p} holds Python objects beyond tensors ({what}), and loading them "
                            "could run code from the file; hjepa-bench loads only tensors, plain containers and "
                            "numpy scalars, so re-save it with only those (e.g. torch.save({'model_state_dict': "
                            "model.state_dict(), 'epoch': epoch}, path) in the environment that wrote it).") from None
        if "Weights only load failed" in str(exc):  # a pickle torch's safe loader cannot read
            raise UserError(f"checkpoint {p} is a pickle file that the safe loader cannot read (not a torch.save "
                            "file of tensors); hjepa-bench never unpickles arbitrary objects, since that could run "
                            "code from the file, so re-save it with torch.save({'model_state_dict': "
                            "model.state_dict()}, path).") from None
        raise UserError(f"cannot read checkpoint {p} ({type(exc).__name__}: {_first_line(exc)}); "
                        "the file is corrupt or not a PyTorch checkpoint.") from None


def _wrapped_state_dict(obj: Mapping[str, Any], p: Path, meta: dict[str, Any]) -> Any:
    """The ``model_state_dict`` of an upstream-style checkpoint; its other top-level entries go into
    ``meta`` (``epoch``, ``config``, the other scalars under ``extra``)."""
    sd = obj["model_state_dict"]
    meta["format"] = "model_state_dict"
    meta["top_level_keys"] = [str(k) for k in obj]
    if "epoch" in obj:
        meta["epoch"] = _json_scalar(obj["epoch"])
    if obj.get("config") is not None:
        meta["config"] = copy.deepcopy(obj["config"])  # checked when it is used (measure.evaluate)
    extra = {str(k): _json_scalar(v) for k, v in obj.items()
             if k not in ("model_state_dict", "epoch", "config") and _json_scalar(v) is not None}
    if extra:
        meta["extra"] = extra
    if not _is_state_dict(sd):
        what = "empty" if isinstance(sd, Mapping) and not sd else (
            "not a mapping of names to tensors" if not isinstance(sd, Mapping) else
            "a mapping that holds values other than tensors")
        raise UserError(f"checkpoint {p} has a model_state_dict that is {what}.")
    return sd


def _model_state_dict(obj: Any, p: Path, meta: dict[str, Any]) -> Any:
    """The model's state dict in what ``torch.load`` returned (a dict with ``model_state_dict``, or a
    bare state dict); ``meta`` learns the format."""
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        return _wrapped_state_dict(obj, p, meta)
    if _is_state_dict(obj):
        meta["format"] = "bare state dict"
        meta["top_level_keys"] = []
        return obj
    if isinstance(obj, Mapping):
        keys = ", ".join(str(k) for k in list(obj.keys())[:8]) or "none"
        raise UserError(f"checkpoint {p} has no model_state_dict and is not a state dict of tensors "
                        f"(top-level keys: {keys}).")
    raise UserError(f"checkpoint {p} holds a {type(obj).__name__}, not a dict with model_state_dict "
                    "or a state dict of tensors.")


def _finite_unwrapped(sd: Mapping[str, torch.Tensor], p: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """``sd`` as a dict, refused when a weight is NaN or inf, without a ``module.`` prefix (DDP) on
    every key."""
    sd = dict(sd)
    bad = [k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 1} other tensor{'s' if len(bad) > 2 else ''}" if len(bad) > 1 else ""
        raise UserError(f"checkpoint {p} holds non-finite weights (NaN or inf in {bad[0]}{more}): the run that "
                        "saved it diverged; evaluate a checkpoint saved before the divergence.")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        notes.append("the 'module.' prefix (DistributedDataParallel) was removed from every key")
    return sd


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint: ``(state_dict, meta)``.

    Always ``torch.load(map_location="cpu", weights_only=True)``: tensors, plain
    containers and numpy scalars only.  A checkpoint that needs any other Python
    global is refused with a :class:`UserError` naming it; it is never loaded with
    ``weights_only=False``, because unpickling such a file can run arbitrary code.

    Accepts a dict with ``model_state_dict`` (upstream; also the checkpoints
    ``hjepa-bench validate`` writes, which may carry ``config`` and ``epoch``) or a
    bare state dict (str -> tensor).  A ``module.`` prefix on every key (DDP) is
    removed.  ``meta``: ``format``, ``top_level_keys``, ``epoch`` and ``config``
    when present, the other top-level scalars under ``extra``, ``weights_only``
    (always true) and ``notes``.  Raises :class:`UserError` for a missing file, a
    file that is not a (readable) torch file, a file that needs other globals, and a
    file with no model state dict.
    """
    p = input_file(Path(path).expanduser(), "checkpoint")
    notes: list[str] = []
    obj = _read_weights_only(p)
    meta: dict[str, Any] = {"weights_only": True, "notes": notes, "path": str(p)}
    sd = _model_state_dict(obj, p, meta)
    return _finite_unwrapped(sd, p, notes), meta


__all__ = ["checkpoint_state", "load_state_dict", "save_checkpoint"]
