"""What the commands share: flag types, the one flag -> config-key table, the argument groups
(configuration, data, probes, decision report), config loading and the report settings."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable

from ..analysis.decision import ReportSettings
from ..config import ResolvedConfig, resolve_config
from ..options import load_options
from ..record import dumps
from ..thresholds import load_thresholds

#: flag (its argparse dest) -> the dotted config key it overrides; every command that takes one
#: of these flags overrides the same key with it
CONFIG_FLAGS: dict[str, str] = {
    "model": "model.encoder_type",
    "batch_size": "data.batch_size",
    "workers": "data.num_workers",
    "hierarchies": "model.num_hierarchies",
    "predictor_depth": "model.predictor.depth",
    "encoder_depth": "model.encoder_depth",
    "img_size": "data.image_size",
    "precision": "bench.precision",
    "variant": "bench.variant",
    "seed": "seed",
    "epochs": "training.epochs",
    "workload": "bench.workload",
    "data": "bench.data",
    "data_path": "bench.data_path",
    "limit_samples": "bench.limit_samples",
    "persistent_workers": "bench.persistent_workers",
    "warmup_steps": "bench.warmup_steps",
    "min_steps": "bench.min_steps",
    "max_steps": "bench.max_steps",
    "max_time": "bench.max_time_s",
    "target_precision": "bench.target_rel_precision",
    "nproc_per_node": "bench.nproc_per_node",
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def config_overrides(args: argparse.Namespace, flags: Iterable[str] | None = None) -> dict[str, Any]:
    """Dotted overrides from the flags given (``flags``: only these; a flag a command lacks is None)."""
    names = CONFIG_FLAGS if flags is None else flags
    return {CONFIG_FLAGS[name]: getattr(args, name, None) for name in names}


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flags override the YAML file)")
    g.add_argument("--config", metavar="YAML", help="upstream H-JEPA YAML config (default: built-in quick_val)")
    g.add_argument("--model", help="vit_tiny | vit_small | vit_base | vit_large (or full timm names)")
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--workers", type=positive_int, help="DataLoader worker processes")
    g.add_argument("--hierarchies", type=positive_int, help="hierarchy levels (1-4)")
    g.add_argument("--predictor-depth", type=positive_int)
    g.add_argument("--encoder-depth", type=positive_int, help="ViT blocks (default 12; fewer for quick tests)")
    g.add_argument("--img-size", type=positive_int, help="image size in pixels (multiple of 16)")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    g.add_argument("--variant", choices=["reference", "efficient"])
    g.add_argument("--seed", type=int)


def add_data_args(p: argparse.ArgumentParser, *, samples: bool = True) -> None:
    """--data, --data-path and (``samples``) --limit-samples and --[no-]persistent-workers."""
    p.add_argument("--data", choices=["synthetic", "cifar10"], help="default synthetic (CIFAR-shaped, in memory)")
    p.add_argument("--data-path", metavar="DIR", help="CIFAR-10 python-format folder (never downloaded)")
    if not samples:
        return
    p.add_argument("--limit-samples", type=positive_int, metavar="N", help="use only the first N training samples")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--persistent-workers", dest="persistent_workers", action="store_true", default=None,
                    help="keep DataLoader workers between epochs")
    pw.add_argument("--no-persistent-workers", dest="persistent_workers", action="store_false",
                    help="restart workers every epoch, as upstream does (default)")


def add_probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", metavar="NAME,...",
                   help="probes to run: names and the groups cheap, all, none (default: cheap; see hjepa-bench plugins)")
    p.add_argument("--profile", action="store_true", help="also run the profiler probe (torch.profiler traces)")


def add_decision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decision report")
    g.add_argument("--budget-hours", type=positive_float, metavar="H",
                   help="time you can give the full run; default: each option's own window (A 2-3 h, C 6-7 h, B 12-14 h)")
    g.add_argument("--options-file", metavar="YAML", help="your own training options (options: [...]), added to A, B, C")
    g.add_argument("--thresholds", metavar="YAML", help="override thresholds (names as printed in the report)")


def load_config(args: argparse.Namespace, *, quiet: bool = False, flags: Iterable[str] | None = None) -> ResolvedConfig:
    """The config of ``--config`` with the flags on top (``flags``: only these); warnings on stderr."""
    rc = resolve_config(args.config, config_overrides(args, flags))
    if not quiet:
        for line in rc.warnings():
            print(f"warning: {line}", file=sys.stderr)
    return rc


def report_settings(args: argparse.Namespace, *, options_file: str | None = None,
                    title: str = "hjepa-bench report") -> ReportSettings:
    """Thresholds, options and budget for a decision report, from the common flags."""
    return ReportSettings(thresholds=load_thresholds(getattr(args, "thresholds", None)),
                          options=load_options(options_file or getattr(args, "options_file", None)),
                          budget_hours=getattr(args, "budget_hours", None), title=title)


def print_json(data: Any) -> None:
    print(dumps(data))


def config_label(values: dict[str, Any]) -> str:
    """One line naming a resolved config (workload, model, levels, batch, size, workers, precision)."""
    m, d, b = values["model"], values["data"], values["bench"]
    return (f"{b['workload']} {b['variant']} | {m['encoder_type']} D={m['embed_dim']} depth {m['encoder_depth']} | "
            f"{m['num_hierarchies']} levels, predictor depth {m['predictor']['depth']} | batch {d['batch_size']} | "
            f"{d['image_size']} px | {d['num_workers']} workers | {b['precision']}")
