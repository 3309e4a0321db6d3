"""``hjepa-bench validate``: the validation guide's validation run, then the criteria and the decision report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import output_path
from .common import (
    CONFIG_FLAGS,
    add_config_args,
    add_data_args,
    add_decision_args,
    config_label,
    int_flag,
    load_config,
    report_settings,
)

if TYPE_CHECKING:
    from ..plugin.manager import Plugins

#: ``--epochs`` is the run's length (default: the config's), not an override of training.epochs
FLAGS = [f for f in CONFIG_FLAGS if f != "epochs"]
#: a validation run is short (the guide's is 5 epochs); more is a full training
MAX_EPOCHS = 1000


def add_parser(sub: Any) -> None:
    va = sub.add_parser("validate", help="a short real training run, then criteria and the decision report",
                        description="The validation guide's validation run: real H-JEPA training (warm-up + cosine, "
                                    "EMA), upstream-layout checkpoints, feature quality per epoch, and at the end the "
                                    "success criteria and the decision report. Ctrl-C keeps what was measured.")
    add_config_args(va)
    va.add_argument("--epochs", type=int_flag(1, MAX_EPOCHS),
                    help=f"epochs, 1 to {MAX_EPOCHS} (default: the config's, 5 for quick_val)")
    va.add_argument("--device", default="auto", help="cpu | cuda | mps | auto")
    add_data_args(va, projection=False)  # it projects the run it ran, with its own data sizes
    va.add_argument("--out", metavar="DIR", default="hjepa-bench-validate",
                    help="checkpoints, validation.json and report.md (default ./hjepa-bench-validate)")
    va.add_argument("--feature-every", type=int_flag(0, MAX_EPOCHS), default=1, metavar="EPOCHS",
                    help="feature quality every N epochs (0: only at the end; default 1)")
    va.add_argument("--features-n", type=int_flag(2, 10**6), metavar="N", help="held-out images for feature quality")
    va.add_argument("--checkpoint-every", type=int_flag(1, MAX_EPOCHS), metavar="EPOCHS",
                    help="numbered checkpoint every N epochs (default: checkpoint.save_frequency)")
    va.add_argument("--max-steps-per-epoch", type=int_flag(1, 10**7), metavar="N", help="cap steps per epoch")
    va.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_decision_args(va)
    va.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..analysis.selfcheck import self_check_lines
    from ..analysis.verdicts import rejudge_record
    from ..measure.env import environment_fingerprint
    from ..measure.validation_record import validation_facts, validation_record
    from ..measure.validation_run import ValidationSettings, run_validation
    from ..options import config_option
    from ..plugin.manager import select_backend
    from ..report.markdown import write_report
    from ..report.run_text import validation_section, verdict_lines

    output_path(args.out, "--out", folder=True)
    rc = load_config(args, flags=FLAGS)
    backend = select_backend(plugins, args.device)
    values = rc.values
    epochs = values["training"]["epochs"] if args.epochs is None else args.epochs
    out = Path(args.out)
    settings = report_settings(args, plugins, title="hjepa-bench validation run")  # bad files fail before training
    vs = ValidationSettings(epochs=epochs, out_dir=out, feature_every_epochs=args.feature_every,
                            feature_n=args.features_n, checkpoint_every_epochs=args.checkpoint_every,
                            max_steps_per_epoch=args.max_steps_per_epoch)
    print(f"validation run: {epochs} epoch(s) of {config_label(values)} on {backend.name}; writing to {out}",
          file=sys.stderr)
    result = run_validation(values, backend, vs, progress=not args.quiet)
    env = environment_fingerprint(backend)
    # judged with the report's thresholds before the facts are read from it (write_report does the same)
    record = rejudge_record(validation_record(result, env), settings.thresholds)
    facts = validation_facts(result, record, settings.thresholds)
    v = dict(result["config"])
    # V is this run as it ran: its epochs, its own training and validation images (not CIFAR-10's)
    settings.options = [config_option(v, "V", f"this validation run: {v['training']['epochs']} epochs of "
                                              f"{result.get('train_size') or 0:,} images",
                                      dataset_size=result.get("train_size") or None,
                                      val_size=result.get("val_size"))] + settings.options
    settings.sources = [str(out / "validation.json")]
    status = result["status"]
    intro = [f"A real training run of {result['epochs_completed']} of {result['epochs_planned']} epoch(s) "
             f"({result['steps_per_epoch']} steps each) on {result['device']} at {result['precision']}, status "
             f"**{status}**" + (f" ({result['error']})" if result.get("error") else "") + ". Checkpoints (upstream "
             "layout) are in `checkpoints/`; every step, epoch and feature measurement is in `validation.json`."]
    analysis = write_report([record], out / "report.md", settings, sections=plugins.report_sections(),
                            facts=facts, intro=intro, extra=[("Validation run", validation_section(result))])
    print(verdict_lines(analysis))
    print("\n".join(self_check_lines((result.get("self_check") or {}).get("check"))))
    print(f"report: {out / 'report.md'}\ncheckpoints: {out / 'checkpoints'}")
    return {"ok": 0, "interrupted": 130}.get(status, 1)
