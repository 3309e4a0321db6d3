"""Fixtures of the fuzz suite: the in-process runtime (one fixture holds the sentinel trick,
see harness.py) and the golden inputs every generator mutates, made by the CLI itself."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import generators as gen
import pytest
from harness import (
    RECORDER,
    Special,
    Target,
    cached_entry_points,
    cached_parser,
    engine_sentinel,
    golden_checkpoint,
    invoke,
)


@dataclass
class FuzzEnv:
    base: Path
    golden: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def target(self, name: str) -> Target:
        folder = self.base / name
        folder.mkdir(exist_ok=True)
        t = Target(name, folder, defaults=self.files())
        self.targets.append(t)
        return t

    def files(self, command: str = "") -> dict[str, Any]:
        """The golden inputs, linked into a case folder."""
        g = self.golden
        return {"tiny.yaml": Special("symlink", target=str(g / "tiny.yaml")),
                "cfg.yaml": Special("symlink", target=str(g / "cfg.yaml")),
                "train.log": Special("symlink", target=str(g / "train.log")),
                "ck.pth": Special("symlink", target=str(g / "ck.pth")),
                "res/results.jsonl": Special("symlink", target=str(g / "res" / "results.jsonl")),
                "now.json": Special("symlink", target=str(g / "now.json"))}


@pytest.fixture(scope="session")
def fuzz_runtime():
    """In-process runtime for every fuzz case: one torch thread (small ops on a busy 2-core
    machine are 4-5x faster), plugin entry points found once, the argparse parser built once,
    and the engine sentinel."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with cached_entry_points(), cached_parser(), engine_sentinel():
            invoke(["plugins"], timeout=300)  # first call: the lazy imports
            yield
    finally:
        torch.set_num_threads(threads)


def _check(res: Any, what: str) -> None:
    assert res.exc is None and not res.hang, f"{what}: {res.tb or res.err}"


@pytest.fixture(scope="session")
def fuzz(fuzz_runtime, tmp_path_factory):
    """Golden inputs: the tiny config, two result records from real tiny runs, a checkpoint in
    validate's layout (its model, caught at the sentinel right after setup), an upstream log
    and a pytest-benchmark JSON."""
    import torch

    t0 = time.perf_counter()
    base = tmp_path_factory.mktemp("fuzz")
    g = base / "golden"
    (g / "res").mkdir(parents=True)
    (g / "tiny.yaml").write_text(gen.TINY_YAML)
    (g / "cfg.yaml").write_text(gen.SWEEP_YAML)
    (g / "train.log").write_text(gen.LOG_TEXT)
    (g / "now.json").write_text(json.dumps(gen.BENCH_JSON))
    records = []
    for i, extra in enumerate((["--probes", "stability,loss,memory,bottleneck"],
                               ["--probes", "none", "--batch-size", "4", "--variant", "efficient"])):
        out = g / f"r{i}.json"
        res = invoke(["run", "--device", "cpu", "--config", str(g / "tiny.yaml"), "-q", "--json", str(out), *extra],
                     engine=True, timeout=300)
        _check(res, "golden run")
        assert res.rc == 0, res.err
        records.append(json.loads(out.read_text()))
    (g / "res" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    res = invoke(["validate", "--device", "cpu", "--config", str(g / "tiny.yaml"), "--epochs", "1", "--out",
                  str(g / "val"), "-q"], timeout=300)
    _check(res, "golden checkpoint")
    assert res.engine, res.err
    checkpoint = golden_checkpoint(res.engine_args[0])
    torch.save(checkpoint, g / "ck.pth")
    env = FuzzEnv(base=base, golden=g, records=records, checkpoint=checkpoint)
    res = invoke(["eval", "--checkpoint", str(g / "ck.pth"), "--device", "cpu", "-q", "--n-train", "20",
                  "--n-test", "10"], timeout=300)
    assert res.engine, f"the golden checkpoint does not load: {res.err} {res.tb}"
    print(f"\nfuzz: golden inputs made in {time.perf_counter() - t0:.1f} s")
    yield env


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if RECORDER.counts:
        total = sum(RECORDER.counts.values())
        terminalreporter.write_line(
            f"fuzz cases: {total} ({', '.join(f'{k} {v}' for k, v in sorted(RECORDER.counts.items()))})")
