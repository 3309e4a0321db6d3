"""``hjepa-bench inspect``: parameters, tokens and FLOPs of a config, without training."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import add_config_args, load_config, print_json

if TYPE_CHECKING:
    from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    ins = sub.add_parser("inspect", help="parameters, tokens and FLOPs of a config (no training)")
    add_config_args(ins)
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace, plugins: Plugins) -> int:
    from tabulate import tabulate

    from ..hjepa.inspection import inspect_config

    rc = load_config(args, quiet=args.json)
    info = inspect_config(rc.values, batch_size=args.batch_size)
    if args.json:
        print_json(info)
        return 0
    p = info["params"]
    print(f"{info['model']} at {info['image_size']} px, batch {info['batch_size']}")
    print(f"params: {p['total']:,} total (incl. target encoder) / {p['trainable']:,} trainable")
    t = info["tokens_per_sample"]
    print(f"masked patches: {t['masked_frac_mean']:.0%} of {t['patches']} on average")
    rows = []
    for v in ("reference", "efficient"):
        f = info["flops_per_step"][v]
        tok = t[v]
        rows.append([v, f"{f['total'] / 1e9:.1f}", f"{f['by_module']['context_encoder_fwd_bwd'] / 1e9:.1f}",
                     f"{f['by_module']['target_encoder_fwd'] / 1e9:.1f}",
                     f"{f['by_module']['predictor_fwd_bwd'] / 1e9:.1f}",
                     tok["context_encoder"], tok["target_encoder"], tok["predictor"]])
    print(tabulate(rows, headers=["variant", "GFLOP/step", "context enc", "target enc", "predictor",
                                  "ctx tokens", "tgt tokens", "pred tokens"]))
    print(f"efficient / reference FLOPs: {info['efficient_vs_reference_flops']:.2f}"
          f"  (attention counted: {'yes' if info['attention_counted'] else 'NO'})")
    return 0
