"""Built-in workload ``hjepa``: the real H-JEPA training step on real data loading.

Data (synthetic CIFAR-shaped by default, or ``--data cifar10``) goes through
the upstream augmentation in DataLoader workers; each step is
:class:`hjepa_bench.hjepa.step.HJEPAStep` in the configured variant.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from hjepa_bench.plugin.api import Backend, PreparedWorkload, StepOutput, Workload
from hjepa_bench.config import resolve_precision
from hjepa_bench.hjepa.data import EndlessBatches, build_dataset, build_loader, build_transform
from hjepa_bench.errors import UserError
from hjepa_bench.plugin.hookspecs import hookimpl
from hjepa_bench.hjepa.masks import MaskCollator, MaskSpec
from hjepa_bench.hjepa.step import HJEPAStep


class PreparedHJEPA(PreparedWorkload):
    def __init__(self, config: Mapping[str, Any], backend: Backend):
        bench, data = config["bench"], config["data"]
        precision = resolve_precision(config, backend.name)
        why = backend.supported_precisions().get(precision, f"unknown precision {precision}")
        if why:
            raise UserError(f"precision {precision} does not run on {backend.name}: {why}")
        aug = data["augmentation"]
        transform = build_transform(int(data["image_size"]), float(aug["color_jitter"]),
                                    bool(aug.get("horizontal_flip", True)), bool(aug.get("random_crop", True)))
        path = bench.get("data_path") or data.get("data_path")
        dataset = build_dataset(bench["data"], path=path, train=True, size=int(bench["synthetic_size"]),
                                seed=int(config["seed"]), transform=transform,
                                limit=bench.get("limit_samples"))
        collate = MaskCollator(MaskSpec.from_config(config)) if bench["variant"] == "efficient" else None
        self.loader = build_loader(dataset, batch_size=int(data["batch_size"]), num_workers=int(data["num_workers"]),
                                   pin_memory=bool(data["pin_memory"]) and backend.name == "cuda",
                                   persistent_workers=bool(bench["persistent_workers"]), seed=int(config["seed"]),
                                   collate_fn=collate)
        self.endless = EndlessBatches(self.loader)
        self.batch_size = int(data["batch_size"])
        self.precision = precision
        self.trainer = HJEPAStep(config, backend, precision, steps_per_epoch=len(self.loader))
        self.uses_grad_scaler = self.trainer.scaler is not None

    def batches(self) -> Iterator[Any]:
        return iter(self.endless)

    def step(self, batch: Any) -> StepOutput:
        return self.trainer(batch)

    def params(self) -> dict[str, int]:
        return self.trainer.model.param_counts()

    def model(self) -> torch.nn.Module:
        return self.trainer.model

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
