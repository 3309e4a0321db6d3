"""Command line: ``hjepa-bench COMMAND``.

The commands (one module each in :mod:`hjepa_bench.commands`):

* ``run``: measure one configuration and print a summary;
* ``sweep``: measure a grid of configs, each in its own process (resumable), then the decision report;
* ``report``: the decision report (markdown, charts, configs) from result directories;
* ``export``: result records as one flat table (csv, parquet, json), a row per record;
* ``validate``: the validation run (a short real training), then the criteria and the decision report;
* ``analyze``: judge a log of the upstream trainer like a sweep (``--follow``: while the trainer writes it);
* ``eval``: quick evaluation of a checkpoint (feature quality, kNN, linear probe) against random init;
* ``benchmark-report``: pytest-benchmark JSON as a markdown table against a baseline;
* ``inspect``: parameters, tokens and FLOPs of a config, without training;
* ``presets``: the built-in configs (``--config NAME``) and their parameter counts;
* ``devices``: which backends are available here, and why not;
* ``plugins``: loaded plugins, where they came from, and their hooks.

Every command takes ``-p MODULE`` (``-p no:NAME`` disables a plugin); a plugin may add flags of its
own (``hjepa_bench_add_options``).  Bad input ends with one sentence on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS
from .commands.common import list_flag
from .errors import UserError
from .measure.quiet import restore_all
from .plugin.manager import add_plugin_options, build_plugins


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


class _PrePass(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # the full parser reports bad input, once
        raise ValueError(message)


def _add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="load a plugin module (repeatable); -p no:NAME disables a plugin")


def plugin_args(argv: Sequence[str]) -> list[str]:
    """The ``-p`` values of a command line (before its command), read before the parser is built:
    the plugins they load may add flags."""
    pre = _PrePass(add_help=False, allow_abbrev=False)
    _add_plugin_flag(pre)
    try:
        return pre.parse_known_args(list(argv))[0].plugins
    except ValueError:  # (a -p without its module): the full parser says what is wrong
        return []


def build_parser(plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every command's parser, with the flags plugins add (``plugins``: the ``-p`` values)."""
    parser = _Parser(prog="hjepa-bench", description="Measure the real H-JEPA training step on this machine.")
    parser.add_argument("--version", action="version", version=f"hjepa-bench {__version__}")
    _add_plugin_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    add_plugin_options(sub.choices, plugins, list_flag)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(plugin_args(argv)).parse_args(argv)
        args.argv = argv  # as typed, for the resume hint
        plugins = build_plugins(args.plugins)
        return int(args.func(args, plugins) or 0)
    except UserError as exc:
        print(f"hjepa-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        restore_all()  # a run interrupted while a library's output was captured
        print("\nhjepa-bench: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
