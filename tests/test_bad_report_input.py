"""Bad input in the files the report side reads gets one sentence (exit 2) or, for a
bad line of results.jsonl in a report, a warning that names the line; never a traceback.

Records are the hand-made ones of ``records_factory`` written as real results files; every
command runs in-process through ``hjepa_bench.cli.main``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from records_factory import GOOD_LOSS, make_record, option_values, quick_val_values
from test_logparse import build_log

from hjepa_bench.cli import main
from hjepa_bench.measure.results import check_result, read_results
from hjepa_bench.record import SCHEMA_VERSION, RecordError


def _run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, [ln for ln in captured.err.splitlines() if ln.strip()], captured.out


def _one_sentence(code: int, err: list[str]) -> str:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("hjepa-bench: error: "), err
    return err[0]


def _records(n: int = 3) -> list[dict]:
    return [make_record(quick_val_values(**{"data.batch_size": b}), it_per_s=2.0 + b / 100, loss=GOOD_LOSS)
            for b in (16, 32, 64)[:n]]


def _results(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


# --------------------------------------------------------------------------- the record schema
def _loss_spikes_true(r):
    r["probes"]["loss"]["warmup_spikes"] = True


def _group_five(r):
    r["sweep"] = {"key": "k", "group": 5, "batch_size": 32}


BAD_RECORDS = [
    (lambda r: r["probes"].update(loss=5), "probes.loss must be an object with a status, not 5"),
    (_loss_spikes_true, "probes.loss.warmup_spikes must be an object or null, not True"),
    (lambda r: r["probes"]["stability"].pop("status"), "probes.stability.status is missing"),
    (lambda r: r["config"]["model"]["predictor"].update(depth=1.5),
     "config.model.predictor.depth must be an integer >= 1, not 1.5"),
    (lambda r: r["config"]["data"].update(batch_size=0), "config.data.batch_size must be an integer >= 1, not 0"),
    (lambda r: r["env"].update(backend="x/../../../../F"), "env.backend must be a plain name"),
    (lambda r: r["metrics"].update(it_per_s=0), "metrics.it_per_s must be a number > 0, not 0"),
    (lambda r: r["metrics"]["step_time_s"].update(median="1"), "metrics.step_time_s.median must be a number"),
    (lambda r: r["series"].update(loss=[1.0, "x"]), "series.loss must be a list of numbers or nulls"),
    (_group_five, "sweep.group must be a list of plain values, not 5"),
    (lambda r: r.update(status="fine"), "status must be one of ok, oom"),
]


@pytest.mark.parametrize("change, message", BAD_RECORDS)
def test_validate_record_checks_the_fields_the_readers_use(change, message):
    """The record's own fields (record.check_record) and each probe's entry as its probe types it."""
    record = _records(1)[0]
    check_result(record)
    change(record)
    with pytest.raises(RecordError, match=re.escape(message)):
        check_result(record)


@pytest.mark.parametrize("text, message", [
    (f'"schema_version": {SCHEMA_VERSION}, "x": NaN', "x is nan, not a finite number"),
    (f'"schema_version": {SCHEMA_VERSION}, "x": Infinity', "x is inf, not a finite number"),
    (f'"schema_version": {SCHEMA_VERSION}, "x": 1e400', "x is inf, not a finite number"),
    (f'"schema_version": {SCHEMA_VERSION}, "x": ' + "[" * 40 + "]" * 40, "nests deeper than 32 levels"),
    (f'"schema_version": {SCHEMA_VERSION}, "x": ' + "[" * 100000 + "]" * 100000, "nests deeper than 32 levels"),
    (f'"schema_version": {SCHEMA_VERSION}, "x": ' + "9" * 30, "an integer beyond 2**64"),
])
def test_loads_refuses_what_json_loads_lets_through(text, message):
    """json.loads reads NaN, Infinity and 1e400 as floats and recurses on deep nesting; a
    record is finite JSON of bounded depth."""
    from hjepa_bench.record import loads

    good = json.dumps(_records(1)[0])
    line = good.replace(f'"schema_version": {SCHEMA_VERSION}', text, 1)
    assert line != good
    with pytest.raises(RecordError, match=re.escape(message)):
        loads(line)


# --------------------------------------------------------------------------- report: a bad line is skipped
def test_report_skips_bad_lines_with_a_warning_naming_each(tmp_path, capsys):
    """A results line that is not a valid record (`"probes": {"loss": 5}`, a NaN literal, a cut-off
    last line) is skipped with a warning naming its line, on stderr and in the report; the valid
    records are reported."""
    good, other, with_nan, cut = (json.dumps(r) for r in _records(3) + _records(1))
    bad_probe = json.dumps({**json.loads(other), "probes": {"loss": 5}})
    with_nan = with_nan.replace('"it_per_s": 2.64', '"it_per_s": NaN', 1)
    assert "NaN" in with_nan
    folder = _results(tmp_path / "res", [good, bad_probe, with_nan, cut[: len(cut) // 2]])
    (folder / "results.jsonl").write_text((folder / "results.jsonl").read_text().rstrip("\n"))  # cut: no newline
    out = tmp_path / "rep" / "report.md"
    code, err, stdout = _run(capsys, "report", str(folder), "--no-charts", "--out", str(out))
    assert code == 0, err
    assert "Traceback" not in "\n".join(err)
    path = folder / "results.jsonl"
    assert err[:2] == [
        f"warning: {path} line 2: not a valid record (probes.loss must be an object with a status, not 5); skipped",
        f"warning: {path} line 3: not a valid record (metrics.it_per_s is nan, not a finite number); skipped",
    ]
    assert len(err) == 3 and err[2].startswith(f"warning: {path} line 4: an incomplete last line (not JSON (")
    assert err[2].endswith("; a sweep killed while writing it leaves one); skipped")
    assert "(1 records;" in stdout
    text = out.read_text()
    assert "**3 line(s) of the results were skipped** (not valid records):" in text
    assert f"- {path} line 2: not a valid record (probes.loss must be an object" in text
    assert json.loads((out.parent / "report.json").read_text())["skipped"][2].startswith(f"{path} line 4:")


def test_report_with_no_valid_record_is_one_error_after_the_warnings(tmp_path, capsys):
    folder = _results(tmp_path / "bad", ['{"a": 1}', "[1, 2]"])
    code, err, _ = main(["report", str(folder)]), capsys.readouterr().err.strip().splitlines(), None
    assert code == 2 and len(err) == 3
    assert "line 1: not a valid record (schema_version is missing)" in err[0]
    assert "line 2: not a valid record (a record must be a JSON object, not [1, 2])" in err[1]
    assert err[2] == (f"hjepa-bench: error: no valid result records in {folder} (2 line(s) skipped, see the "
                      "warnings).")


# --------------------------------------------------------------------------- resume: a bad line is an error
def test_resume_refuses_a_bad_record_naming_its_line(tmp_path, capsys):
    """A resumed sweep whose results file holds a record of the wrong types (a `sweep.group` of 5)
    gets one sentence naming the line, exit 2, and the file is left as it was."""
    recs = _records(2)
    recs[1]["status"], recs[1]["sweep"] = "oom", {"key": "k", "group": 5, "batch_size": 32}
    folder = _results(tmp_path / "sw", [json.dumps(r) for r in recs])
    before = (folder / "results.jsonl").read_bytes()
    code, err, _ = _run(capsys, "sweep", "--device", "cpu", "--batch-sizes", "2", "--workers", "0", "--options",
                        "none", "--out", str(folder), "-q")
    line = _one_sentence(code, err)
    assert f"{folder / 'results.jsonl'} is corrupt at line 2: not a valid record (sweep.group must be a list" in line
    assert (folder / "results.jsonl").read_bytes() == before
    assert read_results(folder / "results.jsonl").skipped[0].line == 2


# --------------------------------------------------------------------------- the backend names a file
def test_a_backend_name_from_a_record_cannot_write_outside_the_report(tmp_path, capsys):
    """A record with backend "x/../../../../F" (an option measured on two machines names its config
    configs/option_{name}_{machine}.yaml) is skipped as not valid, and nothing is written outside the
    report folder, even when the folder the path passes through exists."""
    mine = make_record(option_values("A"), it_per_s=3.0, fingerprint="m1")
    theirs = make_record(option_values("A"), it_per_s=3.0, fingerprint="m2", backend="x/../../../../F")
    folder = _results(tmp_path / "a" / "b" / "res", [json.dumps(mine), json.dumps(theirs)])
    report_dir = tmp_path / "a" / "b" / "c" / "rep"
    (report_dir / "configs" / "option_A_x").mkdir(parents=True)  # the folder the escape passes through
    before = {p for p in tmp_path.rglob("*") if report_dir not in p.parents and p != report_dir}
    code, err, _ = _run(capsys, "report", str(folder), "--no-charts", "--out", str(report_dir / "report.md"))
    assert code == 0, err
    assert any("line 2: not a valid record (env.backend must be a plain name" in e for e in err)
    after = {p for p in tmp_path.rglob("*") if report_dir not in p.parents and p != report_dir}
    assert after == before, after - before
    assert not list(tmp_path.rglob("F.yaml"))


def test_write_report_keeps_a_machine_name_inside_the_configs_folder(tmp_path):
    """The file name itself is made safe too (a training log's device, say, is not validated)."""
    from hjepa_bench.analysis.report_data import ReportSettings
    from hjepa_bench.report.markdown import write_report

    mine = make_record(option_values("A"), it_per_s=3.0, fingerprint="m1")
    theirs = make_record(option_values("A"), it_per_s=3.0, fingerprint="m2", backend="x/../../../../F")
    out = tmp_path / "deep" / "er" / "rep"
    (out / "configs" / "option_A_x").mkdir(parents=True)
    analysis = write_report([mine, theirs], out / "report.md", ReportSettings(charts=False))
    names = sorted(r["config_file"] for r in analysis["matrix"] if r["option"] == "A")
    assert names == ["configs/option_A_cpu.yaml", "configs/option_A_x_F.yaml"]
    assert (out / "configs" / "option_A_x_F.yaml").is_file()
    assert not list(tmp_path.rglob("F.yaml"))


# --------------------------------------------------------------------------- options files
OPTION = {"name": "T", "title": "Tiny", "hours": [0, 1000], "priority": 7, "expected": "a tiny run",
          "choose_if": ["a smoke test"], "model": {"encoder_depth": 2, "predictor": {"depth": 1}},
          "data": {"image_size": 64, "batch_size": 4, "num_workers": 0}, "training": {"epochs": 2}}


@pytest.mark.parametrize("field, value, needle", [
    ("priority", "abc", "priority must be a whole number (higher = more ambitious), not 'abc'"),
    ("priority", math.inf, "priority must be a whole number"),
    ("priority", None, "priority must be a whole number"),
    ("priority", 1.5, "priority must be a whole number"),
    ("choose_if", 5, "choose_if must be a list of conditions (text), not 5"),
    ("choose_if", [1, 2], "choose_if must be a list of conditions"),
    ("checkpoint", 5, "checkpoint must be a mapping (save_frequency: N, ...), not 5"),
    ("checkpoint", {"save_frequency": math.nan}, "checkpoint.save_frequency must be a whole number of epochs >= 1"),
    ("checkpoint", {"save_frequency": 0}, "checkpoint.save_frequency must be a whole number of epochs >= 1, not 0"),
    ("hours", [5, 1], "hours must be [low, high], two finite numbers of hours with 0 <= low <= high"),
    ("hours", [math.inf, math.inf], "hours must be [low, high]"),
    ("hours", [-1, 2], "hours must be [low, high]"),
    ("title", [1], "title must be text, not [1]"),
    ("expected", {"a": 1}, "expected must be text"),
    ("config", 5, "config must be the path of an upstream YAML file, not 5"),
    ("config", "missing.yaml", "config missing.yaml is not a file"),
    ("config", "a\x00b", "config must be the path of an upstream YAML file, not 'a\\x00b'"),
    ("config", "  ", "config must be the path of an upstream YAML file, not '  '"),
    ("hours", [1, 2, 3], "hours must be [low, high]"),
    ("priority", True, "priority must be a whole number"),
    ("model", {"predictor": 5}, "config key model.predictor must be a mapping, not 5"),
])
def test_every_option_field_is_checked_when_the_file_is_read(tmp_path, capsys, field, value, needle):
    """Every field of an options file is typed when it is read (priority abc, .inf, null or 1.5;
    choose_if: 5; checkpoint: 5 or NaN; hours [5, 1]): one sentence naming the option, and no
    report is written."""
    import yaml

    folder = _results(tmp_path / "res", [json.dumps(r) for r in _records(1)])
    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({"options": [{**OPTION, field: value}]}))
    code, err, _ = _run(capsys, "report", str(folder), "--no-charts", "--out", str(tmp_path / "r" / "report.md"),
                        "--options-file", str(opts))
    line = _one_sentence(code, err)
    assert f"option T in {opts}: " in line and needle in line, line
    assert not (tmp_path / "r").exists()  # nothing was written


def test_an_options_file_with_other_top_level_keys_is_refused(tmp_path, capsys):
    import yaml

    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({"options": [OPTION], "option": [OPTION]}))
    folder = _results(tmp_path / "res", [json.dumps(r) for r in _records(1)])
    code, err, _ = _run(capsys, "report", str(folder), "--no-charts", "--options-file", str(opts))
    assert "holds option besides 'options:'" in _one_sentence(code, err)


def test_an_option_may_start_from_a_preset_by_name(tmp_path):
    import yaml

    from hjepa_bench.options import load_options

    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({"options": [{"name": "S", "config": "full_100epoch", "training": {"epochs": 3}}]}))
    s = next(o for o in load_options(opts) if o.name == "S")
    assert s.values()["model"]["encoder_type"] == "vit_small_patch16_224" and s.epochs == 3
    guide = {o.name: o for o in load_options(None)}
    assert guide["B"].values()["model"] == {**s.values()["model"]}  # option B is that preset too


def test_options_are_resolved_once_when_loaded(tmp_path, monkeypatch):
    """Each option's config is resolved when the file is read, never again."""
    import yaml

    from hjepa_bench import options as options_module

    opts = tmp_path / "opts.yaml"
    opts.write_text(yaml.safe_dump({"options": [OPTION]}))
    calls = []
    real = options_module.resolve_config
    monkeypatch.setattr(options_module, "resolve_config", lambda *a, **k: calls.append(1) or real(*a, **k))
    loaded = options_module.load_options(opts)
    assert len(calls) == 1  # T; the guide's A, B and C come resolved (copies of the module's own)
    t = next(o for o in loaded if o.name == "T")
    for _ in range(3):
        t.values(), t.describe(), t.epochs, t.checkpoint_every_epochs()
    assert len(calls) == 1 and t.hours == (0.0, 1000.0) and t.priority == 7 and t.choose_if == ["a smoke test"]


# --------------------------------------------------------------------------- thresholds files
@pytest.mark.parametrize("text, needle", [
    ("expected_it_per_s: 0", "threshold expected_it_per_s in {p} must be a number in (0, 1e+09], not 0"),
    ("memory_margin_frac: .nan", "threshold memory_margin_frac in {p} must be a number in [0, 1), not nan"),
    ("memory_margin_frac: 1", "must be a number in [0, 1), not 1"),
    ("dataset_size: .inf", "threshold dataset_size in {p} must be a whole number in [1, 1e+09], not inf"),
    ("dataset_size: 5.5", "must be a whole number in [1, 1e+09], not 5.5"),
    ("val_every_epochs: 0", "threshold val_every_epochs in {p} must be a whole number in [1, 1e+06], not 0"),
    ("memory_pressure_frac: 5", "must be a number in (0, 1], not 5"),
    ("confidence: 1.5", "threshold confidence in {p} must be a number in (0, 1), not 1.5"),
    ("min_it_per_s: .nan", "threshold min_it_per_s in {p} must be a number in (0, 1e+09], not nan"),
    ("low_rank_frac: -0.1", "must be a number in [0, 1], not -0.1"),
    ("min_loss_decrease_pct: true", "must be a number in [0, 100], not True"),
])
def test_every_threshold_is_finite_and_in_its_domain(tmp_path, capsys, text, needle):
    """Every threshold is checked against its domain when the file is read (expected_it_per_s: 0, a
    NaN margin, dataset_size: .inf, val_every_epochs: 0, confidence: 1.5, a NaN minimum speed):
    one sentence naming the threshold and the file, exit 2."""
    th = tmp_path / "th.yaml"
    th.write_text(text + "\n")
    folder = _results(tmp_path / "res", [json.dumps(r) for r in _records(1)])
    code, err, _ = _run(capsys, "report", str(folder), "--no-charts", "--out", str(tmp_path / "r" / "report.md"),
                        "--thresholds", str(th))
    assert needle.format(p=th) in _one_sentence(code, err)


# --------------------------------------------------------------------------- pytest-benchmark JSON
def _bench(median: float = 0.25) -> dict:
    stats = {"min": median, "max": median, "mean": median, "median": median, "rounds": 5}
    return {"machine_info": {"hjepa_bench": {"devices": {"cpu": {"device_name": "CPU"}}, "torch": "2", "timm": "1",
                                             "size": "tiny", "precision": "fp32"}},
            "benchmarks": [{"name": "test_step[cpu]", "fullname": "b.py::test_step[cpu]", "stats": stats}],
            "datetime": "2025-11-16T13:41:02"}


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(benchmarks=[5]), "benchmarks[0] is not an object"),
    (lambda d: d["benchmarks"][0]["stats"].update(median="x"), "benchmarks[0].stats.median must be a time in seconds"),
    (lambda d: d["benchmarks"][0]["stats"].update(median=[1]), "stats.median must be a time in seconds above 0"),
    (lambda d: d["benchmarks"][0].update(stats=5), "benchmarks[0].stats is not an object"),
    (lambda d: d["benchmarks"][0]["stats"].update(median=-1), "must be a time in seconds above 0, not -1"),
    (lambda d: d["benchmarks"][0].update(fullname=5), "benchmarks[0] has no name"),
    (lambda d: d["machine_info"].update(hjepa_bench=5), "machine_info.hjepa_bench is not an object"),
    (lambda d: d["machine_info"]["hjepa_bench"].update(torch=5), "machine_info.hjepa_bench.torch is not text"),
    (lambda d: d.update(benchmarks={}), "no 'benchmarks' list"),
])
def test_benchmark_json_is_checked_when_read(tmp_path, capsys, change, needle):
    """A pytest-benchmark JSON file is typed when it is read ({"benchmarks": [5]}, a median "x" or
    -1, stats: 5, machine_info.hjepa_bench: 5): one sentence naming the file and the field."""
    data = _bench()
    change(data)
    path = tmp_path / "now.json"
    path.write_text(json.dumps(data))
    code, err, _ = _run(capsys, "benchmark-report", str(path))
    line = _one_sentence(code, err)
    assert f"{path} is not a pytest-benchmark JSON file this command reads: " in line and needle in line, line


@pytest.mark.parametrize("text, needle", [
    ('{"benchmarks": [], "x": NaN}', "x is nan, not a finite number"),
    ('{"benchmarks": ' + "[" * 100000 + "]" * 100000 + "}", "it nests too deep"),
    ('{"benchmarks": ' + "[" * 50 + "]" * 50 + "}", "nests deeper than 32 levels"),
])
def test_benchmark_json_text_json_loads_accepts_is_refused(tmp_path, capsys, text, needle):
    path = tmp_path / "now.json"
    path.write_text(text)
    code, err, _ = _run(capsys, "benchmark-report", str(path))
    assert needle in _one_sentence(code, err)


def test_a_zero_baseline_median_is_one_sentence_not_a_division_by_zero(tmp_path, capsys):
    now, base = tmp_path / "now.json", tmp_path / "base.json"
    now.write_text(json.dumps(_bench(0.25)))
    base.write_text(json.dumps(_bench(0.0)))
    code, err, _ = _run(capsys, "benchmark-report", str(now), "--baseline", str(base))
    assert f"{base} is not a pytest-benchmark JSON file this command reads: benchmarks[0].stats.median must be " \
           "a time in seconds above 0, not 0.0" in _one_sentence(code, err)
    base.write_text(json.dumps(_bench(0.2)))
    code, err, out = _run(capsys, "benchmark-report", str(now), "--baseline", str(base))
    assert code == 0 and "+25.0%" in out and "slower" in out


# --------------------------------------------------------------------------- analyze: degenerate bars
@pytest.mark.parametrize("mutate", [
    lambda text: re.sub(r"\[\d\d:\d\d<", "[00:00<", text),  # every bar at 00:00 elapsed
    lambda text: text.replace("loss=0.4311", "loss=1e400"),  # a non-finite loss: diverged, no rise measured
])
def test_analyze_degenerate_logs_say_not_measured(tmp_path, capsys, mutate):
    """A log whose bars all show 00:00 (no speed) or whose loss is infinite (no rise measured) is
    analysed to the end: exit 0, no traceback, and a report with its success criteria."""
    text = mutate(build_log())
    assert text != build_log()
    log = tmp_path / "train.log"
    log.write_text(text)
    code, err, _out = _run(capsys, "analyze", "--log", str(log), "--out", str(tmp_path / "an"))
    assert code == 0, err
    assert "Traceback" not in "\n".join(err)
    report = (tmp_path / "an" / "report.md").read_text()
    assert "## Success criteria" in report


def test_analyze_of_a_log_without_speed_says_so(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text(re.sub(r"\[\d\d:\d\d<", "[00:00<", build_log()))
    code, err, out = _run(capsys, "analyze", "--log", str(log), "--out", str(tmp_path / "an"))
    assert code == 0, err
    assert re.search(r"Performance\s+not measured\s+no speed measured", out), out
    data = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert data["overall"]["it_per_s"] is None
    report = (tmp_path / "an" / "report.md").read_text()
    assert "= not measured it/s" in report  # the training-log section
    row = next(line for line in report.splitlines() if line.startswith("| L "))
    assert "no ok measurement (error at b32)" in row  # the logged config: nothing to project
    assert json.loads((tmp_path / "an" / "analysis.json").read_text())["matrix"][0]["status"] == "failed"


def test_a_record_whose_batch_varied_is_reported(tmp_path, capsys):
    """``metrics.batch_size.achieved`` is a list when the batch varied (the runner writes that); the
    schema allows it and the projection took int() of it (TypeError)."""
    record = make_record(option_values("A"), it_per_s=3.0)
    record["metrics"]["batch_size"]["achieved"] = [30, 32]
    folder = _results(tmp_path / "res", [json.dumps(record)])
    code, err, _out = _run(capsys, "report", str(folder), "--no-charts", "--out", str(tmp_path / "r" / "report.md"))
    assert code == 0 and not err, err
    matrix = json.loads((tmp_path / "r" / "report.json").read_text())["matrix"]
    row = next(r for r in matrix if r["option"] == "A")
    assert row["status"] == "ok" and row["projection"]["batch_size"] == 32
