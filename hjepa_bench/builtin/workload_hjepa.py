"""Built-in workload ``hjepa``: the real H-JEPA training step on real data loading.

Data (synthetic CIFAR-shaped by default, or ``--data cifar10``) goes through
the upstream augmentation in DataLoader workers; each step is
:class:`hjepa_bench.hjepa.step.HJEPAStep` in the configured variant, set up by
:func:`hjepa_bench.hjepa.training.build_training`.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from hjepa_bench import Backend, PreparedWorkload, StepOutput, Workload, hookimpl
from hjepa_bench.plugin.api import GRAD_SYNC_MODES


class PreparedHJEPA(PreparedWorkload):
    def __init__(self, config: Mapping[str, Any], backend: Backend):
        # imported here: a command that trains nothing (devices, plugins) never loads timm or torchvision
        from hjepa_bench.hjepa.data import EndlessBatches
        from hjepa_bench.hjepa.training import build_training

        training = build_training(config, backend)
        self.loader = training.loader
        self.trainer = training.trainer
        self.endless = EndlessBatches(self.loader)
        self.batch_size = int(config["data"]["batch_size"])
        self.precision = training.precision
        self.uses_grad_scaler = self.trainer.scaler is not None
        # the reference masks read back per sample (nonzero): the step waits for the device there
        self.syncs_in_step = self.trainer.variant == "reference"

    @property
    def phase_events(self) -> Any:
        return self.trainer.phase_events

    @phase_events.setter
    def phase_events(self, factory: Any) -> None:  # the runner's: the step marks its phases on the stream
        self.trainer.phase_events = factory

    def batches(self) -> Iterator[Any]:
        return iter(self.endless)

    def step(self, batch: Any) -> StepOutput:
        return self.trainer(batch)

    def params(self) -> dict[str, int]:
        return self.trainer.model.param_counts()

    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def data_parallel(self, wrap: Any) -> None:
        self.trainer.data_parallel(wrap)

    def set_grad_sync(self, mode: str) -> None:
        if mode not in GRAD_SYNC_MODES:
            raise ValueError(f"grad sync mode {mode!r} is not one of {', '.join(GRAD_SYNC_MODES)}")
        self.trainer.grad_sync = mode

    def close(self) -> None:
        self.endless.close()


class HJEPAWorkload(Workload):
    name = "hjepa"
    description = "the H-JEPA training step (context/target ViT, predictor, hierarchy, EMA, AdamW)"

    def prepare(self, config: Mapping[str, Any], backend: Backend) -> PreparedWorkload:
        return PreparedHJEPA(config, backend)


@hookimpl
def hjepa_bench_register_workloads(register):
    register(HJEPAWorkload())
