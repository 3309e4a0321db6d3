"""``hjepa-bench inspect``: parameters, tokens and FLOPs of a config, without training.

Everything runs on the meta device (shapes only, no memory, no compute), so a
ViT-Base config inspects in about a second.  FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv and attention; 2
FLOPs per multiply-add; forward and backward) over the real step code with a
batch of masks drawn by the real mask sampler.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..config import VARIANTS
from ..plugin.api import Availability, Backend, MemoryReading
from .masks import MaskSpec, masks_from_union, sample_batch_union
from .model import HJEPA
from .step import HJEPAStep


class MetaBackend(Backend):
    """Shapes only: lets the real step code run for counting."""

    name = "meta"

    def availability(self) -> Availability:
        return Availability(True)

    def device(self) -> torch.device:
        return torch.device("meta")

    def synchronize(self) -> None:
        pass

    def memory(self) -> MemoryReading:
        return MemoryReading(None, None, None, source="meta")

    def supported_precisions(self) -> dict[str, str]:
        return {"fp32": ""}


def attention_is_counted() -> bool:
    """FlopCounterMode counts scaled_dot_product_attention on this torch (meta device)."""
    q = torch.empty(1, 1, 8, 8, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() >= 2 * 2 * 8 * 8 * 8


def count_step_flops(config: Mapping[str, Any], variant: str, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """FLOPs of one training step (forward + backward, target forward) of ``variant``."""
    cfg = {**config, "bench": {**config["bench"], "variant": variant}}
    with torch.device("meta"):
        model = HJEPA.from_config(cfg)
    step = HJEPAStep(cfg, MetaBackend(), "fp32", steps_per_epoch=1, model=model)
    spec = MaskSpec.from_config(cfg)
    masks = masks_from_union(sample_batch_union(random.Random(seed), spec, batch_size))
    size = int(cfg["data"]["image_size"])
    images = torch.empty(batch_size, 3, size, size, device="meta")
    mm = masks.to("meta")

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    def full_step() -> None:
        loss, _ = step.loss(images, mm)
        loss.backward()

    def target_fwd() -> None:
        with torch.no_grad():
            model.target_encoder(images)

    def context_fwd_bwd() -> None:
        enc = model.context_encoder
        out = enc(images, zero_mask=mm.target_mask) if variant == "reference" else \
            enc.forward_visible(images, mm.context_idx, mm.context_valid)
        out.sum().backward()

    def predictor_fwd_bwd() -> None:
        d = model.embed_dim
        n_ctx = spec.num_patches if variant == "reference" else mm.context_idx.shape[1]
        ctx = torch.empty(batch_size, n_ctx, d, device="meta", requires_grad=True)
        pos = torch.empty(batch_size, mm.max_targets, d, device="meta")
        if variant == "reference":
            out = model.predictor(ctx, pos, fused=False)
        else:
            ignore = ~torch.cat([mm.context_valid, mm.target_valid], dim=1)
            out = model.predictor(ctx, pos, key_padding_mask=ignore, fused=True)
        out.sum().backward()

    total, target = count(full_step), count(target_fwd)
    context, predictor = count(context_fwd_bwd), count(predictor_fwd_bwd)
    return {
        "total": total,
        "per_sample": total / batch_size,
        "by_module": {
            "context_encoder_fwd_bwd": context,
            "target_encoder_fwd": target,
            "predictor_fwd_bwd": predictor,
            "projections_and_loss": total - context - target - predictor,
        },
        "max_targets": masks.max_targets,
        "max_context": int(masks.context_idx.shape[1]),
    }


def token_counts(config: Mapping[str, Any], batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Tokens each module processes per sample, in both variants (mean and padded)."""
    spec = MaskSpec.from_config(config)
    masks = masks_from_union(sample_batch_union(random.Random(seed), spec, batch_size))
    n = spec.num_patches
    k_mean = float(masks.target_valid.sum(1).float().mean())
    c_mean = float(masks.context_valid.sum(1).float().mean())
    k_pad, c_pad = masks.max_targets, int(masks.context_idx.shape[1])
    return {
        "patches": n,
        "masked_frac_mean": k_mean / n,
        "reference": {
            "context_encoder": 1 + n, "target_encoder": 1 + n, "predictor": n + k_pad,
            "predicted": k_mean,
        },
        "efficient": {
            "context_encoder": 1 + c_pad, "context_encoder_valid_mean": 1 + c_mean,
            "target_encoder": 1 + n, "predictor": c_pad + k_pad, "predicted": k_mean,
        },
    }


def param_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """Total (with the EMA target encoder) and trainable parameters of the model ``config`` builds,
    counted on the meta device."""
    with torch.device("meta"):
        return HJEPA.from_config(config).param_counts()


def inspect_config(config: Mapping[str, Any], batch_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    batch = int(batch_size or config["data"]["batch_size"])
    params = param_counts(config)
    flops = {v: count_step_flops(config, v, batch, seed) for v in VARIANTS}
    return {
        "model": config["model"]["encoder_type"],
        "image_size": config["data"]["image_size"],
        "batch_size": batch,
        "params": params,
        "tokens_per_sample": token_counts(config, batch, seed),
        "flops_per_step": flops,
        "efficient_vs_reference_flops": flops["efficient"]["total"] / flops["reference"]["total"],
        "attention_counted": attention_is_counted(),
        "flops_note": "torch.utils.flop_counter on the meta device: matmul, conv and attention, "
                      "2 FLOPs per multiply-add, forward + backward; one batch of masks from the real sampler",
    }
