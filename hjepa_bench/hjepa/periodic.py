"""The upstream trainer's periodic work, done and timed on the run's model and device.

The counting rules (what the trainer does, how often) are in :mod:`hjepa_bench.analysis.periodic`;
:class:`TrainerLogger` does the work (the validation run uses it, so its epochs cost what the
trainer's do); :func:`measure_periodic` times each kind once (the ``epoch_costs`` probe).
"""
from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..analysis.periodic import COLLAPSE_ROWS, KINDS, LoggingPlan, has_empty_cache
from ..plugin.api import Backend, Trainer
from ..stats import median

#: timed repeats of each periodic measurement (median)
REPEATS = 3


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


def measure_periodic(trainer: Trainer, backend: Backend, images: torch.Tensor, masks: Any, plan: LoggingPlan,
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
                    lambda: [writer.add_histogram(f"gradients/{n}", p.grad.detach().cpu().numpy(), 0) for n,
                             p in grads],
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
        out[f"{key}_s"] = median(out[f"{key}_runs_s"])
    out["empty_cache_device"] = has_empty_cache(device_type)
    if made_grads:
        trainer.optimizer.zero_grad(set_to_none=True)
    return out


