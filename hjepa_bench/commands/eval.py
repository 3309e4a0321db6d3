"""``hjepa-bench eval``: quick evaluation of a checkpoint (feature quality, kNN, linear probe) against random init."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import output_path
from .common import add_data_args, config_flag, config_overrides, int_flag

if TYPE_CHECKING:
    from ..plugin.manager import Plugins

#: images per split at most (synthetic images are made at the size asked for)
MAX_IMAGES = 10**6


def add_parser(sub: Any) -> None:
    ev = sub.add_parser("eval",
                        help="quick evaluation of a checkpoint: feature quality, kNN and linear probe vs random init",
                        description="Load an upstream-format checkpoint (model_state_dict) and measure its EMA target "
                                    "encoder per hierarchy level against the same encoder at random initialisation.")
    ev.add_argument("--checkpoint", required=True, metavar="PATH", help=".pth with model_state_dict")
    ev.add_argument("--config", metavar="YAML|PRESET",
                    help="the model's config, a file or preset (upstream checkpoints carry none)")
    add_data_args(ev, training_loader=False)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--img-size", type=config_flag("data.image_size"))
    ev.add_argument("--encoder-depth", type=config_flag("model.encoder_depth"))
    ev.add_argument("--n-train", type=int_flag(2, MAX_IMAGES),
                    help="training images for kNN / linear probe (default 5000; the first ones of the training "
                         "split, so at most --limit-samples)")
    ev.add_argument("--n-test", type=int_flag(1, MAX_IMAGES), help="test images (default 1000; the test split, which "
                                                                     "--limit-samples does not cut)")
    ev.add_argument("--batch-size", type=config_flag("data.batch_size"), default=64)
    ev.add_argument("--workers", type=config_flag("data.num_workers"), default=0)
    ev.add_argument("--seed", type=config_flag("seed"), default=0)
    ev.add_argument("--out", metavar="DIR", help="write eval.md and eval.json here")
    ev.add_argument("-q", "--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..measure.evaluate import EvalSettings, evaluate_checkpoint
    from ..plugin.manager import select_backend
    from ..record import write_json
    from ..report.run_text import render_eval_markdown

    if args.out:
        output_path(args.out, "--out", folder=True)
    backend = select_backend(plugins, args.device)
    # only these flags change the model's config; --batch-size, --workers and --seed are the evaluation's own
    overrides = config_overrides(args, ("img_size", "encoder_depth"))
    settings = EvalSettings(config_path=args.config, overrides=overrides, device=backend.name,
                            data=args.data or "synthetic", data_path=args.data_path, n_train=args.n_train,
                            n_test=args.n_test, limit_samples=args.limit_samples,
                            batch_size=args.batch_size, seed=args.seed,
                            progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)),
                            num_workers=args.workers, sync=backend.synchronize)
    result = evaluate_checkpoint(args.checkpoint, settings)
    md = render_eval_markdown(result)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.md").write_text(md)
        write_json(result, out / "eval.json")
        print(f"written: {out / 'eval.md'}, {out / 'eval.json'}", file=sys.stderr)
    return 0
