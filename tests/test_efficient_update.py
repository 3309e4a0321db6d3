"""The efficient step's AdamW update is one fused pass per tensor.

On a loaded CPU every thread fork/join of an ATen op can wait a scheduler slice,
so step time follows how many per-tensor passes a step makes more than its FLOPs.
The default AdamW update makes one pass per tensor for each of its elementwise
ops (lerp_, addcmul_, sqrt, addcdiv_, ... over every parameter); the efficient
step runs the same update as torch's fused kernel instead.
"""
from __future__ import annotations

import copy
import random

import torch
from torch.profiler import ProfilerActivity, profile

from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.hjepa.masks import MaskSpec, masks_from_union, sample_batch_union
from hjepa_bench.hjepa.step import HJEPAStep


def _step_and_batch(tiny, variant):
    values = tiny(**{"bench.variant": variant, "training.warmup_epochs": 0})
    b, s = values["data"]["batch_size"], values["data"]["image_size"]
    images = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(0))
    if variant == "efficient":
        masks = masks_from_union(sample_batch_union(random.Random(0), MaskSpec.from_config(values), b))
        batch = (images, torch.zeros(b, dtype=torch.long), masks)
    else:
        batch = (images, torch.zeros(b, dtype=torch.long))
    return HJEPAStep(values, CPUBackend(), "fp32", steps_per_epoch=100), batch


def _per_tensor_passes(step: HJEPAStep) -> int:
    """ATen kernels that one optimizer step runs on a single parameter-shaped tensor."""
    shapes = {tuple(p.shape) for p in step.params}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step.optimizer.step()
    leaves = [e for e in prof.events() if e.name.startswith("aten::")
              and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    return sum(1 for e in leaves
               if any(isinstance(s, list) and s and not isinstance(s[0], list) and tuple(s) in shapes
                      for s in e.input_shapes))


def test_efficient_update_makes_no_per_tensor_passes(tiny):
    passes = {}
    for variant in ("reference", "efficient"):
        step, batch = _step_and_batch(tiny, variant)
        step(batch)  # gradients and optimizer state exist
        passes[variant] = (_per_tensor_passes(step), len(step.params))
    ref_passes, n_params = passes["reference"]
    # the probe sees the default update's passes: several per parameter tensor (upstream's cost)
    assert ref_passes >= 3 * n_params, passes
    # the efficient update is one fused kernel over the whole list, not a pass per tensor per op
    assert passes["efficient"][0] == 0, passes


def test_fused_update_is_the_same_adamw_update(tiny):
    fused, batch = _step_and_batch(tiny, "efficient")
    default = copy.deepcopy(fused)
    t = default.values["training"]
    default.params = default.model.trainable_parameters()
    default.optimizer = torch.optim.AdamW(default.params, lr=float(t["lr"]), betas=tuple(t["betas"]),
                                          weight_decay=float(t["weight_decay"]))  # torch's default update
    before = [p.detach().clone() for p in fused.params]
    torch.testing.assert_close(fused(batch).loss, default(batch).loss)  # same start, same loss
    lr = fused.optimizer.param_groups[0]["lr"]
    # one update from the same state and gradients: equal up to float rounding (far below lr)
    for a, b in zip(fused.model.parameters(), default.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3 * lr)
    assert sum(not torch.equal(a, b) for a, b in zip(before, fused.params)) > 0  # it did update
    for _ in range(3):  # and the runs stay together
        torch.testing.assert_close(fused(batch).loss, default(batch).loss, rtol=1e-4, atol=1e-6)
