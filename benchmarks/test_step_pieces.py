"""Benchmarks of the H-JEPA step and its pieces, per backend (see conftest.py).

    pytest benchmarks/ --benchmark-autosave                     # save a baseline
    pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%
"""
from __future__ import annotations

import os
import random
import time

import pytest
import torch

from hjepa_bench.hjepa.data import build_dataset, build_transform
from hjepa_bench.hjepa.masks import MaskCollator, MaskSpec, masks_from_union, reference_masks, sample_batch_union
from hjepa_bench.hjepa.step import HJEPAStep

VARIANTS = ["reference", "efficient"]
_STEPS: dict[tuple, HJEPAStep] = {}


def make_step(values, backend, variant) -> HJEPAStep:
    key = (backend.name, variant, id(values))
    if key not in _STEPS:
        cfg = {**values, "bench": {**values["bench"], "variant": variant}}
        _STEPS[key] = HJEPAStep(cfg, backend, "fp32", steps_per_epoch=1000)
    return _STEPS[key]


def make_batch(values, variant, seed=0):
    """One real batch: synthetic images through the upstream augmentation (+ masks)."""
    d = values["data"]
    ds = build_dataset("synthetic", size=d["batch_size"], seed=seed,
                       transform=build_transform(d["image_size"], d["augmentation"]["color_jitter"]))
    images, labels, masks = MaskCollator(MaskSpec.from_config(values))([ds[i] for i in range(len(ds))])
    return (images, labels, masks) if variant == "efficient" else (images, labels)


def on_device(step: HJEPAStep, batch):
    images = batch[0].to(step.device)
    if len(batch) == 3:
        return images, batch[2].to(step.device)
    return images, step.make_masks(images.shape[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_step(timed, config_values, backend, variant):
    step = make_step(config_values, backend, variant)
    batch = make_batch(config_values, variant)
    slowdown = float(os.environ.get("HJEPA_BENCH_TEST_SLOWDOWN_S", "0"))

    def one_step():
        out = step(batch)
        if slowdown:
            time.sleep(slowdown)
        return out

    out = timed(one_step)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("variant", VARIANTS)
def test_context_encoder_forward_backward(timed, config_values, backend, variant):
    step = make_step(config_values, backend, variant)
    images, masks = on_device(step, make_batch(config_values, variant))
    enc = step.model.context_encoder

    def fwd_bwd():
        enc.zero_grad(set_to_none=True)
        if variant == "reference":
            out = enc(images, zero_mask=masks.target_mask)
        else:
            out = enc.forward_visible(images, masks.context_idx, masks.context_valid)
        out.float().pow(2).mean().backward()
        return out

    out = timed(fwd_bwd)
    tokens = masks.target_mask.shape[1] if variant == "reference" else masks.context_idx.shape[1]
    expected = images.shape[0], 1 + tokens
    assert tuple(out.shape[:2]) == expected


def test_target_encoder_forward(timed, config_values, backend):
    step = make_step(config_values, backend, "reference")
    images, _ = on_device(step, make_batch(config_values, "reference"))

    def forward():
        with torch.no_grad():
            return step.model.target_encoder(images)

    assert timed(forward).shape[0] == images.shape[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_predictor_forward_backward(timed, config_values, backend, variant):
    step = make_step(config_values, backend, variant)
    _, masks = on_device(step, make_batch(config_values, variant))
    m, b, d = step.model, masks.target_idx.shape[0], step.model.embed_dim
    n_ctx = masks.target_mask.shape[1] if variant == "reference" else masks.context_idx.shape[1]
    context = torch.randn(b, n_ctx, d, device=step.device, requires_grad=True)
    target_pos = torch.randn(b, masks.max_targets, d, device=step.device)
    ignore = None if variant == "reference" else ~torch.cat([masks.context_valid, masks.target_valid], dim=1)

    def fwd_bwd():
        m.predictor.zero_grad(set_to_none=True)
        out = m.predictor(context, target_pos, key_padding_mask=ignore, fused=variant == "efficient")
        out.pow(2).mean().backward()
        return out

    assert timed(fwd_bwd).shape == (b, masks.max_targets, d)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mask_generation(timed, config_values, backend, variant):
    spec = MaskSpec.from_config(config_values)
    b = config_values["data"]["batch_size"]
    rng = random.Random(0)
    device = backend.device()
    if variant == "reference":  # upstream: host loop, one device sync per sample
        def make():
            return reference_masks(rng, spec, b, device)
    else:  # collator path: numpy on the host, one non-blocking copy
        def make():
            return masks_from_union(sample_batch_union(rng, spec, b)).to(device, non_blocking=True)

    masks = timed(make)
    assert masks.target_idx.shape[0] == b


def test_ema_update(timed, config_values, backend):
    model = make_step(config_values, backend, "reference").model
    timed(lambda: model.ema_update(0.996))
    assert all(not p.requires_grad for p in model.target_encoder.parameters())


def test_optimizer_step(timed, config_values, backend):
    step = make_step(config_values, backend, "reference")
    images, masks = on_device(step, make_batch(config_values, "reference"))
    loss, _ = step.loss(images, masks)
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # gradients in place; each round is one AdamW update

    def update():
        torch.nn.utils.clip_grad_norm_(step.params, 3.0)
        step.optimizer.step()

    timed(update)
    assert step.optimizer.state  # AdamW state was created


def test_data_pipeline(benchmark, config_values, rounds):
    """Images per second through the upstream augmentation (CPU, in one process)."""
    d = config_values["data"]
    ds = build_dataset("synthetic", size=d["batch_size"], transform=build_transform(d["image_size"], 0.3))

    def augment_batch():
        return [ds[i][0] for i in range(len(ds))]

    images = benchmark.pedantic(augment_batch, rounds=rounds, warmup_rounds=1, iterations=1)
    assert images[0].shape == (3, d["image_size"], d["image_size"])
    if benchmark.stats is not None:  # absent with --benchmark-disable
        benchmark.extra_info["images_per_s"] = len(ds) / benchmark.stats.stats.median
