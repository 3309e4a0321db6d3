"""Shared test constants and helpers: tiny real configs (CPU, 64 px, shallow ViT) and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hjepa_bench.config import preset_path, resolve_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
#: upstream H-JEPA's config files as upstream ships them (keys and values; what "loads unchanged" is tested on)
UPSTREAM_CONFIGS = DATA / "upstream-configs"
#: the state_dict layouts (key, shape, dtype) of upstream's model for two presets
UPSTREAM_STATE_DICTS = {name: DATA / f"upstream-state-dict-{name}.tsv" for name in ("quick_val", "full_100epoch")}
#: the built-in quick_val preset's file
QUICK_VAL = preset_path("quick_val")

TINY = {
    "data.image_size": 64,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "model.encoder_depth": 2,
    "model.predictor.depth": 1,
    "bench.synthetic_size": 64,
    "bench.warmup_steps": 1,
    "bench.min_steps": 3,
    "bench.max_steps": 6,
    "bench.max_time_s": 30.0,
}
TINY_FLAGS = ["--img-size", "64", "--batch-size", "4", "--workers", "0", "--encoder-depth", "2",
              "--predictor-depth", "1", "--warmup-steps", "1", "--min-steps", "3", "--max-steps", "6"]


def tiny_config(**overrides):
    """Resolved tiny config values (dotted-key overrides on top of TINY)."""
    return resolve_config(None, {**TINY, **overrides}).values


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run the real console entry (python -m hjepa_bench) in a child process."""
    full_env = dict(os.environ)
    full_env.pop("HJEPA_BENCH_PLUGINS", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "hjepa_bench", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)



#: an option whose model config is the tiny test config (so tiny runs measure it), with a window it fits
TINY_OPTION = """options:
  - name: T
    title: Tiny option
    hours: [0, 100000]
    priority: 7
    model: {encoder_depth: 2, predictor: {depth: 1}}
    data: {image_size: 64, batch_size: 4, num_workers: 0}
    training: {epochs: 2, warmup_epochs: 1}
"""


def md_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after ``heading``, as one dict per row (header -> cell)."""
    block, started = [], False
    for line in text[text.index(heading):].splitlines()[1:]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            started = True
        elif started:
            break
    return [dict(zip(block[0], cells)) for cells in block[2:]]
