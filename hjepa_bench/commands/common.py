"""What the commands share: flag types, the one flag -> config-key table, the argument groups
(configuration, data, probes, decision report), config loading and the report settings."""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..config import (
    DEFAULTS,
    PRECISION_SETTINGS,
    VARIANTS,
    ResolvedConfig,
    check_value,
    default_workers,
    is_finite_number,
    resolve_config,
)
from ..errors import UserError

if TYPE_CHECKING:
    from ..analysis.report_data import ReportSettings
    from ..plugin.manager import Plugins

# Only light modules are imported at the top of a command module: the parser of every command is
# built on each start, so ``hjepa-bench --help`` must not import torch, timm, pandas or matplotlib
# (a command imports what it needs when it runs; tests/test_startup.py checks it).

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
    "dataset_size": "bench.dataset_size",
    "val_size": "bench.val_size",
}


def _number_or_text(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_number(text: str) -> int | float:
    value = _number_or_text(text)
    if isinstance(value, str):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return value


def int_flag(lo: int, hi: int) -> Callable[[str], int]:
    """A flag type: a whole number in [lo, hi] (the bound keeps a typo like 10**20 from hanging a run)."""
    def parse(text: str) -> int:
        value = _parse_number(text)
        if not isinstance(value, int):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range [{lo}, {hi}]")
        return value
    return parse


def positive_number(hi: float = 1e7) -> Callable[[str], float]:
    """A flag type: a finite number above 0 and at most ``hi`` (NaN and infinity are refused)."""
    def parse(text: str) -> float:
        value = float(_parse_number(text))
        if not is_finite_number(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not 0 < value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range (0, {hi:g}]")
        return value
    return parse


@functools.cache
def config_flag(key: str) -> Callable[[str], int | float]:
    """A flag type for the flag that overrides config ``key``: checked by the config's own check of
    that key (config.SCHEMA), so a flag and a config file accept the same values.  One parser per
    key, so every command's flag for the same key is the same flag."""
    def parse(text: str) -> int | float:
        value = _number_or_text(text)
        try:
            check_value(key, value)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
        return value
    return parse


def list_flag(kind: Callable[[str], Any] = str) -> Callable[[str], list[Any]]:
    """A flag type: a comma-separated list (``16,32``), no empty items, no spaces; ``kind`` per item."""
    def parse(text: str) -> list[Any]:
        items = text.split(",")
        if any(not t or t != t.strip() for t in items):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list like 16,32 "
                                             "(no empty items, no spaces)")
        if kind is str:
            return items
        out = []
        for t in items:
            value = _parse_number(t)
            if not isinstance(value, int):
                raise argparse.ArgumentTypeError(f"{t!r} in {text!r} is not a whole number")
            out.append(value)
        return out
    return parse


def config_overrides(args: argparse.Namespace, flags: Iterable[str] | None = None) -> dict[str, Any]:
    """Dotted overrides from the flags given (``flags``: only these; a flag a command lacks is None)."""
    names = CONFIG_FLAGS if flags is None else flags
    return {CONFIG_FLAGS[name]: getattr(args, name, None) for name in names}


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (flags override the YAML file)")
    g.add_argument("--config", metavar="YAML|PRESET",
                   help="upstream H-JEPA YAML file or a preset name (hjepa-bench presets; default: quick_val)")
    g.add_argument("--model", help="vit_tiny | vit_small | vit_base | vit_large (or full timm names)")
    g.add_argument("--batch-size", type=config_flag("data.batch_size"))
    g.add_argument("--workers", type=config_flag("data.num_workers"), help="DataLoader worker processes")
    g.add_argument("--hierarchies", type=config_flag("model.num_hierarchies"), help="hierarchy levels (1-4)")
    g.add_argument("--predictor-depth", type=config_flag("model.predictor.depth"))
    g.add_argument("--encoder-depth", type=config_flag("model.encoder_depth"),
                   help="ViT blocks (default 12; fewer for quick tests)")
    g.add_argument("--img-size", type=config_flag("data.image_size"), help="image size in pixels (multiple of 16)")
    g.add_argument("--precision", choices=PRECISION_SETTINGS)
    g.add_argument("--variant", choices=VARIANTS)
    g.add_argument("--seed", type=config_flag("seed"), help="0 to 2**32-1")


def add_data_args(p: argparse.ArgumentParser, *, training_loader: bool = True, projection: bool = True) -> None:
    """The flags that choose the data, the same names and meanings on every command that reads a
    data set: --data, --data-path, --limit-samples (the first N images of the training split) and,
    for commands that train through a DataLoader restarted every epoch (``training_loader``),
    --[no-]persistent-workers."""
    p.add_argument("--data", choices=["synthetic", "cifar10"], help="default synthetic (CIFAR-shaped, in memory)")
    p.add_argument("--data-path", metavar="DIR", help="CIFAR-10 python-format folder (never downloaded)")
    p.add_argument("--limit-samples", type=config_flag("bench.limit_samples"), metavar="N",
                   help="use only the first N training samples")
    if not training_loader:
        return
    if projection:
        p.add_argument("--dataset-size", type=config_flag("bench.dataset_size"), metavar="N",
                       help="training images of the full run projected for this config (default: the --data-path "
                            "folder's, else CIFAR-10's 50,000)")
        p.add_argument("--val-size", type=config_flag("bench.val_size"), metavar="N",
                       help="validation images per epoch of that run (default: the --data-path folder's test "
                            "split, else 10,000, or a fifth of --dataset-size)")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--persistent-workers", dest="persistent_workers", action="store_true", default=None,
                    help="keep DataLoader workers between epochs")
    pw.add_argument("--no-persistent-workers", dest="persistent_workers", action="store_false",
                    help="restart workers every epoch, as upstream does (default)")


def add_measuring_args(g: Any) -> None:
    """--warmup-steps, --min-steps, --max-steps, --max-time: one meaning and one default (the
    config's bench section) on every command that measures a config (run, sweep)."""
    b = DEFAULTS["bench"]
    g.add_argument("--warmup-steps", type=config_flag("bench.warmup_steps"), metavar="N",
                   help=f"steps run before measuring, not timed (default {b['warmup_steps']})")
    g.add_argument("--min-steps", type=config_flag("bench.min_steps"), metavar="N",
                   help=f"measured steps every config gets, even past --max-time (up to a hard cap of twice the "
                        f"time the warm-up's steps predict; default {b['min_steps']})")
    g.add_argument("--max-steps", type=config_flag("bench.max_steps"), metavar="N",
                   help=f"most measured steps (default {b['max_steps']})")
    g.add_argument("--max-time", type=config_flag("bench.max_time_s"), metavar="SECONDS",
                   help=f"time target of the measured loop per config; it stops earlier once the median step "
                        f"time is known to +-{b['target_rel_precision'] * 100:g}%% (default {b['max_time_s']:g})")


def add_probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", metavar="NAME,...",
                   help="probes to run: names and the groups cheap, all, none "
                        "(default: cheap; see hjepa-bench plugins)")
    p.add_argument("--profile", action="store_true", help="also run the profiler probe (torch.profiler traces)")


def add_decision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decision report")
    g.add_argument("--budget-hours", type=positive_number(), metavar="H",
                   help="time you can give the full run; default: each option's own window "
                        "(A 2-3 h, C 6-7 h, B 12-14 h)")
    g.add_argument("--options-file", metavar="YAML",
                   help="your own training options (options: [...]), added to A, B, C")
    g.add_argument("--thresholds", metavar="YAML", help="override thresholds (names as printed in the report)")


def load_config(args: argparse.Namespace, *, quiet: bool = False, flags: Iterable[str] | None = None) -> ResolvedConfig:
    """The config of ``--config`` with the flags on top (``flags``: only these); warnings on stderr.
    Without --config and --workers, the built-in worker count is capped at the cores available."""
    overrides = config_overrides(args, flags)
    if args.config is None and overrides.get("data.num_workers", 0) is None:
        overrides["data.num_workers"] = default_workers(DEFAULTS["data"]["num_workers"])
    rc = resolve_config(args.config, overrides)
    if not quiet:
        for line in rc.warnings():
            print(f"warning: {line}", file=sys.stderr)
    return rc


def fill_dataset_sizes(values: dict[str, Any]) -> None:
    """``bench.dataset_size`` / ``bench.val_size`` from the CIFAR-10-format folder the config reads
    (its training and test splits), when the config does not set them: the full run projected for
    this config trains on that folder."""
    bench = values["bench"]
    if bench.get("data") != "cifar10" or bench.get("dataset_size") is not None:
        return
    path = bench.get("data_path") or values["data"].get("data_path")
    if not path:
        return
    from ..hjepa.data import CIFAR10Folder
    bench["dataset_size"] = len(CIFAR10Folder(path, train=True))
    if bench.get("val_size") is None:
        bench["val_size"] = len(CIFAR10Folder(path, train=False))


def report_settings(args: argparse.Namespace, plugins: Plugins, *, options_file: str | None = None,
                    title: str = "hjepa-bench report") -> ReportSettings:
    """Thresholds, options and budget for a decision report, from the common flags; the report asks
    ``plugins``' probes (those ``-p`` loaded included) about the records' entries."""
    from ..analysis.report_data import ReportSettings
    from ..options import load_options
    from ..thresholds import load_thresholds

    return ReportSettings(thresholds=load_thresholds(getattr(args, "thresholds", None)),
                          options=load_options(options_file or getattr(args, "options_file", None)),
                          budget_hours=getattr(args, "budget_hours", None), title=title, probes=plugins.probes())


def print_json(data: Any) -> None:
    from ..record import dumps

    print(dumps(data))


def config_label(values: dict[str, Any]) -> str:
    """One line naming a resolved config (workload, model, levels, batch, size, workers, precision)."""
    m, d, b = values["model"], values["data"], values["bench"]
    return (f"{b['workload']} {b['variant']} | {m['encoder_type']} D={m['embed_dim']} depth {m['encoder_depth']} | "
            f"{m['num_hierarchies']} levels, predictor depth {m['predictor']['depth']} | batch {d['batch_size']} | "
            f"{d['image_size']} px | {d['num_workers']} workers | {b['precision']}")
