"""``hjepa-bench export``: result records as one flat table (CSV, parquet or JSON), a row per record."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError, output_path
from ..plugin.manager import Plugins


def add_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="result records as one flat table (csv, parquet, json): a row per record",
                        description="Flatten the records of sweep directories (or results.jsonl files) into one row "
                                    "each: config keys, status, the main metrics and each probe's headline figures.")
    ex.add_argument("dirs", nargs="+", metavar="DIR", help="sweep directories (or results.jsonl files)")
    ex.add_argument("--format", choices=("csv", "parquet", "json"),
                    help="default: from --out's suffix, else csv (parquet needs pyarrow)")
    ex.add_argument("--out", metavar="FILE",
                    help="default DIR/results.FORMAT for one directory, else ./results.FORMAT")
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..measure.results import RESULTS_NAME, entry_models, read_results  # (pandas: loaded when the command runs)
    from ..report.export import FORMATS, flat_frame, parquet_missing, write_frame

    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lstrip(".") if args.out else ""
        fmt = suffix if suffix in FORMATS else "csv"
    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not d.exists():
            raise UserError(f"{d} does not exist; give sweep directories (with results.jsonl) or results files.")
    folder = dirs[0] if len(dirs) == 1 and dirs[0].is_dir() else Path(".")
    out = Path(args.out) if args.out else folder / f"results.{fmt}"
    output_path(out, "--out")
    if fmt == "parquet":
        why = parquet_missing()
        if why:
            raise UserError(why)
    records = []
    for d in dirs:  # strict: a flat table that silently lost rows would mislead; one bad line is an error
        path = d / RESULTS_NAME if d.is_dir() else d
        if not path.is_file():
            raise UserError(f"no results found at {d} (expected {path}).")
        loaded = read_results(path, strict=True, models=entry_models(plugins))
        if loaded.truncated_tail is not None:
            print(f"warning: {path}: its incomplete last line (a sweep killed while writing it) is not a record; "
                  "left out", file=sys.stderr)
        records += [{**r, "_source": str(path)} for r in loaded.records]
    if not records:
        raise UserError(f"no result records in {', '.join(map(str, dirs))}.")
    df = flat_frame(records, plugins.probes())
    write_frame(df, out, fmt)
    print(f"export: {len(df)} rows x {len(df.columns)} columns ({fmt}) written to {out}")
    return 0
