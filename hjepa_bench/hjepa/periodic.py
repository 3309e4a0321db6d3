"""The upstream trainer's periodic work besides the step: what it does, how often, and what it costs.

The upstream H-JEPA trainer (``HJEPATrainer._train_epoch`` / ``_train_step`` / ``train``) does more
than the training step.  With ``batch_idx`` the index of the batch within its epoch (0 at the
start of every epoch, so the first batch of every epoch triggers all of the periodic ones) and
``log_frequency`` the config's ``logging.log_frequency`` (upstream default 100):

* every step: the loss dictionary's values are read back to the host (``.item()`` of the loss and
  of each level's loss) and accumulated; the learning rate is set in every parameter group;
* ``batch_idx % log_frequency == 0``: the progress bar's postfix with ``loss.item()``;
* ``batch_idx % (5 x log_frequency) == 0``: the scalars (lr, EMA momentum, every loss term) and
  the per-level losses and shares (2 scalars per level) to every enabled logger, and a memory
  reading;
* ``batch_idx % (20 x log_frequency) == 0``: a histogram of every parameter's gradient
  (``add_histogram("gradients/NAME", grad)``) to every enabled logger;
* ``batch_idx % (10 x log_frequency) == 0`` (inside the step, whatever the loggers): the
  collapse metrics (:func:`collapse_metrics`, with two SVDs);
* ``global_step % 50 == 0``: the device allocator's ``empty_cache`` (CUDA, MPS; a CPU has none);
* at every epoch's end: the epoch's scalars (the accumulated loss terms, the train loss, the
  validation loss) to every enabled logger; a checkpoint when ``(epoch + 1) % save_frequency == 0``
  *or* the validation loss improved (a ``torch.save`` plus copies to ``checkpoint_latest.pth``
  and, when best, ``checkpoint_best.pth``);
* every 5 epochs: prediction visualizations and TensorBoard embeddings.  hjepa-bench does not
  model these (they need the upstream model's output dictionary and TensorBoard's projector
  files); the projection leaves them out and says so.

A logger the config disables (``logging.tensorboard.enabled: false``, ``logging.wandb.enabled:
false``) costs nothing.  TensorBoard is measured with the real ``torch.utils.tensorboard``
``SummaryWriter``; Weights & Biases is not installed here and talks to a server, so a config that
enables it gets its costs named as not measured.

:func:`periodic_counts` counts each kind of work for a run (pure); :class:`TrainerLogger` does the
work (the validation run uses it, so its epochs cost what the trainer's do);
:func:`measure_periodic` times each kind once on the run's model and device (the ``epoch_costs``
probe).
"""
from __future__ import annotations

import io
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch

#: upstream defaults (HJEPATrainer / MetricsLogger) for a config without a logging section
DEFAULT_LOG_FREQUENCY = 100
EMPTY_CACHE_EVERY = 50
SCALARS_EVERY = 5  # x log_frequency
HISTOGRAMS_EVERY = 20
COLLAPSE_EVERY = 10
#: rows of the embedding matrices the collapse metrics take their SVD of (upstream: first 100)
COLLAPSE_ROWS = 100
#: timed repeats of each periodic measurement (median)
REPEATS = 3
#: kinds of periodic work, in table order
KINDS = ("readback", "postfix", "scalars", "histograms", "collapse", "empty_cache")


@dataclass(frozen=True)
class LoggingPlan:
    """What of the trainer's periodic work a config asks for."""

    log_frequency: int = DEFAULT_LOG_FREQUENCY
    tensorboard: bool = True
    wandb: bool = False

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> "LoggingPlan":
        """From ``logging.log_frequency``, ``logging.tensorboard.enabled`` and ``logging.wandb.enabled``
        (upstream's defaults where the config has none: 100, true, false)."""
        log = values.get("logging") if isinstance(values.get("logging"), Mapping) else {}
        tb = log.get("tensorboard") if isinstance(log.get("tensorboard"), Mapping) else {}
        wb = log.get("wandb") if isinstance(log.get("wandb"), Mapping) else {}
        freq = log.get("log_frequency")
        return cls(log_frequency=int(freq) if isinstance(freq, int) and not isinstance(freq, bool) and freq >= 1
                   else DEFAULT_LOG_FREQUENCY,
                   tensorboard=bool(tb.get("enabled", True)), wandb=bool(wb.get("enabled", False)))

    @property
    def any_logger(self) -> bool:
        return self.tensorboard or self.wandb

    def events(self, batch_idx: int, global_step: int, empty_cache: bool) -> list[str]:
        """The periodic work the trainer does after the step of ``batch_idx`` (within its epoch) at
        ``global_step`` (the step's index in the run, from 0), besides the every-step read-back."""
        lf, out = self.log_frequency, []
        if batch_idx % (COLLAPSE_EVERY * lf) == 0:  # in the step, before the logging (its values are logged)
            out.append("collapse")
        if batch_idx % lf == 0:
            out.append("postfix")
            if self.any_logger and batch_idx % (SCALARS_EVERY * lf) == 0:
                out.append("scalars")
            if self.any_logger and batch_idx % (HISTOGRAMS_EVERY * lf) == 0:
                out.append("histograms")
        if empty_cache and global_step % EMPTY_CACHE_EVERY == 0:
            out.append("empty_cache")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"log_frequency": self.log_frequency, "tensorboard": self.tensorboard, "wandb": self.wandb}


def has_empty_cache(device_type: str) -> bool:
    """Whether the device has an allocator cache the trainer empties (cuda, mps; not the CPU)."""
    return device_type in ("cuda", "mps")


def _every(n: int, k: int) -> int:
    """How many of 0 .. n-1 are multiples of k."""
    return 0 if n <= 0 else (n - 1) // k + 1


def periodic_counts(plan: LoggingPlan, steps_per_epoch: int, epochs: int, *, levels: int,
                    empty_cache: bool) -> dict[str, int]:
    """How many times a run of ``epochs`` x ``steps_per_epoch`` does each kind of periodic work.

    ``scalar_values``: scalars written (5 x log_frequency events: lr, EMA momentum, the loss and
    one term per level, then 2 per level, and the 6 collapse metrics when the step also computed
    them, every 10 x log_frequency; epoch ends: the loss terms accumulated, the train loss, the
    validation loss); ``memory_reads``: one per scalars event.  Zero for a run whose loggers
    are all disabled."""
    lf, spe = plan.log_frequency, steps_per_epoch
    terms = 1 + levels
    logged = plan.any_logger
    scalar_events = epochs * _every(spe, SCALARS_EVERY * lf) if logged else 0
    return {
        "readback": epochs * spe,
        "postfix": epochs * _every(spe, lf),
        "scalar_events": scalar_events,
        "scalar_values": (scalar_events * (2 + terms + 2 * levels) + epochs * _every(spe, COLLAPSE_EVERY * lf) * 6
                          + epochs * (terms + 2)) if logged else 0,
        "memory_reads": scalar_events,
        "histograms": epochs * _every(spe, HISTOGRAMS_EVERY * lf) if logged else 0,
        "collapse": epochs * _every(spe, COLLAPSE_EVERY * lf),
        "empty_cache": _every(epochs * spe, EMPTY_CACHE_EVERY) if empty_cache else 0,
    }


# --------------------------------------------------------------------------- the work itself
@torch.no_grad()
def collapse_metrics(context: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The upstream trainer's ``_compute_collapse_metrics``: each embedding tensor flattened to
    (B, -1); the std and the mean L2 norm of the rows; the effective rank exp(entropy) of the
    normalised singular values (``torch.svd``) of the first 100 rows; each value read back with
    ``.item()``.  A failing SVD leaves the ranks out, as upstream."""
    c = context.reshape(context.size(0), -1) if context.dim() > 2 else context
    t = target.reshape(target.size(0), -1) if target.dim() > 2 else target
    out = {"context_std": c.std().item(), "target_std": t.std().item(),
           "context_norm": c.norm(dim=1).mean().item(), "target_norm": t.norm(dim=1).mean().item()}
    try:
        for name, x in (("context_rank", c[:COLLAPSE_ROWS]), ("target_rank", t[:COLLAPSE_ROWS])):
            sv = torch.svd(x.float())[1]
            p = sv / sv.sum()
            out[name] = torch.exp(-(p * torch.log(p + 1e-8)).sum()).item()
    except RuntimeError:  # upstream: "SVD can fail, just skip rank computation"
        pass
    return out


def empty_cache(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.empty_cache()
    elif device_type == "mps":
        torch.mps.empty_cache()


class TrainerLogger:
    """The trainer's periodic work on a real ``SummaryWriter`` (``log_dir``; none when TensorBoard
    is disabled).  Each call returns nothing; ``seconds`` accumulates the wall time per kind."""

    def __init__(self, plan: LoggingPlan, log_dir: str | None, backend: Any):
        self.plan = plan
        self.backend = backend
        self.writer = None
        if plan.tensorboard and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=log_dir)
        self.seconds: dict[str, float] = {k: 0.0 for k in (*KINDS, "epoch_scalars")}
        self.counts: dict[str, int] = {k: 0 for k in (*KINDS, "epoch_scalars")}
        self.last_collapse: dict[str, float] = {}

    def _add(self, kind: str, t0: float) -> None:
        self.seconds[kind] += time.perf_counter() - t0
        self.counts[kind] += 1

    def scalars(self, values: Mapping[str, float], step: int, prefix: str) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}{name}", value, step)

    def readback(self, loss: torch.Tensor, levels: list[torch.Tensor], optimizer: Any, lr: float) -> dict[str, float]:
        """Every step: the loss terms to the host and the LR into every parameter group."""
        t0 = time.perf_counter()
        terms = {"loss": loss.detach().float().item()}
        terms.update({f"loss_level_{i}": x.detach().float().item() for i, x in enumerate(levels)})
        for group in optimizer.param_groups:
            group["lr"] = lr
        self._add("readback", t0)
        return terms

    def after_step(self, *, batch_idx: int, global_step: int, model: torch.nn.Module, terms: Mapping[str, float],
                   lr: float, ema: float, features: tuple[torch.Tensor, torch.Tensor] | None, bar: Any = None) -> None:
        """The periodic work after the step of ``batch_idx`` (see :meth:`LoggingPlan.events`)."""
        device_type = next(model.parameters()).device.type
        collapse: dict[str, float] = {}  # this step's collapse metrics join its loss terms (upstream's loss_dict)
        for kind in self.plan.events(batch_idx, global_step, has_empty_cache(device_type)):
            t0 = time.perf_counter()
            if kind == "postfix":
                if bar is not None:
                    bar.set_postfix({"loss": f"{terms['loss']:.4f}", "lr": f"{lr:.2e}"}, refresh=False)
            elif kind == "scalars":
                levels = {k: v for k, v in terms.items() if k.startswith("loss_level_")}
                total = sum(levels.values())
                self.scalars({"lr": lr, "ema_momentum": ema, **terms, **collapse}, global_step, "train/")
                for key, value in levels.items():
                    lvl = key.rsplit("_", 1)[-1]
                    self.scalars({f"level_{lvl}_loss": value,
                                  f"level_{lvl}_percentage": value / total * 100 if total > 0 else 0},
                                 global_step, "train/hierarchy/")
                self.backend.memory()
            elif kind == "histograms":
                if self.writer is not None:
                    for name, p in model.named_parameters():
                        if p.grad is not None:
                            self.writer.add_histogram(f"gradients/{name}", p.grad.detach().cpu().numpy(), global_step)
            elif kind == "collapse":
                if features is not None:
                    collapse = collapse_metrics(*features)
                    self.last_collapse = collapse
            elif kind == "empty_cache":
                empty_cache(device_type)
            self._add(kind, t0)

    def epoch_end(self, terms_mean: Mapping[str, float], train_loss: float | None, val_loss: float | None,
                  step: int) -> None:
        t0 = time.perf_counter()
        self.scalars(dict(terms_mean), step, "train_epoch/")
        if train_loss is not None:
            self.scalars({"loss": train_loss}, step, "train/")
        if val_loss is not None:
            self.scalars({"loss": val_loss}, step, "val/")
        self._add("epoch_scalars", t0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- measuring it
def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _timed(fn: Any, sync: Any, repeats: int) -> list[float]:
    out = []
    for i in range(repeats + 1):  # the first call is untimed (imports, first allocations)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i:
            out.append(time.perf_counter() - t0)
    return out


def measure_periodic(trainer: Any, backend: Any, images: torch.Tensor, masks: Any, plan: LoggingPlan,
                     repeats: int = REPEATS) -> dict[str, Any]:
    """Time each kind of the trainer's periodic work once per call, on the run's model and device.

    One forward of ``trainer.loss`` on ``images`` (untimed) gives the loss terms and the
    embeddings (``trainer.last_features``); the gradients are those the run's last step left
    (``trainer.model``'s ``.grad``), or, before any step, those of one backward of that loss (set
    back to None afterwards; no parameter changes).  Each kind: one untimed call, then the median of ``repeats``
    timed ones, synced with the backend.  ``scalar_s`` is the cost of one ``add_scalar`` (the
    median time of a scalars event divided by its values) into a real ``SummaryWriter`` in a
    temporary folder (measured even when the config disables TensorBoard, so a report can say
    what enabling it would cost; the projection counts it only when enabled)."""
    model = trainer.model
    device_type = next(model.parameters()).device.type
    sync = backend.synchronize
    keep = getattr(trainer, "keep_features", False)
    trainer.keep_features = True
    was_training = model.training
    made_grads = not any(p.grad is not None for p in model.parameters())
    try:
        if made_grads:  # before any step (the validation run's self-check): one backward, no update
            with trainer.autocast():
                loss, levels = trainer.loss(images, masks)
            loss.float().backward()
            loss, levels = loss.detach(), [x.detach() for x in levels]
        else:
            with torch.no_grad(), trainer.autocast():
                loss, levels = trainer.loss(images, masks)
        features = trainer.last_features
    finally:
        trainer.keep_features = keep
        model.train(was_training)
    out: dict[str, Any] = {"plan": plan.as_dict(), "levels": len(levels)}
    log = TrainerLogger(LoggingPlan(plan.log_frequency, tensorboard=False, wandb=False), None, backend)
    out["readback_runs_s"] = _timed(lambda: log.readback(loss, list(levels), trainer.optimizer,
                                                         trainer.optimizer.param_groups[0]["lr"]), sync, repeats * 5)
    from tqdm import tqdm
    bar = tqdm(total=1, file=io.StringIO(), disable=False)
    try:
        out["postfix_runs_s"] = _timed(lambda: bar.set_postfix({"loss": f"{loss.item():.4f}", "lr": "1.00e-04"},
                                                               refresh=False), sync, repeats * 5)
    finally:
        bar.close()
    with tempfile.TemporaryDirectory(prefix="hjepa-bench-tb-") as tmp:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=tmp)
        try:
            n_values = 50
            event = _timed(lambda: [writer.add_scalar(f"train/v{i}", float(i), 0) for i in range(n_values)],
                           sync, repeats)
            out["scalar_runs_s"] = [t / n_values for t in event]
            out["memory_read_runs_s"] = _timed(backend.memory, sync, repeats)
            grads = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
            out["histogram_tensors"] = len(grads)
            if grads:
                out["histograms_runs_s"] = _timed(
                    lambda: [writer.add_histogram(f"gradients/{n}", p.grad.detach().cpu().numpy(), 0) for n, p in grads],
                    sync, repeats)
            else:
                out["histograms_runs_s"] = []
            writer.flush()
        finally:
            writer.close()
    out["collapse_runs_s"] = _timed(lambda: collapse_metrics(*features), sync, repeats)
    out["collapse_shapes"] = [list(f.shape) for f in features]
    if has_empty_cache(device_type):
        out["empty_cache_runs_s"] = _timed(lambda: empty_cache(device_type), sync, repeats)
    else:
        out["empty_cache_runs_s"] = []
    for key in ("readback", "postfix", "scalar", "memory_read", "histograms", "collapse", "empty_cache"):
        out[f"{key}_s"] = _median(out[f"{key}_runs_s"])
    out["empty_cache_device"] = has_empty_cache(device_type)
    if made_grads:
        trainer.optimizer.zero_grad(set_to_none=True)
    return out


def periodic_seconds(counts: Mapping[str, int], costs: Mapping[str, Any], plan: LoggingPlan) -> dict[str, float | None]:
    """count x measured cost for each column of the projection: read-backs (+ progress-bar postfix),
    TensorBoard scalars (+ memory readings), gradient histograms, collapse metrics, empty_cache.
    None: the work is done but its cost was not measured; 0.0: the work is not done."""
    def cost(key: str) -> float | None:
        v = costs.get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def times(n: int, *keys: str) -> float | None:
        if n == 0:
            return 0.0
        c = [cost(k) for k in keys]
        return None if any(x is None for x in c) else n * sum(c)  # type: ignore[misc]

    out: dict[str, float | None] = {}
    rb, pf = times(counts["readback"], "readback_s"), times(counts["postfix"], "postfix_s")
    out["readbacks"] = None if rb is None or pf is None else rb + pf
    if plan.wandb:  # not measurable here: every logging column is then unknown
        out["scalars"] = out["histograms"] = None
    else:
        sc = times(counts["scalar_values"], "scalar_s")
        mem = times(counts["memory_reads"], "memory_read_s")
        out["scalars"] = None if sc is None or mem is None else sc + mem
        out["histograms"] = times(counts["histograms"], "histograms_s")
    out["collapse"] = times(counts["collapse"], "collapse_s")
    out["empty_cache"] = times(counts["empty_cache"], "empty_cache_s")
    return out
