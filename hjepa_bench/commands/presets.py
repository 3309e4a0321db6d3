"""``hjepa-bench presets``: the built-in configs (upstream H-JEPA's own), with their parameter counts."""
from __future__ import annotations

import argparse
from typing import Any

from tabulate import tabulate

from ..config import PRESETS_DIR, preset_names, preset_path, resolve_config
from ..plugin.manager import Plugins
from ..record import short_model_name
from .common import print_json


def add_parser(sub: Any) -> None:
    pre = sub.add_parser("presets", help="the built-in configs (--config NAME) and their parameter counts")
    pre.add_argument("--json", action="store_true", help="print JSON")
    pre.set_defaults(func=cmd_presets)


def preset_rows() -> list[dict[str, Any]]:
    """One row per preset: its file, model, schedule and parameter counts (counted on the meta device)."""
    from ..hjepa.inspection import param_counts  # torch and timm: only when the counts are asked for

    rows = []
    for name in preset_names():
        v = resolve_config(name).values
        m = v["model"]
        rows.append({"name": name, "file": str(preset_path(name)), "model": m["encoder_type"],
                     "hierarchies": m["num_hierarchies"], "predictor_depth": m["predictor"]["depth"],
                     "image_size": v["data"]["image_size"], "batch_size": v["data"]["batch_size"],
                     "epochs": v["training"]["epochs"], "params": param_counts(v)})
    return rows


def cmd_presets(args: argparse.Namespace, plugins: Plugins) -> int:
    rows = preset_rows()
    if args.json:
        print_json(rows)
        return 0
    print(tabulate([[r["name"], short_model_name(r["model"]), r["hierarchies"], r["predictor_depth"], r["image_size"],
                     r["batch_size"], r["epochs"], f"{r['params']['total']:,}", f"{r['params']['trainable']:,}"]
                    for r in rows],
                   headers=["preset", "model", "levels", "pred depth", "px", "batch", "epochs", "params (total)",
                            "trainable"]))
    print(f"use one with --config NAME in any command that reads a config; the files: {PRESETS_DIR}")
    return 0
