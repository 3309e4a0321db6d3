"""The hjepa workload's data path: spawn workers (macOS's start method) and CIFAR-10 from disk."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from helpers import TINY_FLAGS

from hjepa_bench.hjepa.data import EndlessBatches, build_dataset, build_loader, build_transform
from hjepa_bench.hjepa.masks import BatchMasks, MaskCollator, MaskSpec


@pytest.mark.slow
def test_spawn_workers_build_masks_in_the_collator():
    ds = build_dataset("synthetic", size=16, transform=build_transform(64, 0.3))
    loader = build_loader(ds, batch_size=4, num_workers=2, collate_fn=MaskCollator(MaskSpec(grid=4)),
                          multiprocessing_context="spawn")
    batches = EndlessBatches(loader)
    try:
        images, labels, masks = next(iter(batches))
    finally:
        batches.close()
    assert images.shape == (4, 3, 64, 64) and labels.shape == (4,)
    assert isinstance(masks, BatchMasks)
    assert (masks.target_valid.sum(1) + masks.context_valid.sum(1) == 16).all()


def _fake_cifar(root, n_per_batch=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": [int(x) for x in rng.integers(0, 10, n_per_batch)]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return root


@pytest.mark.slow
def test_run_reads_cifar10_from_disk(cli, tmp_path):
    root = _fake_cifar(tmp_path / "data")
    out = tmp_path / "c.json"
    res = cli("run", "--device", "cpu", "--data", "cifar10", "--data-path", str(root), *TINY_FLAGS,
              "--json", str(out), "-q")
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["config"]["bench"]["data"] == "cifar10"
    assert r["metrics"]["batch_size"]["achieved"] == 4
