"""The real H-JEPA step on CPU with tiny configs: learning, EMA, variants, schedules."""
from __future__ import annotations

import random

import pytest
import torch

from hjepa_bench.builtin.backend_cpu import CPUBackend
from hjepa_bench.hjepa.masks import MaskSpec, masks_from_union, sample_batch_union
from hjepa_bench.hjepa.step import HJEPAStep, ema_momentum_at, lr_at


def _batch(values, variant, seed=0):
    b, s = values["data"]["batch_size"], values["data"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, s, s, generator=g)
    if variant == "efficient":
        masks = masks_from_union(sample_batch_union(random.Random(seed), MaskSpec.from_config(values), b))
        return images, torch.zeros(b, dtype=torch.long), masks
    return images, torch.zeros(b, dtype=torch.long)


@pytest.mark.parametrize("variant", ["reference", "efficient"])
def test_loss_finite_and_falling_on_a_fixed_batch(tiny, variant):
    values = tiny(**{"bench.variant": variant, "training.warmup_epochs": 0, "training.lr": 1e-3})
    step = HJEPAStep(values, CPUBackend(), "fp32", steps_per_epoch=100)
    batch = _batch(values, variant)
    losses = [float(step(batch).loss) for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("loss_type,normalize", [("smooth_l1", True), ("combined", False)])
def test_other_loss_types_run_and_learn(tiny, loss_type, normalize):
    values = tiny(**{"loss.type": loss_type, "loss.normalize_embeddings": normalize,
                     "training.warmup_epochs": 0, "training.lr": 1e-3, "model.num_hierarchies": 3})
    step = HJEPAStep(values, CPUBackend(), "fp32", steps_per_epoch=100)
    batch = _batch(values, "reference")
    losses = [float(step(batch).loss) for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_ema_moves_the_target_and_only_the_target(tiny):
    values = tiny(**{"training.warmup_epochs": 0, "training.lr": 1e-3})
    step = HJEPAStep(values, CPUBackend(), "fp32", steps_per_epoch=10)
    model = step.model
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    step(_batch(values, "reference"))
    # the target never receives gradients
    assert all(p.grad is None for p in model.target_encoder.parameters())
    # after one optimizer step, context and target differ; EMA is an exact lerp
    ctx_before = [p.detach().clone() for p in model.context_encoder.parameters()]
    tgt_before = [p.detach().clone() for p in model.target_encoder.parameters()]
    pred_before = [p.detach().clone() for p in model.predictor.parameters()]
    m = 0.9
    model.ema_update(m)
    for c_old, c_new in zip(ctx_before, model.context_encoder.parameters()):
        assert torch.equal(c_old, c_new)
    for p_old, p_new in zip(pred_before, model.predictor.parameters()):
        assert torch.equal(p_old, p_new)
    moved = 0
    for t_old, c, t_new in zip(tgt_before, ctx_before, model.target_encoder.parameters()):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * c)
        moved += int(not torch.equal(t_old, t_new))
    assert moved > 0


def test_step_moves_target_by_the_scheduled_momentum(tiny):
    values = tiny(**{"training.warmup_epochs": 0, "training.lr": 1e-3})
    step = HJEPAStep(values, CPUBackend(), "fp32", steps_per_epoch=10)
    batch = _batch(values, "reference")
    step(batch)  # context and target now differ
    tgt = [p.detach().clone() for p in step.model.target_encoder.parameters()]
    step(batch)
    m = ema_momentum_at(1, step.total_steps, 0.996, 1.0)
    ctx = list(step.model.context_encoder.parameters())
    for t_old, c, t_new in zip(tgt, ctx, step.model.target_encoder.parameters()):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * c.detach())


def test_schedules():
    assert lr_at(0, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-4)
    assert lr_at(9, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert lr_at(10, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert lr_at(100, 100, 10, 1e-3, 1e-6) == pytest.approx(1e-6)
    mid = lr_at(55, 100, 10, 1e-3, 1e-6)
    assert mid == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert ema_momentum_at(0, 100, 0.996, 1.0) == 0.996
    assert ema_momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert ema_momentum_at(200, 100, 0.996, 1.0) == 1.0


def test_nonfinite_input_gives_nonfinite_loss(tiny):
    values = tiny()
    step = HJEPAStep(values, CPUBackend(), "fp32", steps_per_epoch=10)
    images, labels = _batch(values, "reference")
    images[0, 0, 0, 0] = float("nan")
    out = step((images, labels))
    assert not torch.isfinite(out.loss)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_on_cpu(tiny, precision):
    backend = CPUBackend()
    if backend.supported_precisions()[precision]:
        pytest.skip(backend.supported_precisions()[precision])
    values = tiny(**{"bench.precision": precision})
    step = HJEPAStep(values, backend, precision, steps_per_epoch=10)
    out = step(_batch(values, "reference"))
    assert torch.isfinite(out.loss)
    assert (step.scaler is not None) == (precision == "fp16")


# --------------------------------------------------------------------------- pinned memory
def _spy_copies(monkeypatch):
    """Record the ``non_blocking`` of every ``Tensor.to``."""
    calls = []
    real = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(bool(kwargs.get("non_blocking", False)))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    return calls


@pytest.mark.parametrize("pinned", [False, True])
def test_host_to_device_copies_are_asynchronous_only_from_pinned_memory(monkeypatch, tiny, pinned):
    """From pageable memory a non_blocking copy makes the host wait anyway (CUDA stages it); the step
    copies asynchronously only what the DataLoader pinned (data.pin_memory).  The meta device stands in
    for the accelerator; pinning is faked (this machine has no pinned memory)."""
    from hjepa_bench.hjepa.masks import to_device

    values = tiny(**{"bench.variant": "efficient"})
    masks = masks_from_union(sample_batch_union(random.Random(0), MaskSpec.from_config(values), 4))
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: pinned)
    calls = _spy_copies(monkeypatch)
    masks.to(torch.device("meta"), non_blocking=True)
    to_device(torch.zeros(4, 3, 8, 8), torch.device("meta"))
    assert calls and all(c is pinned for c in calls)


def test_the_loader_pins_as_the_config_says_for_an_accelerator(tiny):
    from hjepa_bench.builtin.backend_mps import MPSBackend
    from hjepa_bench.hjepa.training import train_loader

    for pin in (True, False):
        _, loader = train_loader(tiny(**{"data.pin_memory": pin}), MPSBackend())
        assert loader.pin_memory is pin  # as upstream: the DataLoader then pins for the accelerator (or says why not)
    _, loader = train_loader(tiny(**{"data.pin_memory": True}), CPUBackend())
    assert loader.pin_memory is False  # a CPU run copies nothing to a device
