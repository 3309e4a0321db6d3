"""``hjepa-bench export``: the example reports' records (copies) as flat rows, checked against the JSONL;
the report links the export; bad input is one sentence and a non-zero exit."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from helpers import REPO

from hjepa_bench.cli import main
from hjepa_bench.record import label

EXAMPLES = ("example-cpu", "example-cluster")


@pytest.fixture()
def copies(tmp_path):
    for name in EXAMPLES:
        (tmp_path / name).mkdir()
        shutil.copy(REPO / "reports" / name / "results.jsonl", tmp_path / name / "results.jsonl")
    return tmp_path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read(path, fmt):
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "json":
        return pd.DataFrame(json.loads(path.read_text()))
    return pd.read_parquet(path)


def _same(a, b):
    if b is None:
        return a is None or (isinstance(a, float) and math.isnan(a))
    if isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12)
    return a == b


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_export_one_row_per_record_with_the_records_values(copies, example, fmt, capsys):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    d = copies / example
    assert main(["export", str(d), "--format", fmt]) == 0
    out = d / f"results.{fmt}"
    assert f"written to {out}" in capsys.readouterr().out
    df = _read(out, fmt)
    records = _records(d / "results.jsonl")
    assert len(df) == len(records)
    for (_, row), r in zip(df.iterrows(), records):
        assert row["label"] == label(r) and row["status"] == r["status"]
        assert _same(row["metrics.it_per_s"], r["metrics"].get("it_per_s"))
        assert _same(row["metrics.step_time_s.median"], r["metrics"]["step_time_s"].get("median"))
        assert row["config.data.batch_size"] == r["config"]["data"]["batch_size"]
        assert row["config.model.encoder_type"] == r["config"]["model"]["encoder_type"]
        assert json.loads(row["config.masking.mask_scale"]) == r["config"]["masking"]["mask_scale"]
        assert _same(row["probes.stability.cv_pct"], r["probes"]["stability"].get("cv_pct"))
        degradation = r["probes"]["stability"]["degradation"]
        assert _same(row["probes.stability.degradation.change_pct"], degradation["change_pct"])
        assert row["probes.loss.status"] == r["probes"]["loss"]["status"]
        assert isinstance(row["probes.loss.summary"], str) and row["probes.loss.summary"]
        ranks = (r.get("distributed") or {}).get("world_size", 1)
        assert row["world_size"] == ranks
        if r.get("distributed"):
            assert _same(row["distributed.job_samples_per_s"], r["distributed"]["job_samples_per_s"])
    assert not [c for c in df.columns if "series" in c or "ranks" in c.split(".")]  # no per-step lists


def test_several_directories_into_one_file_and_the_report_links_it(copies, capsys):
    out = copies / "all.csv"
    assert main(["export", str(copies / "example-cpu"), str(copies / "example-cluster"), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    n = [len(_records(copies / e / "results.jsonl")) for e in EXAMPLES]
    assert len(df) == sum(n) and sorted(set(df["node"].dropna())) == ["a", "b"]
    # the report of a sweep directory names the export command, and links an export written next to it
    d = copies / "example-cpu"
    assert main(["report", str(d), "--no-charts"]) == 0
    md = (d / "report.md").read_text()
    assert f"`hjepa-bench export {d} --format csv`" in md and "[results.csv]" not in md
    assert main(["export", str(d)]) == 0
    assert main(["report", str(d), "--no-charts"]) == 0
    assert "[results.csv](results.csv)" in (d / "report.md").read_text()


def test_export_bad_input_is_one_sentence(copies, capsys):
    def fails(*argv):
        with pytest.raises(SystemExit) as exc:
            rc = main(list(argv))
            raise SystemExit(rc)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, err
        return err

    assert "does not exist" in fails("export", str(copies / "nowhere"))
    bad = copies / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_bytes(b"\x00\x01 not a record\n" + (REPO / "reports/example-cpu/results.jsonl")
                                       .read_bytes())
    assert "is corrupt at line 1: not JSON" in fails("export", str(bad))  # not one row silently lost
    (bad / "results.jsonl").write_bytes(b"")
    assert "no result records" in fails("export", str(bad))
    assert "invalid choice: 'xlsx'" in fails("export", str(copies / "example-cpu"), "--format", "xlsx")


def test_parquet_without_pyarrow_says_how_to_install_it(copies):
    """pyarrow not importable (blocked in the child's import system): one sentence naming
    `pip install pyarrow`, exit 2, and no file written."""
    code = ("import sys; sys.modules['pyarrow'] = None; from hjepa_bench.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "export", str(copies / "example-cpu"), "--format", "parquet"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 2 and "pip install pyarrow" in res.stderr and res.stderr.count("\n") == 1
    assert not (copies / "example-cpu" / "results.parquet").exists()
