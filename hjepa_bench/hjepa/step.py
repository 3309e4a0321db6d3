"""One H-JEPA training step, in two variants (docs/step.md).

``reference``: the cost of the upstream step.  Masks come from a per-sample
host loop with a host-device sync per sample; masked patch tokens are zeroed
and all tokens go through the context encoder; the predictor runs the 196
context patch tokens plus the padded mask tokens with unfused attention.

``efficient``: the same masks (sampled in the DataLoader workers), targets and
losses, but masked tokens are dropped by gather as I-JEPA does, attention is
fused (SDPA), the AdamW update is the fused kernel (same update, one pass per
tensor) and nothing syncs host and device (the input copy too when ``data.pin_memory`` is on: from
pageable memory it is a synchronous copy).

Both: AdamW (betas from the config) over the trainable parameters, gradient
clipping, linear warm-up + cosine LR, EMA target update with a linear momentum
ramp, optional autocast (fp16 with a GradScaler, or bf16).
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import torch

from ..plugin.api import Backend, PhaseClock, StepOutput
from .loss import hierarchical_loss, vicreg
from .masks import BatchMasks, MaskSpec, reference_masks, to_device
from .model import HJEPA, gather_tokens

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``base_lr``, then cosine down to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def ema_momentum_at(step: int, total_steps: int, start: float, end: float) -> float:
    """EMA momentum rising linearly from ``start`` to ``end`` over the run."""
    return start + (end - start) * min(1.0, step / max(1, total_steps))


def fused_adamw_available(device: torch.device) -> bool:
    """Whether this torch has the fused AdamW kernel for ``device`` (CPU since torch 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # private helper moved: fall back to the default update
        return False
    return device.type in _get_fused_kernels_supported_devices()


class _Objective(torch.nn.Module):
    """The H-JEPA objective as a module: ``forward(images, masks)`` is ``HJEPAStep.loss``.

    It registers the model, so a ``DistributedDataParallel`` around it sees every trainable parameter.
    ``HJEPAStep.loss`` calls the model's submodules (encoders, predictor, projections) directly, never
    ``model.forward``: a DDP around the model alone would synchronise no gradient, and raise nothing.
    The target encoder's parameters do not require gradients (DDP skips them); the EMA keeps them
    equal on every rank."""

    def __init__(self, step: HJEPAStep):
        super().__init__()
        self.model = step.model
        self._step = [step]  # in a list: not a submodule

    def forward(self, images: torch.Tensor, masks: BatchMasks) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._step[0].loss(images, masks)


class HJEPAStep:
    """Owns model, optimizer and schedules; ``__call__(batch)`` runs one step."""

    def __init__(self, values: Mapping[str, Any], backend: Backend, precision: str, steps_per_epoch: int,
                 model: HJEPA | None = None):
        self.values = values
        self.backend = backend
        self.device = backend.device()
        self.variant = values["bench"]["variant"]
        self.precision = precision
        seed = int(values["seed"])
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.model = (model or HJEPA.from_config(values)).to(self.device)
        self.model.train()
        t = values["training"]
        self.params = self.model.trainable_parameters()
        # efficient: the same AdamW update as one fused kernel per tensor.  The default (foreach)
        # update makes ~8 passes per tensor, each a thread fork/join on a CPU, and on a loaded
        # CPU every fork/join can wait a scheduler slice (docs/step.md, "Efficient vs reference").
        fused = {"fused": True} if self.variant == "efficient" and fused_adamw_available(self.device) else {}
        self.optimizer = torch.optim.AdamW(self.params, lr=float(t["lr"]), betas=tuple(t["betas"]),
                                           weight_decay=float(t["weight_decay"]), **fused)
        self.scaler = backend.grad_scaler(precision) if precision == "fp16" else None
        self.spec = MaskSpec.from_config(values)
        self.total_steps = int(t["epochs"]) * steps_per_epoch
        self.warmup_steps = int(round(float(t["warmup_epochs"]) * steps_per_epoch))
        self.global_step = 0
        loss_cfg = values["loss"]
        self.loss_type = "mse" if loss_cfg["type"] == "combined" else loss_cfg["type"]
        self.vicreg_weight = float(loss_cfg["vicreg_weight"]) if loss_cfg["type"] == "combined" else 0.0
        self.weights = [float(w) for w in loss_cfg["hierarchy_weights"]]
        self.normalize = bool(loss_cfg["normalize_embeddings"])
        self.ddp: torch.nn.Module | None = None  # the data-parallel objective (data_parallel())
        #: keep_features: ``loss`` keeps (context tokens, target tokens), detached, in ``last_features``
        #: (what the upstream trainer's collapse metrics read from the model's outputs)
        self.keep_features = False
        self.last_features: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_levels: list[torch.Tensor] = []  # each level's loss of the last step (keep_features)
        self.grad_sync = "sync"  # with ddp: sync | no_sync | local (GRAD_SYNC_MODES)
        #: the runner's device event factory (PreparedWorkload.phase_events): phase boundaries on the stream too
        self.phase_events: Any = None

    # ------------------------------------------------------------------ pieces
    def autocast(self):
        dtype = DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    def make_masks(self, batch_size: int) -> BatchMasks:
        return reference_masks(self.rng, self.spec, batch_size, self.device)

    def loss(self, images: torch.Tensor, masks: BatchMasks) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward of the whole H-JEPA objective for one batch."""
        m = self.model
        b = images.shape[0]
        with torch.no_grad():
            target_tokens = m.target_encoder(images)[:, 1:]
            targets = gather_tokens(target_tokens, masks.target_idx)
        target_pos = gather_tokens(m.patch_pos_embed().expand(b, -1, -1), masks.target_idx)
        if self.variant == "reference":
            context = m.context_encoder(images, zero_mask=masks.target_mask)[:, 1:]
            pred = m.predictor(context, target_pos, fused=False)
            ctx_pooled = context.mean(dim=1)
        else:
            context = m.context_encoder.forward_visible(images, masks.context_idx, masks.context_valid)[:, 1:]
            ignore = ~torch.cat([masks.context_valid, masks.target_valid], dim=1)
            pred = m.predictor(context, target_pos, key_padding_mask=ignore, fused=True)
            w = masks.context_valid.unsqueeze(-1).to(context.dtype)
            ctx_pooled = (context * w).sum(1) / w.sum(1).clamp_min(1)
        if self.keep_features:
            self.last_features = (context.detach(), target_tokens.detach())
        total, levels = hierarchical_loss(pred, targets, masks.target_valid, m.hierarchy_projections,
                                          self.weights, self.loss_type, self.normalize)
        if self.vicreg_weight:
            total = total + self.vicreg_weight * vicreg(ctx_pooled, target_tokens.mean(dim=1))
        return total, levels

    def data_parallel(self, wrap: Any) -> None:
        """Run the training forward through ``wrap(objective)`` (a DistributedDataParallel)."""
        self.ddp = wrap(_Objective(self))

    def train_loss(self, images: torch.Tensor, masks: BatchMasks) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss of a training step: ``loss``, through the data-parallel wrapper when there is one
        (``grad_sync``: ``sync`` all-reduces the gradients in backward, ``no_sync`` does not, ``local``
        bypasses the wrapper).  DDP decides at forward time whether the backward synchronises."""
        if self.ddp is None or self.grad_sync == "local":
            return self.loss(images, masks)
        if self.grad_sync == "no_sync":
            with self.ddp.no_sync():
                return self.ddp(images, masks)
        return self.ddp(images, masks)

    def set_lr(self) -> float:
        t = self.values["training"]
        lr = lr_at(self.global_step, self.total_steps, self.warmup_steps, float(t["lr"]), float(t["min_lr"]))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ------------------------------------------------------------------ the step
    def __call__(self, batch: Any) -> StepOutput:
        clock = PhaseClock(self.phase_events)
        clock.mark()
        if self.variant == "efficient":
            images, _labels, masks = batch
            masks = masks.to(self.device, non_blocking=True)  # asynchronous only from pinned memory
            images = to_device(images, self.device)
        else:
            images = to_device(batch[0], self.device)
            masks = self.make_masks(images.shape[0])
        clock.mark("inputs_masks")
        lr = self.set_lr()
        with self.autocast():
            loss, levels = self.train_loss(images, masks)
        if self.keep_features:
            self.last_levels = [x.detach() for x in levels]
        # the activations are live here and freed by the backward: a backend without a peak API samples now
        self.backend.sample_memory("forward end")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        clock.mark("forward_backward")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.values["training"]["clip_grad"]))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        clock.mark("optimizer")
        e = self.values["model"]["ema"]
        self.model.ema_update(ema_momentum_at(self.global_step, self.total_steps,
                                              float(e["momentum"]), float(e["momentum_end"])))
        clock.mark("ema")
        in_warmup = self.global_step < self.warmup_steps
        self.global_step += 1
        return StepOutput(
            loss=loss.detach(),
            grad_norm=grad_norm.detach(),
            host_s=clock.host_s(), phases=clock,
            lr=lr, lr_in_warmup=in_warmup,
        )
